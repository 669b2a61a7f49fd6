#!/usr/bin/env bash
# TTT on real ARC, on CPU: a small TRM pretrained for PRE_MIN minutes on ARC-AGI-1 training tasks that fit a
# 12x12 canvas, scored on ARC-AGI-1 evaluation tasks of the same size without and with TTT_MIN minutes of
# test-time training on their demonstrations (test outputs only reach the scorer). Re-running resumes.
#   PRE_MIN=30 TTT_MIN=15 bash scripts/ttt_real_cpu.sh      (outputs under runs/ttt_real/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PRE_MIN=${PRE_MIN:-30}
TTT_MIN=${TTT_MIN:-15}
OUT=${OUT:-runs/ttt_real}
mkdir -p "$OUT"
$PY -m stages.data export "arc:evaluation" --out "$OUT/eval_all"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from pipeline.data.dataset import canvas_problem
from pipeline.data.sources import load_kaggle
out = Path(sys.argv[1])
tasks = [t for t in load_kaggle(out / "eval_all_challenges.json").tasks if canvas_problem(t, 12) is None]
(out / "eval12_challenges.json").write_text(json.dumps({t.id: t.to_json() for t in tasks}))
(out / "eval12_solutions.json").write_text(json.dumps({t.id: [o.tolist() for o in t.test_outputs] for t in tasks}))
print(f"{len(tasks)} ARC-AGI-1 evaluation tasks fit a 12x12 canvas")
PY
$PY -m stages.pretrain --config configs/arc1_small_cpu.yaml --set run_dir=$OUT/pretrain train.progress=false --max-minutes "$PRE_MIN"
$PY -m stages.predict --checkpoint $OUT/pretrain --challenges $OUT/eval12_challenges.json --out $OUT/pre.json --no-progress
$PY -m stages.score --solutions $OUT/eval12_solutions.json --submission $OUT/pre.json | tail -1 | tee $OUT/score_pre.json
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/eval12_challenges.json --out $OUT/ttt \
  --config configs/demo_ttt.yaml --set train.steps=100000 train.global_batch=32 train.progress=false \
  train.eval_every=0 train.ckpt_every=500 predict.augs=32 --max-minutes "$TTT_MIN"
$PY -m stages.predict --checkpoint $OUT/ttt --challenges $OUT/eval12_challenges.json --out $OUT/ttt.json --no-progress
$PY -m stages.score --solutions $OUT/eval12_solutions.json --submission $OUT/ttt.json --compare $OUT/pre.json | tail -1 | tee $OUT/score_ttt.json
