"""Test-time training (TTT): fit a pretrained TRM to hidden tasks from their demonstrations alone.

Owns what differs from pretraining, which is only data and config; the run itself is the one builder
(pipeline/training/build.py) and the one training loop (pipeline/training/train.py):
- the config: the checkpoint's resolved config with the official evaluation (pipeline/computation.py) <
  TTT presets (configs/ttt_*.yaml: recipes, then optional speed-ups such as configs/ttt_fast.yaml) <
  `--set` overrides, with the warm start (`train.init_from`) pointing at the checkpoint; what it computes
  otherwise than the checkpoint was trained (its departures) is logged and kept in the run's ttt.json;
- the data: the hidden tasks' demonstration pairs only (their test outputs are unknown on Kaggle and are
  never read), optionally one demonstration per task left out to measure held-out pass@2 while training;
- the puzzle ids: new ids for the hidden tasks in the checkpoint's scheme (per augmentation: the original
  plus K augmentations per task; per task: one row), every row started at the mean of the whole pretrained
  table as TRM, NVARC and McGovern reset a resized table, tasks the checkpoint already knows included; with
  train.keep_known_rows (a departure) a known task keeps its own rows (and their augmentations).
The table of the TTT run holds only the hidden tasks' rows, so predict on the run folder uses them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.training.build import build_run
from pipeline.checkpoint import stored_ids
from pipeline.computation import departures, describe, with_official_evaluation
from pipeline.config import RunConfig, load_config, to_dict
from pipeline.data.dataset import Dataset, fit_canvas
from pipeline.layout import Checkpoint
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerAugmentationIds, PerTaskIds, PuzzleIdScheme
from pipeline.data.versions import per_augmentation_ids
from pipeline.runtime import Runtime
from pipeline.data.sources import LoadResult
from pipeline.data.tasks import DataError, Task, safe_name, write_json_atomic
from pipeline.training.train import Stop

log = logging.getLogger(__name__)
MIN_DEMOS_FOR_HOLDOUT = 3
"""A task needs this many demonstrations to lend one to the held-out measurement (two still train)."""


def ttt_config(ckpt: Checkpoint, preset: str | Path | list | None, overrides: list[str], run_dir: str | Path,
               sources: list[str] | None = None) -> RunConfig:
    """The checkpoint's config as TTT runs it (ttt_config_over); run_dir and the warm start are set here so
    that a TTT run always starts from `ckpt` (and resumes from its own folder)."""
    return ttt_config_over(ckpt.config, preset, [*overrides, f"run_dir={run_dir}", f"train.init_from={ckpt.path}"],
                           sources)


def ttt_config_over(base: RunConfig, preset: str | Path | list | None, overrides: list[str],
                    sources: list[str] | None = None) -> RunConfig:
    """A pretrained run's config with the official evaluation, then the presets' deltas (one path or a list,
    applied in order), then overrides: what a TTT run on that model computes with."""
    base_dict = with_official_evaluation(to_dict(base))
    if sources:  # provenance only (TTT data is passed in); `#demos` so that a rebuild never reads outputs
        base_dict["data"]["sources"] = [s if s.endswith("#demos") else s + "#demos" for s in sources]
    if base_dict["train"]["engine"] == "deepspeed":  # the TTT table is small: DDP, and every mode runs there
        base_dict["train"]["engine"] = "ddp"
    base_dict["train"]["wandb_project"] = ""  # pretraining's tracker is not TTT's (Kaggle has no wandb): --set it
    base_dict["train"].update(epochs=0, eval_interval=0)  # pretraining's length in epochs: TTT's is its own steps
    base_dict["train"]["keep_known_rows"] = False  # a departure is asked for by each run (a TTT run's is not inherited)
    return load_config(preset, overrides, base=base_dict)


def demo_tasks(tasks: list[Task], holdout: bool) -> list[Task]:
    """Training tasks for TTT: demonstrations only (test outputs are never read). With `holdout`, the last
    demonstration of each task with enough of them becomes a held-out test pair (its output known, never
    trained on; it replaces the task's test inputs in this run) so that evaluation during TTT measures
    pass@2 on a pair the model did not fit. That run is a measurement: its model has not seen that pair."""
    out = []
    for t in tasks:
        if holdout and len(t.train) >= MIN_DEMOS_FOR_HOLDOUT:
            inp, outp = t.train[-1]
            out.append(Task(t.id, t.train[:-1], [inp], [outp], source=t.source, train_on_test=False))
        else:
            out.append(Task(t.id, list(t.train), list(t.test_inputs), None, source=t.source, train_on_test=False))
    return out


def ttt_ids(cfg: RunConfig, packed, ckpt_task_ids: list[str], ckpt_ids: PuzzleIdScheme | None
            ) -> tuple[PuzzleIdScheme, np.ndarray]:
    """The id scheme of the TTT run and, per new row, the checkpoint row it starts from (-1 = the mean): the
    mean everywhere unless cfg.train.keep_known_rows, which keeps the rows of the tasks the checkpoint knows."""
    index = {tid: k for k, tid in enumerate(ckpt_task_ids)} if cfg.train.keep_known_rows else {}
    known = [index.get(tid, -1) for tid in packed.task_ids]
    d = cfg.data
    if d.puzzle_ids == "per_task":
        ids = PerTaskIds(packed.num_tasks, d.dihedral, d.colour_perm)
        same = isinstance(ckpt_ids, PerTaskIds) or ckpt_ids is None
        rows = [1 + k if k >= 0 and same else -1 for k in known]
        return ids, np.array([-1, *rows], dtype=np.int64)
    fresh = per_augmentation_ids(packed, d.augs_per_task, cfg.seed, d.dihedral, d.colour_perm)
    dih, perms, counts, init = [], [], [], [-1]
    for t, k in enumerate(known):
        if k >= 0 and isinstance(ckpt_ids, PerAugmentationIds):  # a task the checkpoint knows keeps its rows
            src, lo, hi = ckpt_ids, int(ckpt_ids.offsets[k]), int(ckpt_ids.offsets[k + 1])
            init += list(range(1 + lo, 1 + hi))
        else:
            src, lo, hi = fresh, int(fresh.offsets[t]), int(fresh.offsets[t + 1])
            init += [-1] * (hi - lo)
        dih.append(src.dihedral[lo:hi]), perms.append(src.perms[lo:hi]), counts.append(hi - lo)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = PerAugmentationIds(np.concatenate(dih), np.concatenate(perms), offsets)
    return ids, np.asarray(init, dtype=np.int64)


def ttt_dataset(cfg: RunConfig, tasks: list[Task], warm: Checkpoint | None, holdout: bool = False
                ) -> tuple[Dataset, np.ndarray]:
    """The hidden tasks' demonstrations packed for the sampler, their id scheme and the rows' warm start from
    checkpoint `warm` (None: every row starts fresh)."""
    result = fit_canvas(LoadResult(tasks=demo_tasks(tasks, holdout)), cfg.data.canvas)
    if not result.tasks:
        raise DataError("no hidden task fits the model's canvas: nothing to train on")
    packed = pack_tasks(result.tasks)
    ckpt_task_ids, ckpt_ids = (warm.task_ids, stored_ids(warm)) if warm is not None else ([], None)
    ids, init_rows = ttt_ids(cfg, packed, ckpt_task_ids, ckpt_ids)
    known = sum(tid in set(ckpt_task_ids) for tid in packed.task_ids)
    rows = "keep their rows" if cfg.train.keep_known_rows else "start at the mean row too"
    log.info("TTT on %d tasks (%d known to the checkpoint %s), %d demonstrations, %d puzzle ids, "
             "%d held-out demonstrations", packed.num_tasks, known, rows, int(packed.task_ex_count.sum()), ids.num_ids,
             int((packed.test_out >= 0).sum()))
    return Dataset(result.tasks, packed, ids, result.problems), init_rows


@dataclass
class TTTResult:
    run_dir: Path
    step: int
    stopped: str | None
    metrics: dict
    checkpoint: Checkpoint | None = None
    """The run's last checkpoint (rank 0; None on the other ranks)."""


RECIPE_TRAINING = ("optimizer", "trainable")
"""train.* settings a TTT recipe chooses (a published recipe's own optimiser is no departure): another value
than the presets give (`--set train.optimizer=muon`, `train.trainable=lora`) is one."""


def ttt_departures(cfg: RunConfig, warm: Checkpoint, preset: str | Path | list | None) -> list[str]:
    """How a TTT config computes otherwise than its warm-start checkpoint was trained (pipeline/computation.py;
    a TTT run's warm start: the pretrained checkpoint it descends from), and trains otherwise than the
    presets `preset` alone would (RECIPE_TRAINING)."""
    recipe = ttt_config_over(warm.config, preset, []).train
    return departures(cfg, warm.trained_config()) + [
        f"train.{k}: {getattr(recipe, k)} -> {getattr(cfg.train, k)}" for k in RECIPE_TRAINING
        if getattr(cfg.train, k) != getattr(recipe, k)]


def run_ttt(cfg: RunConfig, rt: Runtime, tasks: list[Task], warm: Checkpoint, holdout: bool = False,
            stop: Stop | None = None, found: list[str] | None = None) -> TTTResult:
    """One joint TTT run over `tasks` (all hidden tasks in one run, as a Kaggle budget fits), warm-started from
    `warm` (cfg.train.init_from); resumes from its own folder if killed. Ends at cfg.train.steps or `stop`,
    with a complete checkpoint either way. `found`: its departures (ttt_departures with the run's presets),
    logged and kept in ttt.json; None: against the checkpoint's computation alone."""
    found = departures(cfg, warm.trained_config()) if found is None else found
    log.info("TTT %s", describe(found))
    data, init_rows = ttt_dataset(cfg, tasks, warm, holdout)
    run = build_run(cfg, rt, data, init_rows, prefix="ttt", warm=warm)
    result = run.trainer.fit(stop)
    if rt.is_main:
        write_json_atomic(Path(cfg.run_dir) / layout.TTT_JSON, {
            "checkpoint": cfg.train.init_from, "tasks": data.packed.task_ids, "holdout": holdout,
            "departures": found, "skipped": [str(p) for p in data.problems], "result": result})
    return TTTResult(Path(cfg.run_dir), result["step"], result.get("stopped"), result, run.trainer.saved)


def per_task_dir(run_dir: str | Path, task_id: str) -> Path:
    return layout.task_run_dir(run_dir, safe_name(task_id))


def run_ttt_per_task(cfg: RunConfig, rt: Runtime, tasks: list[Task], warm: Checkpoint, holdout: bool = False,
                     stop: Stop | None = None, found: list[str] | None = None) -> list[TTTResult]:
    """One short run per task (its own trunk and rows) in RUN/tasks/<task>/; under torchrun the tasks are
    spread over the ranks, each rank training its share alone on its own device. A task that fails is
    logged (predict gives it the pretrained model); the others go on."""
    solo = dataclasses.replace(rt, rank=0, world_size=1)  # each rank trains its share alone
    results = []
    mine = tasks[rt.rank::rt.world_size]
    for k, t in enumerate(mine):
        # Per task, torch.compile would recompile for every task: its cost would not pay back.
        sub = dataclasses.replace(cfg, run_dir=str(per_task_dir(cfg.run_dir, t.id)),
                                  compute=dataclasses.replace(cfg.compute, compile=False))
        task_stop = stop
        if stop is not None and stop.deadline is not None:  # the time left, shared by the tasks left
            share = (stop.deadline - time.time()) / (len(mine) - k)
            task_stop = dataclasses.replace(stop, deadline=time.time() + share)
        try:
            results.append(run_ttt(sub, solo, [t], warm, holdout, task_stop, found))
        except (DataError, RuntimeError, ValueError) as e:  # predict gives this task the pretrained model
            log.error("TTT failed for task %s: %s; it will use the pretrained model", t.id, e)
    return results


def ttt_index(run_dir: str | Path) -> dict:
    """What a TTT run folder holds, for predict: {"joint": True}, or {"per_task": {task_id: folder},
    "base": the pretrained checkpoint they started from}. A folder with a joint run is read as joint."""
    tasks_dir = layout.per_task_runs(run_dir)
    if tasks_dir is not None:
        out, base = {}, None
        for folder in layout.task_runs(tasks_dir):
            meta = json.loads((folder / layout.TTT_JSON).read_text())
            base = base or meta.get("checkpoint")
            for tid in meta["tasks"]:
                out[tid] = folder
        return {"per_task": out, "base": base}
    return {"joint": True}
