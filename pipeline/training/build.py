"""The one builder of a training run: from a RunConfig and a Runtime to data, model, sampler, held-out
evaluation and Trainer, and (`TrainSetup`, when training begins) the parts the Trainer steps, in their order:
warm start, trainable set with optimiser and EMA, parallel wrapping, checkpoint I/O. Pretraining, test-time
training and the training benchmarks all start here, so the wiring exists once."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from pipeline.checkpoint import Checkpointer, warm_start
from pipeline.config import ConfigError, RunConfig, dump_config
from pipeline.data.dataset import Dataset, build_dataset
from pipeline.prediction.infer import PredictOptions, evaluate_heldout
from pipeline.layout import Checkpoint
from pipeline.training.metrics import NullSink, RunSink
from pipeline.nn.arch import build_model
from pipeline.nn.model import TRM
from pipeline.training.parallel import wrap_model
from pipeline.runtime import Runtime
from pipeline.data.sampler import IndependentSampler, OfficialSampler, make_sampler
from pipeline.training.train import Trainer, TrainParts
from pipeline.training.train_state import TrainCheckpoints
from pipeline.training.trainable import build_trainables

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: RunConfig
    rt: Runtime
    data: Dataset
    model: TRM
    sampler: OfficialSampler | IndependentSampler
    trainer: Trainer


def heldout_rows(data: Dataset, max_inputs: int) -> dict[str, np.ndarray]:
    """The held-out test rows (known outputs, never trained on) the periodic evaluation scores, per source label:
    drawn round-robin across the sources that have any (each source's first row, then each one's second, ...)
    up to `max_inputs` in all (0 = all), so a small held-out part of a mix (a pairs: #holdout) is scored
    however many rows the parts before it hold. Deterministic: the same rows at every evaluation."""
    p = data.packed
    rows = np.flatnonzero((p.test_out >= 0) & ~p.test_trainable)
    labels = data.task_source or [""] * p.num_tasks
    groups: dict[str, list[int]] = {}
    for r in rows.tolist():
        groups.setdefault(labels[p.test_task[r]], []).append(r)
    limit, n, take = min(max_inputs or len(rows), len(rows)), 0, dict.fromkeys(groups, 0)
    while n < limit:
        for label, g in groups.items():
            if take[label] < len(g) and n < limit:
                take[label], n = take[label] + 1, n + 1
    return {label: np.asarray(groups[label][:n], np.int64) for label, n in take.items() if n}


def heldout_eval_fn(cfg: RunConfig, rt: Runtime, data: Dataset):
    """Periodic held-out pass@k on test inputs whose outputs are known but never trained on (None if none, or
    if data.eval_inputs is -1): `eval/pass@2` over all the rows heldout_rows draws, and where several sources
    have some, each source's own metrics too (`eval/<source>/pass@2`, ...); a progress bar with train.progress
    (it runs on rank 0)."""
    if cfg.data.eval_inputs < 0:
        return None
    rows = heldout_rows(data, cfg.data.eval_inputs)
    if not rows:
        return None
    opts = PredictOptions.of(cfg, rt, dataclasses.replace(cfg.predict, augs=cfg.data.eval_views))

    def eval_fn(model):
        per = {label: evaluate_heldout(model, data.packed, data.ids, opts, rows=r, show_progress=cfg.train.progress)
               for label, r in rows.items()}
        if len(per) == 1:
            return next(iter(per.values()))
        n = sum(m["inputs"] for m in per.values())
        out = {k: sum(m[k] * m["inputs"] for m in per.values()) / n for k in next(iter(per.values())) if k != "inputs"}
        out["inputs"] = n
        for label, m in per.items():
            out.update({f"{label}/{k}": v for k, v in m.items()})
        return out

    return eval_fn


@dataclass(frozen=True)
class TrainSetup:
    """Builds the parts a Trainer steps when its training begins (Trainer.prepare), in the order they need:
    the warm start from train.init_from, only when the run folder has no checkpoint of its own (resume wins);
    the trainable set with its optimiser and EMA (after the warm start: the EMA averages from the warm
    weights); the parallel wrapping (after both: DeepSpeed copies the weights into its optimiser at wrap
    time); the checkpoint I/O over them, which the Trainer resumes from."""
    cfg: RunConfig
    rt: Runtime
    model: TRM
    sampler: OfficialSampler | IndependentSampler
    task_ids: list[str]
    init_rows: np.ndarray | None
    prefix: str
    warm: Checkpoint | None = None
    """train.init_from already opened (TTT), else opened here when the run warm-starts."""

    def __call__(self) -> TrainParts:
        cfg, rt, c = self.cfg, self.rt, self.cfg.train
        barrier = (lambda: dist.barrier()) if rt.distributed else (lambda: None)
        ckpt = Checkpointer(cfg.run_dir, c.keep_last, rt.rank, barrier)
        if c.init_from and ckpt.latest() is None:
            warm_start(self.model, self.warm or Checkpoint.open(c.init_from), self.init_rows)
            log.info("warm start from %s", c.init_from)
        trained = build_trainables(c, self.model)
        par = wrap_model(self.model, trained, c, rt)
        checkpoints = TrainCheckpoints(ckpt, cfg, dump_config(cfg), rt, model=self.model, sampler=self.sampler,
                                       trained=trained, par=par, task_ids=self.task_ids, prefix=self.prefix)
        return TrainParts(trained, par, checkpoints)


def epochs_per_iter(cfg: RunConfig) -> int:
    """The sampler's iteration: train.eval_interval epochs, or with train.epochs and no interval all of them (as
    pretrain.py), else 0: as many as the run's train.steps need (sampler.iteration_epochs)."""
    t = cfg.train
    if t.epochs and cfg.data.sampler != "official":
        raise ConfigError("train.epochs counts epochs of the official sampler: it needs data.sampler=official")
    return t.eval_interval or t.epochs


def official_length(cfg: RunConfig, sampler: OfficialSampler) -> tuple[RunConfig, int, set[int], int]:
    """A train.epochs run as the official loop runs it: the lr schedule over the official total_steps, an
    evaluation after each iteration of eval_interval epochs, and the run's end at the last iteration's last full
    batch or at total_steps, whichever comes first. pretrain.py skips the steps past total_steps but still updates
    the EMA after each of the iteration's remaining batches (weights unchanged), before its last evaluation: those
    updates are the `ema tail`, made after the last step. (When total_steps falls before the last iteration, the
    official loop also evaluates at the later iterations' ends; here the run's last evaluation is the one.)
    Returns the config with train.steps = the end, the schedule's length, the evaluation steps and the EMA tail."""
    t = cfg.train
    total = sampler.total_steps(t.epochs)
    ends = sampler.iteration_end_steps(max(1, t.epochs // (t.eval_interval or t.epochs)))
    last = min(total, ends[-1])
    if last < 1:
        raise ConfigError(f"train.epochs={t.epochs}: the official run length is {total} steps of "
                          f"{t.global_batch} (train.global_batch): not one full batch")
    log.info("train.epochs=%d: %d steps (schedule over the official total_steps %d), evaluations at steps %s, "
             "%d EMA updates after the last step", t.epochs, last, total, [e for e in ends if e <= last], ends[-1] - last)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, steps=last, eval_every=0))
    return cfg, total, {e for e in ends if e <= last}, ends[-1] - last


def build_run(cfg: RunConfig, rt: Runtime, data: Dataset | None = None, init_rows: np.ndarray | None = None,
              eval_fn="heldout", prefix: str = "train", warm: Checkpoint | None = None) -> Run:
    """Everything a training run needs. `data` defaults to cfg.data's sources; `init_rows` maps each puzzle
    row to the warm-start checkpoint's row it starts from (-1 = their mean); `eval_fn` is "heldout" (the
    default evaluation on held-out test inputs), None, or a callable model -> metrics; `warm` is
    train.init_from already opened (TTT), else the trainer opens it when it warm-starts."""
    if cfg.train.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.wandb_project needs the wandb package, which is not installed (pip install wandb)")
    data = data or build_dataset(cfg.data, cfg.seed, cfg.model.puzzle_emb_ndim)
    log.info("%d tasks (%d skipped as invalid), %d puzzle ids", data.packed.num_tasks, len(data.problems),
             data.ids.num_ids)
    model = build_model(cfg.model, data.ids.num_ids, cfg.compute).to(rt.device)
    log.info("model: %.2fM trunk parameters", model.num_params() / 1e6)
    sampler = make_sampler(data.packed, data.ids, cfg.data, cfg.train.global_batch, cfg.seed, rt.rank, rt.world_size,
                           epochs_per_iter(cfg), cfg.train.steps)
    schedule_steps, eval_steps, ema_tail = cfg.train.steps, set(), 0
    if cfg.train.epochs:
        cfg, schedule_steps, eval_steps, ema_tail = official_length(cfg, sampler)
    if eval_fn == "heldout":
        eval_fn = heldout_eval_fn(cfg, rt, data)
    setup = TrainSetup(cfg, rt, model, sampler, data.packed.task_ids, init_rows, prefix, warm)
    sink = RunSink(Path(cfg.run_dir), cfg.train.wandb_project, dataclasses.asdict(cfg)) if rt.is_main else NullSink()
    trainer = Trainer(cfg, rt, model, sampler, setup, eval_fn, sink, prefix)
    trainer.schedule_steps, trainer.eval_steps, trainer.ema_tail = schedule_steps, eval_steps, ema_tail
    return Run(cfg, rt, data, model, sampler, trainer)
