"""ARC tasks: parsing and validation of the JSON format, with errors that name the task and the problem.

A task is demonstration pairs plus test inputs (and test outputs where solutions are known). Every
problem is reported as a `TaskProblem` so that one broken task never stops the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_SIDE = 30


class DataError(ValueError):
    """Input data that cannot be used at all (missing file, not JSON); the message names file and position."""


@dataclass(frozen=True)
class TaskProblem:
    task_id: str
    reason: str
    source: str = ""

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.task_id}{where}: {self.reason}"


@dataclass
class Task:
    id: str
    train: list[tuple[np.ndarray, np.ndarray]]
    test_inputs: list[np.ndarray]
    test_outputs: list[np.ndarray] | None = None
    """Known test outputs, or None (hidden test set)."""
    source: str = ""
    train_on_test: bool = True
    """Whether test pairs may be used for training (False for evaluation sets: demonstrations only)."""
    extra: dict = field(default_factory=dict)
    source_spec: str = ""
    """The source spec that loaded it (`arc:evaluation2#demos`, `pairs:DIR`; pipeline/data/sources.py): groups the
    per-source held-out metrics. Empty for tasks made in code."""

    def to_json(self, with_outputs: bool = False) -> dict:
        test = [{"input": g.tolist()} for g in self.test_inputs]
        if with_outputs and self.test_outputs is not None:
            for t, o in zip(test, self.test_outputs):
                t["output"] = o.tolist()
        return {"train": [{"input": i.tolist(), "output": o.tolist()} for i, o in self.train], "test": test}


def grid_problem(grid, where: str) -> str | None:
    """Why `grid` is not a valid ARC grid (rectangular, 1..30 per side, ints 0..9), or None."""
    if not isinstance(grid, list) or not grid:
        return f"{where}: empty grid" if isinstance(grid, list) else f"{where}: not a list of rows"
    if len(grid) > MAX_SIDE:
        return f"{where}: {len(grid)} rows, more than {MAX_SIDE}"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            return f"{where}: row {r} is not a list"
        if not row:
            return f"{where}: row {r} is empty"
        if width is None:
            width = len(row)
            if width > MAX_SIDE:
                return f"{where}: {width} columns, more than {MAX_SIDE}"
        elif len(row) != width:
            return f"{where}: ragged grid (row {r} has {len(row)} cells, row 0 has {width})"
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int):
                return f"{where}: cell ({r},{c}) is {v!r}, not an integer"
            if not 0 <= v <= 9:
                return f"{where}: cell ({r},{c}) is {v}, outside colours 0..9"
    return None


def task_problems(task_id: str, obj, solutions=None) -> list[str]:
    """All reasons why a challenge entry (and its solutions, if given) is invalid; empty if valid."""
    if not isinstance(obj, dict):
        return ["task is not a JSON object"]
    out: list[str] = []
    train, test = obj.get("train"), obj.get("test")
    if not isinstance(train, list) or not train:
        out.append("no demonstration pairs ('train' is missing or empty)")
    else:
        out += pairs_problems(train, "train")
    if not isinstance(test, list) or not test:
        out.append("no test inputs ('test' is missing or empty)")
    else:
        for k, pair in enumerate(test):
            if not isinstance(pair, dict) or "input" not in pair:
                out.append(f"test[{k}]: needs 'input'")
                continue
            if p := grid_problem(pair["input"], f"test[{k}].input"):
                out.append(p)
            if "output" in pair and (p := grid_problem(pair["output"], f"test[{k}].output")):
                out.append(p)
    if solutions is not None and isinstance(test, list):
        if not isinstance(solutions, list) or len(solutions) != len(test):
            n = len(solutions) if isinstance(solutions, list) else "no list of"
            out.append(f"solutions: {n} grids for {len(test)} test inputs")
        else:
            out += [p for k, s in enumerate(solutions) if (p := grid_problem(s, f"solutions[{k}]"))]
    return out


def pair_list_problems(obj) -> list[str]:
    """Why a pair-list puzzle (a JSON list of {"input", "output"} pairs: NVARC, re-arc) is invalid; empty if valid."""
    if not isinstance(obj, list) or not obj:
        return ["expected a non-empty JSON list of {\"input\", \"output\"} pairs"]
    return pairs_problems(obj, "pair")


def pairs_problems(pairs: list, name: str) -> list[str]:
    """Why the {"input", "output"} pairs of list `name` (a task's train, a pair-list puzzle) are invalid."""
    out: list[str] = []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
            out.append(f"{name}[{k}]: needs both 'input' and 'output'")
            continue
        out += [p for p in (grid_problem(pair["input"], f"{name}[{k}].input"),
                            grid_problem(pair["output"], f"{name}[{k}].output")) if p]
    return out


def _grid(g) -> np.ndarray:
    return np.asarray(g, dtype=np.uint8)


def parse_task(task_id: str, obj: dict, solutions=None, source: str = "", train_on_test: bool = True) -> Task:
    """Build a Task from a validated challenge entry; outputs come from `solutions` or from test[k].output."""
    tests = obj["test"]
    if solutions is not None:
        outputs = [_grid(s) for s in solutions]
    elif all("output" in t for t in tests):
        outputs = [_grid(t["output"]) for t in tests]
    else:
        outputs = None
    return Task(id=task_id, train=[(_grid(p["input"]), _grid(p["output"])) for p in obj["train"]],
                test_inputs=[_grid(t["input"]) for t in tests], test_outputs=outputs, source=source,
                train_on_test=train_on_test)


def read_json(path: Path):
    """json.load with an error naming the file and the position of a truncated or malformed document."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from e


def read_task_map(path: str | Path, what: str = "tasks") -> dict:
    """A JSON file keyed by task id (a challenges file: {task id: task}; solutions; a submission) as read; not an
    object is a DataError naming the file. A challenges file's tasks are validated apart (entries_to_tasks)."""
    raw = read_json(Path(path))
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object mapping task ids to {what}")
    return raw


def safe_name(task_id: str) -> str:
    """A file or folder name for a task id (ids come from input files): letters, digits, '_' and '-' only; an id
    that needed changing gets a hash of itself appended, so two ids never share a name and none can leave the
    folder it is put in."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", task_id)[:80]
    if name != task_id or not name:
        name += "-" + hashlib.sha1(task_id.encode()).hexdigest()[:8]
    return name


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to a temp file beside `path`, fsync it and rename it into place: readers never see a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
