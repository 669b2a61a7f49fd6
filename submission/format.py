"""Kaggle ARC Prize submission format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input]}.

The one writer every path uses (predict, the budgeted submit, the Kaggle notebook): it covers every task
id of the challenges file and every test input, with a fallback wherever a prediction is missing, so
the file is always valid. Callers write it with pipeline.data.tasks.write_json_atomic."""
from __future__ import annotations

import logging

import numpy as np

from pipeline.data.tasks import grid_problem

log = logging.getLogger(__name__)
FALLBACK_GRID = [[0]]


def _as_list(grid) -> list[list[int]]:
    return np.asarray(grid).astype(int).tolist()


def fallback_attempt(test_entry) -> list[list[int]]:
    """Identity guess (the test input itself) when it is a valid grid, else [[0]]."""
    grid = test_entry.get("input") if isinstance(test_entry, dict) else None
    return grid if grid_problem(grid, "input") is None else FALLBACK_GRID


def build_submission(challenges: dict, predictions: dict[tuple[str, int], list]) -> tuple[dict, list[str]]:
    """Entries for every task and test input of `challenges` (raw JSON, possibly broken).

    `predictions[(task_id, k)]` is a ranked list of candidate grids; invalid candidates are skipped, and
    missing attempts are filled with the fallback. Returns (submission, notes about fallbacks used)."""
    sub, notes = {}, []
    for task_id, obj in challenges.items():
        tests = obj.get("test") if isinstance(obj, dict) else None
        if not isinstance(tests, list):
            tests = []
            notes.append(f"{task_id}: no test inputs to answer")
        entries = []
        for k, test in enumerate(tests):
            cands = [_as_list(g) for g in predictions.get((task_id, k), [])]
            cands = [g for g in cands if grid_problem(g, "attempt") is None]
            fb = fallback_attempt(test)
            if not cands:
                notes.append(f"{task_id} test {k}: no prediction, fallback used")
            attempts = (cands + [fb if fb not in cands else FALLBACK_GRID, FALLBACK_GRID])[:2]
            entries.append({"attempt_1": attempts[0], "attempt_2": attempts[1]})
        sub[task_id] = entries
    return sub, notes


def submission_problems(challenges: dict, submission) -> list[str]:
    """Every way `submission` is not a valid answer to `challenges` (empty when valid)."""
    if not isinstance(submission, dict):
        return ["submission is not a JSON object of task ids"]
    out = []
    for task_id, obj in challenges.items():
        tests = obj.get("test") if isinstance(obj, dict) else None
        n = len(tests) if isinstance(tests, list) else 0
        entries = submission.get(task_id)
        if entries is None:
            out.append(f"{task_id}: missing")
            continue
        if not isinstance(entries, list) or len(entries) != n:
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            out.append(f"{task_id}: {got} entries for {n} test inputs")
            continue
        for k, e in enumerate(entries):
            if not isinstance(e, dict) or set(e) != {"attempt_1", "attempt_2"}:
                out.append(f"{task_id} test {k}: needs exactly attempt_1 and attempt_2")
                continue
            for a in ("attempt_1", "attempt_2"):
                if (p := grid_problem(e[a], a)) is not None:
                    out.append(f"{task_id} test {k}: {p}")
    out += [f"{t}: not a task of the challenges file" for t in submission if t not in challenges]
    return out
