"""Side-by-side pretraining with each training sampler (data.sampler=official, the default, and independent, the
old draws) over several seeds: held-out pass@1/pass@2 at every evaluation and the final training loss.

    python -m bench.sampler                                   # demo config and synthetic 8x8, 3 seeds, 1000 steps

Each run is `stages.pretrain` as a user runs it (a subprocess with OMP_NUM_THREADS=THREADS), in OUT/<suite>_<sampler>
_s<seed>_t<threads>/, reused when it finished before. Suites: `demo` (configs/demo_cpu.yaml) and `syn8` (the same
config on synthetic tasks of sides 1..6 on an 8x8 canvas: scripts/ab_cpu.sh's suite). Prints a table and one JSON
line last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import emit

ROOT = Path(__file__).resolve().parents[1]
SUITES = {  # the demo as recorded in BENCHMARKS.md: 400 demonstrations per task, a constant lr
    "demo": ['data.sources=["synthetic:tasks=8,seed=0,size=4,demos=400,tests=8,fixed=1,'
             'families=flip_lr+flip_ud+colour_map+recolour#demos"]', "train.lr_min_ratio=1.0"],
    "syn8": ["train.lr_min_ratio=1.0", 'data.sources=["synthetic:tasks=8,seed=0,size=6,demos=400,tests=8,'
             'families=flip_lr+flip_ud+colour_map+recolour#demos"]', "data.canvas=8"],
}


def run(out: Path, suite: str, sampler: str, seed: int, threads: int, steps: int) -> dict:
    """One pretraining run (reused when its metrics reach `steps`); its evaluations and final loss."""
    folder = out / f"{suite}_{sampler}_s{seed}_t{threads}"
    metrics = folder / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    seconds = None
    if not rows or rows[-1]["step"] < steps:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
               f"run_dir={folder}", f"seed={seed}", f"data.sampler={sampler}", f"train.steps={steps}",
               "train.progress=false", *SUITES[suite]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(out / f"{folder.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = {r["step"]: r for r in rows if "eval/pass@1" in r}
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return {"suite": suite, "sampler": sampler, "seed": seed, "threads": threads, "seconds": seconds,
            "pass@1": {s: r["eval/pass@1"] for s, r in evals.items()},
            "pass@2": {s: r["eval/pass@2"] for s, r in evals.items()}, "final_loss": losses[-1] if losses else None}


def summary(runs: list[dict]) -> list[dict]:
    """Per (suite, sampler, threads): min / median / max of the last evaluation's pass@1, pass@2 and the final loss."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["suite"], r["sampler"], r["threads"]), []).append(r)
    out = []
    for (suite, sampler, threads), rs in groups.items():
        last = {k: [r[k][max(r[k])] for r in rs] for k in ("pass@1", "pass@2")}
        row = {"suite": suite, "sampler": sampler, "threads": threads, "seeds": [r["seed"] for r in rs]}
        for k, vals in {**last, "final_loss": [r["final_loss"] for r in rs]}.items():
            row[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "all": vals}
        out.append(row)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_sampler")
    p.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    p.add_argument("--samplers", nargs="+", default=["official", "independent"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for suite in args.suites:
        for threads in args.threads:
            for seed in args.seeds:
                for sampler in args.samplers:
                    r = run(out, suite, sampler, seed, threads, args.steps)
                    runs.append(r)
                    print(f"{suite} {sampler:11s} seed {seed} threads {threads}: pass@1 by step {r['pass@1']}, "
                          f"final loss {r['final_loss']:.4f}", flush=True)
    table = summary(runs)
    for row in table:
        print(f"{row['suite']} {row['sampler']:11s} t{row['threads']}: pass@2 " +
              " / ".join(f"{row['pass@2'][k]:.3f}" for k in ("min", "median", "max")) + "  loss " +
              " / ".join(f"{row['final_loss'][k]:.4f}" for k in ("min", "median", "max")))
    emit({"bench": "sampler", "steps": args.steps, "runs": runs, "summary": table})


if __name__ == "__main__":
    main()
