"""From a DataConfig to what training needs: validated tasks, their packed grids and the puzzle-id scheme."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.official_build import build_id_table
from pipeline.data.packed import PackedPart, PackedTasks, select_tasks, task_max_sides
from pipeline.data.puzzle_ids import PerTaskIds, PuzzleIdScheme
from pipeline.data.sources import LoadResult, load_sources
from pipeline.data.versions import per_augmentation_ids
from pipeline.data.tasks import DataError, Task, TaskProblem

log = logging.getLogger(__name__)

MAX_TABLE_BYTES = 8 << 30
"""The largest puzzle-embedding table (fp32) a `per_augmentation` run may ask for: 8 GiB, ~3.5x the paper's
1280 tasks x 1001 ids at 512 values (2.3 GiB). NVARC's 103k puzzles x 1001 ids would be 103M rows, ~197 GiB at
512: a run would die of memory minutes in, after the data load."""


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


def split_by_canvas(tasks: list[Task], canvas: int) -> tuple[list[Task], list[tuple[Task, str]]]:
    """(the tasks whose grids all fit the canvas, [(task, why not)] for the others)."""
    fits, too_large = [], []
    for t in tasks:
        if (p := canvas_problem(t, canvas)) is not None:
            too_large.append((t, p))
        else:
            fits.append(t)
    return fits, too_large


def fit_canvas(result: LoadResult, canvas: int) -> LoadResult:
    """Drop (and report) tasks with a grid larger than the canvas."""
    out = LoadResult(problems=list(result.problems))
    out.tasks, too_large = split_by_canvas(result.tasks, canvas)
    for t, p in too_large:
        out.problems.append(TaskProblem(t.id, p, t.source))
        log.warning("skipping task %s: %s", t.id, p)
    for part in result.parts:
        side = task_max_sides(part.packed)
        for t in np.flatnonzero(side > canvas):
            p = f"a grid of side {side[t]}, larger than the {canvas}x{canvas} canvas"
            out.problems.append(TaskProblem(part.packed.task_ids[t], p, part.source))
            log.warning("skipping task %s: %s", part.packed.task_ids[t], p)
        out.parts.append(PackedPart(part.source, select_tasks(part.packed, side <= canvas)))
    return out


def build_id_scheme(cfg: DataConfig, packed: PackedTasks, seed: int) -> PuzzleIdScheme:
    """The puzzle-id scheme data.puzzle_ids names, over these tasks. A per_augmentation table over an official build
    alone (`official:DIR`) is the build's own (identifiers.json): the versions the official run trains with."""
    if cfg.puzzle_ids == "per_task":
        return PerTaskIds(packed.num_tasks, cfg.dihedral, cfg.colour_perm)
    if len(cfg.sources) == 1 and cfg.sources[0].startswith("official:") and cfg.dihedral and cfg.colour_perm:
        return build_id_table(cfg.sources[0].removeprefix("official:").split("#")[0], packed.task_ids)
    return per_augmentation_ids(packed, cfg.augs_per_task, seed, cfg.dihedral, cfg.colour_perm)


def check_id_table(cfg: DataConfig, num_tasks: int, emb_ndim: int) -> None:
    """Refuse, before any id is built, a per_augmentation table over MAX_TABLE_BYTES (one line naming the knobs)."""
    if cfg.puzzle_ids != "per_augmentation" or not emb_ndim:
        return
    ids = num_tasks * (cfg.augs_per_task + 1) + 1  # each task's original and K augmentations, and the blank id
    size = ids * emb_ndim * 4
    if size > MAX_TABLE_BYTES:
        fits = (MAX_TABLE_BYTES // (emb_ndim * 4) - 1) // num_tasks - 1
        raise DataError(f"data.puzzle_ids=per_augmentation: {num_tasks:,} tasks x (1 + data.augs_per_task="
                        f"{cfg.augs_per_task}) = up to {ids:,} puzzle ids, a {size / 2**30:,.0f} GiB embedding table "
                        f"(model.puzzle_emb_ndim={emb_ndim}, fp32), over the {MAX_TABLE_BYTES / 2**30:.0f} GiB bound: "
                        "set data.puzzle_ids=per_task (one embedding per task, as for NVARC's puzzles)"
                        + (f" or data.augs_per_task={fits} or less" if fits >= 0 else ""))


def build_dataset(cfg: DataConfig, seed: int, emb_ndim: int = 0) -> Dataset:
    """The tasks of cfg.sources that fit the canvas, packed, with their id scheme; `emb_ndim` (the model's
    puzzle_emb_ndim) bounds a per_augmentation table (check_id_table), 0 = unchecked."""
    loaded = fit_canvas(load_sources(cfg.sources, cfg.arc_root), cfg.canvas)
    if not loaded.num_tasks:
        raise DataError(f"no valid task in sources {cfg.sources}")
    check_id_table(cfg, loaded.num_tasks, emb_ndim)
    packed = loaded.pack()
    return Dataset(loaded.tasks, packed, build_id_scheme(cfg, packed, seed), loaded.problems, loaded.task_sources())
