"""Score a submission the way ARC Prize does, with an optional per-task report.

    python -m stages.score --solutions FILE --submission FILE [--challenges FILE] [--report DIR]

A test input is correct if either attempt equals its solution exactly; a task scores the mean over its
test inputs; the score is the mean over tasks. The last stdout line is JSON (score, tasks, solved_tasks).
`--report DIR` writes tasks.parquet / tasks.csv (task, tests, correct, score, vote share of the winner,
halting steps, seconds) and one HTML page per task (demonstrations, test input, truth, both attempts).
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import polars as pl

from pipeline.tasks import DataError, read_json
from stages._cli import run

MAX_DEMOS_SHOWN = 10
ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
               "#870C25"]


def score_submission(solutions: dict, submission: dict) -> list[dict]:
    """One row per task of `solutions`: tests, correct inputs, task score and which attempt hit."""
    rows = []
    for task_id, truths in solutions.items():
        entries = submission.get(task_id) if isinstance(submission, dict) else None
        entries = entries if isinstance(entries, list) else []
        hits = []
        for k, truth in enumerate(truths):
            e = entries[k] if k < len(entries) and isinstance(entries[k], dict) else {}
            hits.append(next((a for a in ("attempt_1", "attempt_2") if e.get(a) == truth), None))
        correct = sum(h is not None for h in hits)
        rows.append({"task": task_id, "tests": len(truths), "correct": correct,
                     "score": correct / len(truths) if truths else 0.0, "hit": ",".join(h or "-" for h in hits)})
    return rows


def _grid_html(grid, title: str) -> str:
    if not isinstance(grid, list) or not grid:
        return f"<div class=g><b>{html.escape(title)}</b><br>(none)</div>"
    cells = "".join("<tr>" + "".join(f"<td style='background:{ARC_COLOURS[v] if isinstance(v, int) and 0 <= v <= 9 else '#fff'}'></td>"
                                     for v in row) + "</tr>" for row in grid)
    h, w = len(grid), len(grid[0]) if isinstance(grid[0], list) else 0
    return f"<div class=g><b>{html.escape(title)}</b> {h}x{w}<table>{cells}</table></div>"


def task_page(task_id: str, challenge: dict, truths: list, entries: list, row: dict) -> str:
    parts = [f"<h2>{html.escape(task_id)}: {row['correct']}/{row['tests']} correct</h2><h3>Demonstrations</h3>"]
    demos = challenge.get("train", []) if isinstance(challenge, dict) else []
    if len(demos) > MAX_DEMOS_SHOWN:
        parts.append(f"<p>first {MAX_DEMOS_SHOWN} of {len(demos)} shown</p>")
    for k, pair in enumerate(demos[:MAX_DEMOS_SHOWN]):
        parts.append("<div class=row>" + _grid_html(pair.get("input"), f"in {k}") + _grid_html(pair.get("output"), f"out {k}") + "</div>")
    parts.append("<h3>Test</h3>")
    tests = challenge.get("test", []) if isinstance(challenge, dict) else []
    for k, truth in enumerate(truths):
        e = entries[k] if k < len(entries) and isinstance(entries[k], dict) else {}
        test_in = tests[k].get("input") if k < len(tests) and isinstance(tests[k], dict) else None
        parts.append("<div class=row>" + _grid_html(test_in, f"test {k} input") + _grid_html(truth, "truth")
                     + _grid_html(e.get("attempt_1"), "attempt 1" + (" ✓" if e.get("attempt_1") == truth else ""))
                     + _grid_html(e.get("attempt_2"), "attempt 2" + (" ✓" if e.get("attempt_2") == truth else "")) + "</div>")
    style = ("<style>body{font-family:sans-serif} .row{display:flex;gap:16px;margin:8px 0} table{border-collapse:collapse}"
             " td{width:12px;height:12px;border:1px solid #333;padding:0}</style>")
    return f"<html><head><meta charset=utf-8><title>{html.escape(task_id)}</title>{style}</head><body>{''.join(parts)}</body></html>"


def write_report(report: Path, rows: list[dict], solutions: dict, submission: dict, challenges: dict | None,
                 details: dict) -> pl.DataFrame:
    report.mkdir(parents=True, exist_ok=True)
    for r in rows:
        d = [details.get(f"{r['task']}/{k}", {}) for k in range(r["tests"])]
        shares = [x["votes"][0] / x["views"] for x in d if x.get("votes") and x.get("views")]
        r["vote_share"] = sum(shares) / len(shares) if shares else None
        steps = [x["mean_steps"] for x in d if "mean_steps" in x]
        r["halting_steps"] = sum(steps) / len(steps) if steps else None
        r["seconds"] = sum(x.get("seconds", 0.0) for x in d) if d and any(d) else None
    df = pl.DataFrame(rows, schema_overrides={"vote_share": pl.Float64, "halting_steps": pl.Float64, "seconds": pl.Float64})
    df.write_parquet(report / "tasks.parquet")
    df.write_csv(report / "tasks.csv")
    pages = report / "tasks"
    pages.mkdir(exist_ok=True)
    links = []
    for r in rows:
        ch = (challenges or {}).get(r["task"], {})
        (pages / f"{r['task']}.html").write_text(task_page(r["task"], ch, solutions[r["task"]],
                                                           submission.get(r["task"]) or [], r))
        links.append(f"<li><a href='tasks/{html.escape(r['task'])}.html'>{html.escape(r['task'])}</a> {r['correct']}/{r['tests']}</li>")
    (report / "index.html").write_text("<html><body><h1>Per-task report</h1><ul>" + "".join(links) + "</ul></body></html>")
    return df


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solutions", required=True)
    p.add_argument("--submission", required=True)
    p.add_argument("--challenges", default=None, help="for the report's pictures (default: the solutions' sibling)")
    p.add_argument("--report", default=None, help="folder for tasks.parquet/csv and per-task HTML pages")
    args = p.parse_args(argv)
    solutions = read_json(Path(args.solutions))
    submission = read_json(Path(args.submission))
    if not isinstance(solutions, dict):
        raise DataError(f"{args.solutions}: expected a JSON object of task ids")
    rows = score_submission(solutions, submission)
    score = sum(r["score"] for r in rows) / len(rows) if rows else 0.0
    result = {"score": score, "tasks": len(rows), "solved_tasks": sum(r["score"] == 1.0 for r in rows),
              "test_inputs": sum(r["tests"] for r in rows), "correct_inputs": sum(r["correct"] for r in rows)}
    if args.report:
        ch_path = Path(args.challenges or str(args.solutions).replace("_solutions.json", "_challenges.json"))
        challenges = read_json(ch_path) if ch_path.exists() else None
        det_path = Path(str(args.submission) + ".details.json")
        details = read_json(det_path) if det_path.exists() else {}
        df = write_report(Path(args.report), rows, solutions, submission if isinstance(submission, dict) else {},
                          challenges, details)
        with pl.Config(tbl_rows=10):
            shown = df.select("task", "tests", "correct", "score", "vote_share", "halting_steps", "seconds")
            print(shown.sort("score", descending=True).head(10), file=sys.stderr)
        result["report"] = str(Path(args.report) / "index.html")
    print(f"score {score:.4f} ({result['solved_tasks']}/{result['tasks']} tasks solved)", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
