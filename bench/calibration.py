"""How far the submit planner's calibration is from what the run then takes: `stages.submit` run N times on a
short budget (optionally beside CPU hogs, as on a loaded machine), and for each run the actual seconds of TTT
and of prediction over what the calibration projects for the steps and views the run actually did
(pipeline/submit/budget.py: ttt_seconds, predict_seconds). A ratio above 1 is an optimistic calibration: time the
margin must cover.

    python -m bench.calibration --checkpoint RUN --runs 15 --hog 1      # the demo flow beside one CPU hog
    python -m bench.calibration --checkpoint RUN --runs 3 --budget-s 120 --hog 0 --submit-args "--views-floor 128"

The hidden tasks default to the test suite's (4 synthetic tasks the demo model never saw, 32 test inputs).
Prints one line per run, then JSON last: per run the ratios, the stages' seconds and the inputs cut off by the
deadline; the ratios' min, median, 90th percentile and max.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit
from pipeline.submit.budget import Calibration, Policy, predict_seconds, ttt_seconds
from pipeline.data.synthetic import synthetic_tasks

TASKS = "tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=rot180+transpose"
HOG = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"


def ratios(plan_file: Path) -> dict:
    """Actual over projected seconds of TTT and prediction, from a run's OUT.plan.json."""
    p = json.loads(plan_file.read_text())
    cal, policy, s = Calibration(**p["calibration"]), Policy(**p["policy"]), p["summary"]
    actual, budget = p["actual_seconds"], p["plan"]["budget_s"]
    out = {"ttt_steps": s["ttt_steps"], "views": s["views"], "predicted": s["predicted"], "total_s": actual["total"],
           "budget_s": budget, "ttt_s": actual.get("ttt"), "predict_s": actual.get("predict")}
    if s["ttt_steps"] and "ttt" in actual:
        out["ttt_projected_s"] = ttt_seconds(cal, s["ttt_steps"], p["plan"]["ckpt_every"])
        out["ttt_ratio"] = actual["ttt"] / out["ttt_projected_s"]
    if s["views"] and "predict" in actual:
        out["predict_projected_s"] = predict_seconds(cal, s["views"], policy, budget)
        out["predict_ratio"] = actual["predict"] / out["predict_projected_s"]
    return out


def stats(xs: list[float]) -> dict | None:
    if not xs:
        return None
    a = np.asarray(xs)
    return {"n": len(a), "min": float(a.min()), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "max": float(a.max())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="pretrained run folder (the demo config's)")
    p.add_argument("--challenges", default="", help=f"hidden tasks (default: synthetic {TASKS})")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--budget-s", type=float, default=60)
    p.add_argument("--hog", type=int, default=1, help="CPU-bound processes running beside each submit")
    p.add_argument("--ttt-config", default="configs/demo_ttt.yaml")
    p.add_argument("--submit-args", default="--ttt-min-steps 20", help="more stages.submit options, one string")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        challenges = Path(args.challenges or Path(tmp) / "challenges.json")
        if not args.challenges:
            challenges.write_text(json.dumps({t.id: t.to_json() for t in synthetic_tasks(TASKS)}))
        for k in range(args.runs):
            out = Path(tmp) / f"run{k}" / "submission.json"
            hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(args.budget_s + 60)]) for _ in range(args.hog)]
            t0 = time.time()
            try:
                r = subprocess.run([sys.executable, "-m", "stages.submit", "--checkpoint", args.checkpoint,
                                    "--challenges", str(challenges), "--out", str(out), "--work-dir",
                                    str(Path(tmp) / f"work{k}"), "--budget-s", str(args.budget_s), "--ttt-config",
                                    args.ttt_config, *shlex.split(args.submit_args)],
                                   capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            row = {"run": k, "exit": r.returncode, "wall_s": time.time() - t0,
                   **(ratios(Path(f"{out}.plan.json")) if r.returncode == 0 else {"stderr": r.stderr[-500:]})}
            row["cut_off"] = r.stderr.count("time budget used up")
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    emit({"bench": "calibration", "budget_s": args.budget_s, "hogs": args.hog, "submit_args": args.submit_args,
          "runs": rows, "ttt_ratio": stats([r["ttt_ratio"] for r in rows if "ttt_ratio" in r]),
          "predict_ratio": stats([r["predict_ratio"] for r in rows if "predict_ratio" in r]),
          "over_budget_s": stats([r["wall_s"] - args.budget_s for r in rows])})


if __name__ == "__main__":
    main()
