"""Score a submission the way ARC Prize does, with an optional report.

    python -m stages.score --solutions FILE --submission FILE [--report DIR] [--run RUN_DIR]
                           [--compare OTHER_SUBMISSION] [--challenges FILE] [--checkpoint CK]

A test input is correct if either attempt equals its solution exactly; a task scores the mean over its
test inputs; the score is the mean over tasks. The last stdout line is JSON (score, tasks, solved_tasks,
per_task: task, tests, correct, score and which attempt hit; with --compare the other submission's score and
the tasks gained and lost).
`--report DIR` writes index.html (summary, sortable per-task table with attempt-vs-truth pictures, the
run's training curves with --run, the comparison with --compare), one page per task and tasks.csv/parquet
(submission/report.py).
`--checkpoint CK` (what `make score` passes: the pretrained checkpoint) checks the scored tasks against what CK
trained on, after the score: a warning when their test pairs occur in its training data, also augmented
(pipeline/overlap.py: the canonical pair hashes its pretraining recorded, its warm start's included, else its
sources re-read now). A part that cannot be checked gives a 'contamination NOT checked' warning; a check that
fails altogether gives one 'warning: contamination check not run: ...' line. Neither changes the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import layout
from pipeline.layout import Checkpoint
from pipeline.overlap import scored_set_overlap
from pipeline.data.sources import load_kaggle
from pipeline.data.tasks import DataError, read_json, read_task_map
from pipeline.training.metrics import plot_curves
from stages._cli import run
from submission.report import compare, pl, score_submission, summary, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solutions", required=True)
    p.add_argument("--submission", required=True)
    p.add_argument("--challenges", default=None, help="for the report's pictures (default: the solutions' sibling)")
    p.add_argument("--report", default=None, help="folder for index.html, per-task pages and tasks.parquet/csv")
    p.add_argument("--run", default=None, help="training run folder: its curves.png goes next to the summary")
    p.add_argument("--compare", default=None, metavar="OTHER_SUBMISSION",
                   help="another submission on the same tasks (e.g. without TTT): which tasks changed")
    p.add_argument("--checkpoint", default=None, help="warn when the scored tasks' test pairs are in its training data")
    args = p.parse_args(argv)
    if args.report and pl is None:
        p.error("--report needs polars, which is not installed here (the score itself does not)")
    return args


def curves_of(run_dir: str) -> Path | None:
    """The run's curves.png, drawn from its metrics.jsonl when the run did not finish drawing it."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise DataError(f"--run {run_dir}: no such run folder")
    curves = folder / layout.CURVES
    if not curves.exists() and (folder / layout.METRICS).exists():
        plot_curves(folder)
    return curves if curves.exists() else None


def overlap_check(ckpt: str, solutions_path: str, challenges_path: Path, solutions: dict) -> dict:
    """Print the contamination check of the scored tasks against the checkpoint's training data (stderr). It is
    advisory: whatever goes wrong in it (a bad checkpoint path, unreadable or huge sources, a damaged record)
    becomes one warning line, never a lost score."""
    try:
        task_ids = Checkpoint.open(ckpt).task_ids
        scored = load_kaggle(challenges_path, Path(solutions_path), train_on_test=False).pack() \
            if challenges_path.exists() else None
        lines, summary = scored_set_overlap(ckpt, scored, list(solutions), task_ids)
    except Exception as e:  # advisory: any failure is reported as such, never fatal to the score printed before it
        lines, summary = [f"warning: contamination check not run: {type(e).__name__}: {e}"], \
            {"checked": "no", "error": f"{type(e).__name__}: {e}"}
    for line in lines:
        print(line, file=sys.stderr)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    solutions = read_task_map(args.solutions, "their test outputs")
    submission = read_task_map(args.submission, "attempts")
    rows = score_submission(solutions, submission)
    result = {**summary(rows), "per_task": rows}
    comparison = None
    if args.compare:
        comparison = compare(rows, score_submission(solutions, read_task_map(args.compare, "attempts")))
        comparison["other_name"] = args.compare
        result.update({"other_score": comparison["other_score"], "gained": [t for t, _, _ in comparison["gained"]],
                       "lost": [t for t, _, _ in comparison["lost"]]})
    ch_path = Path(args.challenges or str(args.solutions).replace("_solutions.json", "_challenges.json"))
    print(f"score {result['score']:.4f} ({result['solved_tasks']}/{result['tasks']} tasks solved)", file=sys.stderr)
    if args.report:
        challenges = read_task_map(ch_path) if ch_path.exists() else None
        det_path = Path(str(args.submission) + ".details.json")
        details = read_json(det_path) if det_path.exists() else {}
        curves = curves_of(args.run) if args.run else None
        df = write_report(Path(args.report), rows, solutions, submission, challenges if isinstance(challenges, dict) else None,
                          details if isinstance(details, dict) else {}, curves, comparison,
                          title=f"Score report: {Path(args.submission).name}")
        with pl.Config(tbl_rows=10):
            shown = df.select("task", "tests", "correct", "score", "winner_votes", "halting_steps", "chunk_s_per_input")
            print(shown.sort("score", descending=True).head(10), file=sys.stderr)
        result["report"] = str(Path(args.report) / "index.html")
    if comparison is not None:
        print(f"vs {args.compare}: {comparison['other_score']:.4f} -> {result['score']:.4f}, "
              f"{len(comparison['gained'])} tasks gained, {len(comparison['lost'])} lost", file=sys.stderr)
    if args.checkpoint:  # last, after the score and the report: it is advisory
        result["overlap"] = overlap_check(args.checkpoint, args.solutions, ch_path, solutions)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
