"""100k pair-list puzzles on one machine: NVARC's scale (103,223 puzzles x ~30 pairs, ARC-AGI-2's grid sizes),
loaded, validated and packed by the real data path (`pairs:DIR`, pipeline/data/pairs.py), with `per_task` ids.

    python -m bench.pairs --dir /tmp/trm-pairs-103k          # writes the set once (~3 GB), then measures
    python -m bench.pairs --dir D --puzzles 2000 --seconds 3   # a quick look
    python -m bench.pairs --dir D --puzzles 10000 --indent 2   # pretty-printed files (each cell on its own line)

Each measurement runs in a fresh process on one core (numba and torch at one thread): (1) first load: the cache
deleted, every file read and scanned; (2) cached load: the .npy cache memory-mapped; (3) the sampler (batch 768)
over the puzzles, against the same sampler over the 1280-task mix in the same process (alternating rounds); (4) `mix:arc2-1280+pairs:
DIR#holdout=64`, cached. Goals (issue 21): first load < 3 min, cached < 15 s, peak RSS < 4 GB, samples/s as over
the 1280 tasks. `rss_mb` is the process's peak (ru_maxrss), `data_rss_mb` its rise over the process before
loading. The files are in the page cache after writing them: a first load from a cold disk adds the read time.
Prints one JSON line per phase, then the summary (bench.common.emit) last.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numba

from bench.common import emit, rss_mb
from pipeline.data.dataset import build_dataset
from pipeline.data.pairs import CACHE
from pipeline.data.sampler import DataConfig, make_sampler
from scripts.make_fixtures import write_pairs

NVARC_PUZZLES = 47_337 + 55_886


def samples_per_s(data, batch: int, seconds: float) -> float:
    sampler = make_sampler(data.packed, data.ids, DataConfig(puzzle_ids="per_task"), batch, seed=0)
    sampler.batch_at(0)  # numba compile (cached on disk after the first run)
    n, step, t0 = 0, 1, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(sampler.batch_at(step)["inputs"])
        step += 1
    return n / (time.perf_counter() - t0)


def phase(source: str, arc_root: str, batch: int, seconds: float, baseline: str) -> dict:
    """One load of `source` (+ the sampler over it, and over `baseline` for comparison), in this process."""
    numba.set_num_threads(1)
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    data = build_dataset(DataConfig(sources=[source], arc_root=arc_root, puzzle_ids="per_task"), seed=0)
    load_s = time.perf_counter() - t0
    out = {"source": source, "load_s": load_s, "tasks": data.packed.num_tasks, "pairs": len(data.packed.ex_in),
           "held_out": int((~data.packed.test_trainable).sum()), "packed_mb": data.packed.cells.nbytes / 2**20,
           "rss_after_load_mb": rss_mb(), "data_rss_mb": rss_mb() - rss0}
    out["rss_mb"] = rss_mb()
    if seconds:  # alternating rounds: the shared machine's load changes under a single pair of runs
        base = build_dataset(DataConfig(sources=[baseline], arc_root=arc_root, puzzle_ids="per_task"), seed=0)
        rounds = [(samples_per_s(data, batch, seconds / 2), samples_per_s(base, batch, seconds / 2)) for _ in range(2)]
        out["samples_per_s"] = sum(r[0] for r in rounds) / 2
        out["baseline"], out["baseline_samples_per_s"] = baseline, sum(r[1] for r in rounds) / 2
        out["rss_end_mb"] = rss_mb()
    return out


def run_phase(name: str, args, source: str, seconds: float) -> dict:
    cmd = [sys.executable, "-m", "bench.pairs", "--phase", source, "--arc-root", args.arc_root, "--batch",
           str(args.batch), "--seconds", str(seconds), "--baseline", args.baseline]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"phase {name} failed:\n{r.stderr[-3000:]}")
    result = {"phase": name, **json.loads(r.stdout.strip().splitlines()[-1])}
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/trm-pairs-103k", help="the pair-list folder (written if incomplete)")
    p.add_argument("--puzzles", type=int, default=NVARC_PUZZLES)
    p.add_argument("--pairs", type=int, default=30, help="mean pairs per puzzle")
    p.add_argument("--holdout", type=int, default=64)
    p.add_argument("--arc-root", default="../shared/arc")
    p.add_argument("--batch", type=int, default=768)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--baseline", default="mix:arc2-1280", help="the sampler's reference task set")
    p.add_argument("--indent", type=int, default=None, help="write the files as json.dumps(indent=N) (default: compact)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args.phase, args.arc_root, args.batch, args.seconds, args.baseline)))
        return
    folder = Path(args.dir)
    done = folder / ".complete"
    want = f"{args.puzzles} {args.pairs}" + (f" indent {args.indent}" if args.indent is not None else "")
    write_s = None
    if not done.exists() or done.read_text() != want:
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        write_pairs(folder, args.puzzles, "nvarc", args.pairs, seed=0, indent=args.indent)
        write_s = time.perf_counter() - t0
        done.write_text(want)
    shutil.rmtree(folder / CACHE, ignore_errors=True)
    files_gb = sum(f.stat().st_size for f in folder.rglob("*.json")) / 2**30
    source = f"pairs:{folder}#holdout={args.holdout}"
    first = run_phase("first_load", args, source, 0)
    cached = run_phase("cached_load", args, source, args.seconds)
    mix = run_phase("mix_cached", args, f"mix:arc2-1280+{source}", 0)
    emit({"bench": "pairs", "puzzles": first["tasks"], "pairs": first["pairs"] + first["held_out"],
          "indent": args.indent, "json_gb": files_gb, "first_load_mb_s": files_gb * 1024 / first["load_s"], "write_s": write_s, "first_load_s": first["load_s"], "first_rss_mb": first["rss_mb"],
          "cached_load_s": cached["load_s"], "cached_rss_mb": cached["rss_mb"], "packed_mb": first["packed_mb"],
          "samples_per_s": cached["samples_per_s"], "baseline_samples_per_s": cached["baseline_samples_per_s"],
          "mix_load_s": mix["load_s"], "mix_tasks": mix["tasks"], "mix_rss_mb": mix["rss_mb"],
          "goals": {"first_load_s": 180, "cached_load_s": 15, "rss_mb": 4096}})


if __name__ == "__main__":
    main()
