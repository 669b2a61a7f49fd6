#!/usr/bin/env bash
# Checkpoint ensembles end to end on the CPU (~6 min on 2 cores): two demo-sized models, each pretrained 300 steps
# on 2 colour_map tasks the other never sees, predict all 4 tasks alone and pooled (stages.predict, and
# stages.submit without and with TTT); each submission is scored. BENCHMARKS.md, "Ensembles", records a run.
#   bash scripts/ensemble_demo.sh [OUT]        (default runs/ensemble_demo)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/ensemble_demo}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
mkdir -p "$D"
spec() { echo "synthetic:tasks=2,seed=$1,size=4,demos=400,tests=4,fixed=1,families=colour_map#demos"; }
for m in a:5 b:3; do
  name=${m%%:*} seed=${m##*:}
  [ -d "$D/$name/ckpt" ] || $PY -m stages.pretrain --config configs/demo_cpu.yaml --set "data.sources=[\"$(spec "$seed")\"]" \
    "run_dir=$D/$name" train.steps=300 train.progress=false train.eval_every=0 train.lr_min_ratio=1.0 > "$D/$name.log" 2>&1
  $PY -m stages.data export "$(spec "$seed")" --out "$D/tasks_$name" > /dev/null
done
$PY - "$D" <<'PY'
import json, sys
d = sys.argv[1]
for kind in ("challenges", "solutions"):
    both = {**json.load(open(f"{d}/tasks_a_{kind}.json")), **json.load(open(f"{d}/tasks_b_{kind}.json"))}
    json.dump(both, open(f"{d}/both_{kind}.json", "w"))
PY
run() { local out=$1; shift; "$@" --challenges "$D/both_challenges.json" --out "$D/$out.json" > "$D/$out.log" 2>&1; }
run p_a $PY -m stages.predict --checkpoint "$D/a" --augs 16 --no-progress
run p_b $PY -m stages.predict --checkpoint "$D/b" --augs 16 --no-progress
run p_ab $PY -m stages.predict --checkpoint "$D/a" "$D/b" --augs 16 --no-progress
SUBMIT=(-m stages.submit --checkpoint "$D/a" "$D/b" --work-dir "$D/work" --ttt-config configs/demo_ttt.yaml --views 16 --device cpu)
run s_ab $PY "${SUBMIT[@]}" --ttt-steps 0 --budget-s 600
run s_ab_ttt $PY "${SUBMIT[@]}" --ttt-steps 100 --budget-s 900
for s in p_a p_b p_ab s_ab s_ab_ttt; do
  # the score's human lines (stderr), not its JSON (stdout)
  echo "$s: $($PY -m stages.score --solutions "$D/both_solutions.json" --submission "$D/$s.json" --compare "$D/p_a.json" \
    2>&1 >/dev/null | tr '\n' ' ')"
done
