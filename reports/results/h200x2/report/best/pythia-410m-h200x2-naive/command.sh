#!/usr/bin/env bash
# pythia-410m-h200x2-naive: naive, micro-batch 8 x 64 accumulation, measured 46.40 days.
# Run from anywhere: it changes to the report folder, where best/<case id> resolves; the
# pretrain-bench packages must be importable (pip install -e <repo>, or PYTHONPATH=<repo>).
# harness.train launches torchrun on this node itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m harness.train --config best/pythia-410m-h200x2-naive --max-steps 143000 "$@"
