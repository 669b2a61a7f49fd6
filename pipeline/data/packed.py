"""Packed task sets: every grid of a task list in one flat uint8 array (a few MB for the 1280 tasks) with example
and test tables referring to grids by index (PackedTasks, pack_tasks). Bulk sources such as `pairs:` deliver 100k
puzzles already packed, never as Task objects: this module also concatenates packed parts, keeps a subset of their
tasks, saves them to and loads them from a folder of .npy files (memory-mapped), and unpacks them back into Task
objects for the tools that want those (export, stats)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.tasks import Task

ARRAYS = ("cells", "starts", "heights", "widths", "ex_in", "ex_out", "task_ex_start", "task_ex_count", "test_task",
          "test_in", "test_out", "test_index", "test_trainable")


@dataclass
class PackedTasks:
    """All grids of a task list in flat arrays, plus example tables referring to them by grid index."""
    task_ids: list[str]
    cells: np.ndarray
    starts: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    ex_in: np.ndarray
    ex_out: np.ndarray
    task_ex_start: np.ndarray
    task_ex_count: np.ndarray
    test_task: np.ndarray
    test_in: np.ndarray
    test_out: np.ndarray
    """Test inputs of every task; test_out = -1 where the output is unknown."""
    test_index: np.ndarray
    """Position of each test input within its task's test list."""
    test_trainable: np.ndarray

    @property
    def num_tasks(self) -> int:
        return len(self.task_ids)

    def grid(self, i: int) -> np.ndarray:
        """Grid number i as a uint8 [h, w] view."""
        s, h, w = self.starts[i], self.heights[i], self.widths[i]
        return self.cells[s:s + h * w].reshape(h, w)


def pack_tasks(tasks: list[Task]) -> PackedTasks:
    grids: list[np.ndarray] = []

    def add(g: np.ndarray) -> int:
        grids.append(np.ascontiguousarray(g, dtype=np.uint8))
        return len(grids) - 1

    ex_in, ex_out, ex_start, ex_count = [], [], [], []
    t_task, t_in, t_out, t_index, t_trainable = [], [], [], [], []
    for k, t in enumerate(tasks):
        ex_start.append(len(ex_in))
        for i, o in t.train:
            ex_in.append(add(i))
            ex_out.append(add(o))
        for j, i in enumerate(t.test_inputs):
            gi = add(i)
            go = add(t.test_outputs[j]) if t.test_outputs is not None else -1
            t_task.append(k), t_in.append(gi), t_out.append(go), t_index.append(j)
            t_trainable.append(t.train_on_test and go >= 0)
            if t.train_on_test and go >= 0:
                ex_in.append(gi)
                ex_out.append(go)
        ex_count.append(len(ex_in) - ex_start[-1])
    sizes = np.array([g.size for g in grids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    cells = np.concatenate([g.reshape(-1) for g in grids]) if grids else np.zeros(0, np.uint8)
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return PackedTasks(task_ids=[t.id for t in tasks], cells=cells, starts=starts,
                       heights=i64([g.shape[0] for g in grids]), widths=i64([g.shape[1] for g in grids]),
                       ex_in=i64(ex_in), ex_out=i64(ex_out), task_ex_start=i64(ex_start), task_ex_count=i64(ex_count),
                       test_task=i64(t_task), test_in=i64(t_in), test_out=i64(t_out), test_index=i64(t_index),
                       test_trainable=np.asarray(t_trainable, dtype=bool))


def task_sides(packed: PackedTasks) -> np.ndarray:
    """Largest grid side of each task's training examples [num_tasks] (0 for a task without examples)."""
    side = np.maximum(packed.heights, packed.widths)
    ex_side = np.maximum(side[packed.ex_in], side[packed.ex_out])
    out = np.zeros(packed.num_tasks, np.int64)
    task_of_ex = np.repeat(np.arange(packed.num_tasks), packed.task_ex_count)
    np.maximum.at(out, task_of_ex, ex_side)
    return out



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
