#!/usr/bin/env bash
# pythia-160m-h200x1-free-lunch: free-lunch, micro-batch 64 x 16 accumulation, measured 10.04 days.
# Run from anywhere: it changes to the report folder, where best/<case id> resolves; the
# pretrain-bench packages must be importable (pip install -e <repo>, or PYTHONPATH=<repo>).
# harness.train launches torchrun on this node itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m harness.train --config best/pythia-160m-h200x1-free-lunch --max-steps 143000 "$@"
