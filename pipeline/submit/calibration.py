"""Calibration of the hidden-test flow: the seconds of TTT and prediction measured on the real challenges file and
the devices present (the public placeholder file runs about a third faster than the hidden rerun, so no plan
trusts a calibration made on another file), for pipeline/submit/budget.py to plan with.

- TTT: the real TTT run built and warm-started (pipeline.training.build), one warm-up step (compiles on GPU), a few timed
  steps and one checkpoint save, then thrown away; under torchrun all ranks take part (DDP), so the step time
  includes the gradient all-reduce.
- Prediction: the loaded model over one full batch of views of real test inputs through the real predict path
  (views, model, inversion, vote), once to warm up (and compile), once timed, for two supervision steps scaled
  to all N_sup (a step costs the same throughout: the batch stays full).
"""
from __future__ import annotations

import dataclasses
import gc
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from pipeline.submit.budget import Calibration
from pipeline.training.build import build_run
from pipeline.checkpoint import LoadedModel
from pipeline.config import RunConfig
from pipeline.data.dataset import Dataset, split_by_canvas
from pipeline.prediction.infer import PredictOptions, PredictTasks, ViewSpec, make_views, model_batch, predict_tests
from pipeline.layout import Checkpoint
from pipeline.data.packed import pack_tasks
from pipeline.runtime import Runtime, compile_model
from pipeline.data.tasks import Task


def calibrate_ttt(cfg: RunConfig, rt: Runtime, data: Callable[[], tuple[Dataset, np.ndarray]], folder: Path,
                  warmup: int = 1, steps: int = 3, warm: Checkpoint | None = None) -> tuple[float, float, float]:
    """(startup, per step, per save) seconds of this TTT run on these devices, measured on a throw-away copy of
    the run in `folder` (removed afterwards), warm-started from `warm` (cfg.train.init_from opened; None: none).
    `data` builds the run's dataset and rows' warm start (pipeline.training.ttt.ttt_dataset over the tasks):
    the start-up time includes it, as a TTT run's does."""
    _reset_folder(folder, rt)
    # Full steps throughout (embeddings_then_all's frozen steps are cheaper: timing them would under-plan).
    train = dataclasses.replace(cfg.train, progress=False, eval_every=0, freeze_fraction=0.0,
                                steps=max(cfg.train.steps, warmup + steps + 1))
    cal_cfg = dataclasses.replace(cfg, run_dir=str(folder), train=train)
    t0 = time.perf_counter()
    data, init_rows = data()
    run = build_run(cal_cfg, rt, data, init_rows, eval_fn=None, prefix="calibration", warm=warm)
    trainer = run.trainer
    trainer.prepare()
    for _ in range(warmup):
        trainer.train_step()
    rt.synchronize()
    t1 = time.perf_counter()
    if cal_cfg.compute.crop:
        step_s = _bucketed_step_s(trainer, rt, steps)
    else:
        for _ in range(steps):
            trainer.train_step()
        rt.synchronize()
        step_s = (time.perf_counter() - t1) / steps
    t2 = time.perf_counter()
    trainer.save()
    t3 = time.perf_counter()
    trainer.sink.close()
    del run, trainer
    free_memory(rt)
    _reset_folder(folder, rt)
    return max(0.0, (t1 - t0) - warmup * step_s), step_s, t3 - t2


def _bucketed_step_s(trainer, rt: Runtime, steps: int) -> float:
    """Seconds per step under compute.crop: a step's cost follows its size bucket (data.bucket_steps), so time
    `steps` steps in each bucket, every slot refilled from it, and take the mean (buckets are drawn equally
    often). One bucket (no bucketing): the steps as they come."""
    sampler = trainer.sampler
    times = []
    for b in range(len(sampler.buckets)) if len(sampler.buckets) > 1 else [None]:
        trainer.restart_slots()  # refill every slot from this bucket
        pick = (lambda: None) if b is None else (lambda: sampler.batch_at(trainer.step, b))  # None: the next batch
        trainer.train_step(pick())  # its first step also compiles this shape (dynamic)
        rt.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(pick())
        rt.synchronize()
        times.append((time.perf_counter() - t) / steps)
    return float(np.mean(times))


def calibrate_predict(loaded: LoadedModel, tasks: list[Task], opts: PredictOptions, rt: Runtime, inputs: int = 4,
                      steps: int = 2) -> tuple[float, float]:
    """(startup, per view) seconds of prediction with this model: one full batch of views of real test
    inputs through the real path (views, model, inversion, vote), once to warm up (and compile), once timed.
    Each view runs `steps` supervision steps; a step costs the same at every step (continuous batching keeps
    the batch full and the shapes fixed), so the time per view is scaled to all N_sup steps. Under compute.crop
    a view costs what its rectangle costs, so the time is scaled by the FLOPs of all inputs' views over the
    timed inputs' (`_crop_cost_ratio`)."""
    canvas, pcfg = opts.canvas, opts.cfg
    fit = split_by_canvas(tasks, canvas)[0]
    if not fit:
        return 0.0, 0.0
    packed = pack_tasks(fit)
    rows = np.arange(min(inputs, len(packed.test_task)))
    n_sup = pcfg.max_steps or loaded.model.cfg.halt_max_steps
    batch = model_batch(pcfg, rt.device, loaded.model.cfg.total_len)
    cfg = dataclasses.replace(pcfg, augs=max(1, -(-batch // len(rows))), adaptive_halting=False,
                              max_steps=min(steps, n_sup))
    model = compile_model(loaded.model, loaded.model) if rt.compiles(opts.compile) else loaded.model
    # no task known: any puzzle row costs the same
    all_unseen = PredictTasks(packed, np.full(packed.num_tasks, -1, dtype=np.int64), loaded.ids)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        predict_tests(model, all_unseen, rows, dataclasses.replace(opts, cfg=cfg))
        rt.synchronize()
        times.append(time.perf_counter() - t0)
    view_s = times[1] / (len(rows) * cfg.augs) * n_sup / cfg.max_steps
    if loaded.model.compute.crop:
        view_s *= _crop_cost_ratio(loaded.model, all_unseen, rows, opts.views(8))
    return max(0.0, times[0] - times[1]), view_s


def _crop_cost_ratio(model, tasks: PredictTasks, timed: np.ndarray, spec: ViewSpec) -> float:
    """Mean FLOPs of a view over all test inputs / over the timed ones, from the views `spec` draws of each
    (their rectangles under crop: input, answer bound, offset)."""
    def mean_flops(rows):
        v = make_views(tasks, rows, spec)
        return float(np.mean([model.flops_per_step(1, int(r * c), train=False) for r, c in v.extents]))

    return mean_flops(np.arange(len(tasks.packed.test_task))) / mean_flops(timed)


def slowest(cal: Calibration, rt: Runtime) -> Calibration:
    """The slowest rank's calibration (every rank then makes the same plan)."""
    if not rt.distributed:
        return cal
    parts: list = [None] * rt.world_size
    dist.all_gather_object(parts, cal)
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def free_memory(rt: Runtime) -> None:
    """Release what a dropped model held (before the next one is built)."""
    gc.collect()
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_folder(folder: Path, rt: Runtime) -> None:
    if rt.is_main:
        shutil.rmtree(folder, ignore_errors=True)
    if rt.distributed:
        dist.barrier()
