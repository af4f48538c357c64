#!/usr/bin/env bash
# mamba-h100x1-free-lunch: free-lunch, micro-batch 1 x 128 accumulation, measured 282.25 days.
# Run from anywhere: it changes to the report folder, where best/<case id> resolves; the
# pretrain-bench packages must be importable (pip install -e <repo>, or PYTHONPATH=<repo>).
# harness.train launches torchrun on this node itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m harness.train --config best/mamba-h100x1-free-lunch --max-steps 572204 "$@"
