"""From a DataConfig to what training needs: validated tasks, their packed grids and the puzzle-id scheme."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.packed import PackedPart, select_tasks, task_max_sides
from pipeline.sampler import DataConfig, PackedTasks, PuzzleIdScheme, build_id_scheme
from pipeline.sources import LoadResult, load_sources
from pipeline.tasks import DataError, Task, TaskProblem

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    tasks: list[Task]
    """The tasks that came as Task objects (bulk sources' tasks exist only in `packed`)."""
    packed: PackedTasks
    ids: PuzzleIdScheme
    problems: list[TaskProblem]
    task_source: list[str] | None = None
    """Per packed task, the label of the source that loaded it (sources.source_label): the periodic held-out
    evaluation draws its inputs across sources and reports each one's metrics."""


def canvas_problem(task: Task, canvas: int) -> str | None:
    for k, (i, o) in enumerate(task.train):
        for name, g in (("input", i), ("output", o)):
            if max(g.shape) > canvas:
                return f"train[{k}].{name} is {g.shape[0]}x{g.shape[1]}, larger than the {canvas}x{canvas} canvas"
    for k, g in enumerate(task.test_inputs):
        if max(g.shape) > canvas:
            return f"test[{k}].input is {g.shape[0]}x{g.shape[1]}, larger than the {canvas}x{canvas} canvas"
    return None


def fit_canvas(res: LoadResult, canvas: int) -> LoadResult:
    """Drop (and report) tasks with a grid larger than the canvas."""
    out = LoadResult(problems=list(res.problems))
    for t in res.tasks:
        if (p := canvas_problem(t, canvas)) is not None:
            out.problems.append(TaskProblem(t.id, p, t.source))
            log.warning("skipping task %s: %s", t.id, p)
        else:
            out.tasks.append(t)
    for part in res.parts:
        side = task_max_sides(part.packed)
        for t in np.flatnonzero(side > canvas):
            p = f"a grid of side {side[t]}, larger than the {canvas}x{canvas} canvas"
            out.problems.append(TaskProblem(part.packed.task_ids[t], p, part.source))
            log.warning("skipping task %s: %s", part.packed.task_ids[t], p)
        out.parts.append(PackedPart(part.source, select_tasks(part.packed, side <= canvas)))
    return out


def build_dataset(cfg: DataConfig, seed: int) -> Dataset:
    res = fit_canvas(load_sources(cfg.sources, cfg.arc_root), cfg.canvas)
    if not res.num_tasks:
        raise DataError(f"no valid task in sources {cfg.sources}")
    packed = res.pack()
    return Dataset(res.tasks, packed, build_id_scheme(cfg, packed, seed), res.problems, res.task_sources())
