#!/usr/bin/env bash
# What compute.crop (task-sized sequences) costs in accuracy, on CPU: synthetic tasks whose grids (sides 1..6)
# use part of an 8x8 canvas. One pretrained checkpoint (official: full canvas, translation anywhere) is scored
# on its tasks' held-out test inputs with and without --crop; then TTT on new tasks, without crop and under
# crop (translation bounded to 1 cell, so that the rectangles stay small), each scored with its own setting;
# and a second pretraining under crop from scratch. Scores are pass@2 on test inputs never trained on.
# A last TTT run under crop also buckets by size (data.bucket_steps), as the joint TTT presets do.
#   bash scripts/crop_accuracy.sh          (outputs under runs/crop_acc/, a summary in runs/crop_acc/summary.txt)
#   SIDE=12 OUT=runs/crop_acc12 PRETRAIN_CROP=0 bash scripts/crop_accuracy.sh     (a 12x12 canvas, same grids)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/crop_acc}
SIDE=${SIDE:-8}
PRETRAIN_CROP=${PRETRAIN_CROP:-1}
SRC="synthetic:tasks=8,seed=0,size=6,demos=400,tests=8,families=flip_lr+flip_ud+colour_map+recolour"
HELD="synthetic:tasks=4,seed=7,size=6,demos=64,tests=8,families=colour_map+recolour"
PRETRAIN_SETS=(data.canvas=$SIDE train.lr=1e-3 train.lr_min_ratio=1.0)  # lr: the demo config's when measured
# The TTT presets compute as the checkpoint was trained (here the full canvas); CROP is the departure,
# FULL spells out the official settings. bench.ab / scripts/ab_cpu.sh measure each departure alone.
CROP=(compute.crop=true compute.crop_groups=1 data.max_offset=1)
FULL=(compute.crop=false data.max_offset=0)
mkdir -p "$OUT"
$PY -m stages.data export "$SRC" --out "$OUT/pre"
$PY -m stages.data export "$HELD" --out "$OUT/held"
score() { $PY -m stages.score --solutions "$1" --submission "$2" | tail -1; }
predict() { $PY -m stages.predict --no-progress --checkpoint "$1" --challenges "$2" --out "$3" "${@:4}" >/dev/null; }

$PY -m stages.pretrain --config configs/demo_cpu.yaml --set run_dir=$OUT/pretrain "data.sources=[\"$SRC#demos\"]" \
  "${PRETRAIN_SETS[@]}" train.progress=false
if [ "$PRETRAIN_CROP" = 1 ]; then
  $PY -m stages.pretrain --config configs/demo_cpu.yaml --set run_dir=$OUT/pretrain_crop "data.sources=[\"$SRC#demos\"]" \
    "${PRETRAIN_SETS[@]}" "${CROP[@]}" train.progress=false
  predict $OUT/pretrain_crop $OUT/pre_challenges.json $OUT/pre_crop_trained.json
fi
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/ttt \
  --config configs/demo_ttt.yaml --set train.steps=200 train.progress=false "${FULL[@]}"
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/ttt_crop \
  --config configs/demo_ttt.yaml --set train.steps=200 train.progress=false "${CROP[@]}"
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/ttt_crop_groups \
  --config configs/demo_ttt.yaml --set train.steps=200 train.progress=false "${CROP[@]}" compute.crop_groups=4
$PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/ttt_crop_bucketed \
  --config configs/demo_ttt.yaml --set train.steps=200 train.progress=false "${CROP[@]}" data.sampler=independent data.bucket_steps=20 \
  data.size_buckets=2

predict $OUT/pretrain $OUT/pre_challenges.json $OUT/pre_full.json --no-crop
predict $OUT/pretrain $OUT/pre_challenges.json $OUT/pre_crop.json --crop
predict $OUT/pretrain $OUT/held_challenges.json $OUT/held_full.json --no-crop
predict $OUT/pretrain $OUT/held_challenges.json $OUT/held_crop.json --crop
predict $OUT/ttt $OUT/held_challenges.json $OUT/held_ttt_full.json
predict $OUT/ttt_crop $OUT/held_challenges.json $OUT/held_ttt_crop.json
predict $OUT/ttt_crop_groups $OUT/held_challenges.json $OUT/held_ttt_crop_groups.json
predict $OUT/ttt_crop_bucketed $OUT/held_challenges.json $OUT/held_ttt_crop_bucketed.json
{
  echo "pretrained, its held-out test inputs, full canvas:      $(score $OUT/pre_solutions.json $OUT/pre_full.json)"
  echo "pretrained, its held-out test inputs, --crop:           $(score $OUT/pre_solutions.json $OUT/pre_crop.json)"
  [ "$PRETRAIN_CROP" = 1 ] && \
  echo "pretrained under crop, its held-out test inputs:        $(score $OUT/pre_solutions.json $OUT/pre_crop_trained.json)"
  echo "new tasks, no TTT, full canvas:                         $(score $OUT/held_solutions.json $OUT/held_full.json)"
  echo "new tasks, no TTT, --crop:                              $(score $OUT/held_solutions.json $OUT/held_crop.json)"
  echo "new tasks, TTT full canvas:                             $(score $OUT/held_solutions.json $OUT/held_ttt_full.json)"
  echo "new tasks, TTT under crop (max_offset 1):               $(score $OUT/held_solutions.json $OUT/held_ttt_crop.json)"
  echo "new tasks, TTT under crop, 4 size groups per step:      $(score $OUT/held_solutions.json $OUT/held_ttt_crop_groups.json)"
  echo "new tasks, TTT under crop, 2 size buckets:              $(score $OUT/held_solutions.json $OUT/held_ttt_crop_bucketed.json)"
  for r in pretrain pretrain_crop ttt ttt_crop ttt_crop_groups ttt_crop_bucketed; do
    [ -f $OUT/$r/metrics.jsonl ] && echo "$r: $(grep -c . $OUT/$r/metrics.jsonl) log rows, $(head -1 $OUT/$r/log.txt | cut -c1-19) .. $(tail -1 $OUT/$r/log.txt | cut -c1-19)" || true
  done
} | tee $OUT/summary.txt
