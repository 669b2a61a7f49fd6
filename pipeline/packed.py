"""Task sets that arrive already packed (PackedTasks, pipeline/sampler.py): bulk sources such as `pairs:` deliver
100k puzzles as flat arrays, never as Task objects. This module concatenates packed parts, keeps a subset of their
tasks, saves them to and loads them from a folder of .npy files (memory-mapped), and unpacks them back into Task
objects for the tools that want those (export, stats)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.sampler import PackedTasks, task_sides
from pipeline.tasks import Task

ARRAYS = ("cells", "starts", "heights", "widths", "ex_in", "ex_out", "task_ex_start", "task_ex_count", "test_task",
          "test_in", "test_out", "test_index", "test_trainable")


@dataclass
class PackedPart:
    """The tasks of one bulk source, packed; `source` names it in reports (as Task.source does)."""
    source: str
    packed: PackedTasks


def concat_packed(parts: list[PackedTasks]) -> PackedTasks:
    """One PackedTasks holding every part's tasks in order (a single part is returned as it is: no copy, so a
    memory-mapped cache stays mapped)."""
    if len(parts) == 1:
        return parts[0]
    grids = np.cumsum([0] + [len(p.starts) for p in parts])
    cells = np.cumsum([0] + [len(p.cells) for p in parts])
    exs = np.cumsum([0] + [len(p.ex_in) for p in parts])
    tasks = np.cumsum([0] + [p.num_tasks for p in parts])
    cat = lambda key, shift=None: np.concatenate(  # noqa: E731
        [getattr(p, key) if shift is None else getattr(p, key) + shift[k] for k, p in enumerate(parts)])
    test_out = np.concatenate([np.where(p.test_out >= 0, p.test_out + grids[k], -1) for k, p in enumerate(parts)])
    return PackedTasks(task_ids=[t for p in parts for t in p.task_ids], cells=cat("cells"), starts=cat("starts", cells),
                       heights=cat("heights"), widths=cat("widths"), ex_in=cat("ex_in", grids),
                       ex_out=cat("ex_out", grids), task_ex_start=cat("task_ex_start", exs),
                       task_ex_count=cat("task_ex_count"), test_task=cat("test_task", tasks),
                       test_in=cat("test_in", grids), test_out=test_out.astype(np.int64),
                       test_index=cat("test_index"), test_trainable=cat("test_trainable"))


def select_tasks(packed: PackedTasks, keep: np.ndarray) -> PackedTasks:
    """The tasks where `keep` [num_tasks] is true, in order; the grid arrays are shared, not compacted."""
    keep = np.asarray(keep, bool)
    if keep.all():
        return packed
    new_index = np.cumsum(keep) - 1
    counts = packed.task_ex_count[keep]
    # example rows of the kept tasks: each task's run [start, start + count)
    runs = np.repeat(packed.task_ex_start[keep] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    rows = runs + np.arange(int(counts.sum()))
    tests = keep[packed.test_task]
    return PackedTasks(task_ids=[t for t, k in zip(packed.task_ids, keep) if k], cells=packed.cells,
                       starts=packed.starts, heights=packed.heights, widths=packed.widths, ex_in=packed.ex_in[rows],
                       ex_out=packed.ex_out[rows], task_ex_start=np.concatenate([[0], np.cumsum(counts)[:-1]]),
                       task_ex_count=counts, test_task=new_index[packed.test_task[tests]],
                       test_in=packed.test_in[tests], test_out=packed.test_out[tests],
                       test_index=packed.test_index[tests], test_trainable=packed.test_trainable[tests])


def task_max_sides(packed: PackedTasks) -> np.ndarray:
    """Largest side of any grid a task trains on or predicts from [num_tasks]: the sampler's task_sides (its
    examples), widened by its test inputs."""
    out = task_sides(packed)
    np.maximum.at(out, packed.test_task, np.maximum(packed.heights, packed.widths)[packed.test_in])
    return out


def save_packed(packed: PackedTasks, folder: Path) -> None:
    """Every array as FIELD.npy and the task ids as task_ids.json (the caller makes the folder appear atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in ARRAYS:
        np.save(folder / f"{key}.npy", getattr(packed, key))
    (folder / "task_ids.json").write_text(json.dumps(packed.task_ids))


def load_packed(folder: Path) -> PackedTasks:
    """A saved PackedTasks, its arrays memory-mapped read-only (pages are read as batches touch them)."""
    arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in ARRAYS}
    return PackedTasks(task_ids=json.loads((folder / "task_ids.json").read_text()), **arrays)


def unpack_tasks(part: PackedPart) -> list[Task]:
    """Task objects (grids are views of the packed cells): trainable examples as demonstrations, the held-out
    test pairs as tests."""
    p = part.packed
    tests: dict[int, list[int]] = {}
    for r in np.flatnonzero(~p.test_trainable):
        tests.setdefault(int(p.test_task[r]), []).append(int(r))
    out = []
    for t, task_id in enumerate(p.task_ids):
        s, n = p.task_ex_start[t], p.task_ex_count[t]
        rows = tests.get(t, [])
        outputs = [p.grid(p.test_out[r]) for r in rows if p.test_out[r] >= 0]
        out.append(Task(id=task_id, train=[(p.grid(i), p.grid(o)) for i, o in zip(p.ex_in[s:s + n], p.ex_out[s:s + n])],
                        test_inputs=[p.grid(p.test_in[r]) for r in rows],
                        test_outputs=outputs if len(outputs) == len(rows) else None, source=part.source,
                        train_on_test=False))
    return out
