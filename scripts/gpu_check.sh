#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): environment, throughput against the official anchors, host syncs, the
# submit flow under torchrun, a real-ARC curve and the demo flow on CUDA, each step isolated, each part held
# to its share of 8 minutes on one H100.
#   bash scripts/gpu_check.sh --device cuda --out $OUT      # on a lent GPU machine (carry .gpu_data)
#   bash scripts/gpu_check.sh --quick --device cpu          # every part at toy size, here
#   bash scripts/gpu_check.sh --prepare                     # here, first: ../shared/arc -> .gpu_data/arc
# Runs with .venv/bin/python when there is one, else python3 (a GPU machine's torch); PY=... overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m bench.gpu_check "$@"
