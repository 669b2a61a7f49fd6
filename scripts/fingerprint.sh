#!/usr/bin/env bash
# Behaviour fingerprint for refactors: a short, deterministic pretrain -> predict -> ttt -> submit on the demo tasks,
# then one sha256 per output (weights, predictions, submission). Run it before and after a change that must not
# change behaviour and diff the two files:  bash scripts/fingerprint.sh runs/fp_before > before.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONHASHSEED=0
OUT=${1:-runs/fingerprint}
rm -rf "$OUT" && mkdir -p "$OUT"
SRC="synthetic:tasks=4,seed=0,size=4,demos=32,tests=4,fixed=1,families=flip_lr+colour_map"
HELD="synthetic:tasks=2,seed=7,size=4,demos=16,tests=4,fixed=1,families=colour_map"
q() { "$@" >>"$OUT/log.txt" 2>&1; }
q $PY -m stages.data export "$SRC" --out "$OUT/demo"
q $PY -m stages.data export "$HELD" --out "$OUT/held"
q $PY -m stages.pretrain --config configs/demo_cpu.yaml --set run_dir=$OUT/pretrain train.steps=40 \
  train.eval_every=20 train.ckpt_every=20
q $PY -m stages.predict --checkpoint $OUT/pretrain --challenges $OUT/demo_challenges.json --out $OUT/pred.json \
  --no-progress
q $PY -m stages.ttt --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/ttt \
  --config configs/demo_ttt.yaml --set train.steps=20 train.eval_every=10
q $PY -m stages.predict --checkpoint $OUT/ttt --challenges $OUT/held_challenges.json --out $OUT/pred_ttt.json \
  --no-progress
q $PY -m stages.submit --checkpoint $OUT/pretrain --challenges $OUT/held_challenges.json --out $OUT/submission.json \
  --ttt-config configs/demo_ttt.yaml --ttt-steps 20 --views 8 --budget-s 600 --work-dir $OUT/work
for f in "$OUT"/pretrain/ckpt/*/{model,ema}.safetensors "$OUT"/ttt/ckpt/*/{model,ema}.safetensors \
         "$OUT"/pred.json "$OUT"/pred_ttt.json "$OUT"/submission.json; do
  [ -f "$f" ] && echo "$(sha256sum < "$f" | cut -c1-16)  ${f#$OUT/}"
done
