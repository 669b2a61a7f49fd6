"""The one training loop, for pretraining and test-time training: they differ only in config and data.

Each optimiser step is one deep-supervision step of TRM over a persistent batch of ACT slots: the trunk
stepped by its optimiser, the puzzle table by sparse sign-SGD, then the EMA. What the loop steps is built
outside it (pipeline/training/build.py) and handed in: the trainable set, optimiser, EMA and freeze schedule
(pipeline/training/trainable.py), the DDP / DeepSpeed / compiled wrapping (pipeline/training/parallel.py) and the checkpoint
save and resume of the whole training state (`Checkpoints`: pipeline/training/train_state.py). `fit(stop)` ends at cfg.steps or
earlier at a step boundary when a `Stop` (step count, wall-clock deadline or a callable) says so, always
leaving a complete checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.nn.act import IGNORE, Carry, carry_dtype, empty_carry, supervision_step
from pipeline.layout import Checkpoint
from pipeline.training.metrics import NullSink, plot_curves
from pipeline.training.optim import EMA, lr_at, sign_sgd_rows
from pipeline.training.parallel import Parallel
from pipeline.runtime import Runtime
from pipeline.training.trainable import Trainables

log = logging.getLogger(__name__)


@dataclass
class Stop:
    """When `fit()` ends early, at a step boundary: at `steps` (absolute), past `deadline` (time.time()), or
    when `when(step)` is true. Under torchrun the ranks agree (checked every log interval there)."""
    steps: int | None = None
    deadline: float | None = None
    when: Callable[[int], bool] | None = None

    def reason(self, step: int) -> str | None:
        if self.steps is not None and step >= self.steps:
            return "steps"
        if self.deadline is not None and time.time() >= self.deadline:
            return "deadline"
        if self.when is not None and self.when(step):
            return "condition"
        return None


def wall_clock_stop(minutes: float) -> Stop | None:
    """A Stop `minutes` from now (None for 0: no limit)."""
    return Stop(deadline=time.time() + 60 * minutes) if minutes > 0 else None


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def to_torch(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    labels = torch.from_numpy(batch["labels"]).to(device, non_blocking=True).long()
    return {"inputs": torch.from_numpy(batch["inputs"]).to(device, non_blocking=True).int(),
            "labels": torch.where(labels == 0, IGNORE, labels),  # PAD is ignored; EOS border is learned
            "puzzle_ids": torch.from_numpy(batch["puzzle_ids"]).to(device)}


def exploration_min_steps(seed: int, step: int, global_batch: int, rank: int, world: int, prob: float,
                          max_steps: int, device) -> torch.Tensor:
    """Exploration draws from (seed, step) for the global batch, sliced per rank, so that the loss of a
    global batch does not depend on how many processes share it."""
    rng = np.random.default_rng([seed, step, 0xE7])
    explore = rng.random(global_batch) < prob
    m = np.where(explore, rng.integers(2, max_steps + 1, size=global_batch), 0)
    lo, hi = rank * global_batch // world, (rank + 1) * global_batch // world
    return torch.from_numpy(m[lo:hi]).to(device=device, dtype=torch.int32)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: EMA | None):
    """Temporarily swap the EMA weights into `model` (for evaluation)."""
    if ema is None:
        yield
        return
    live = model.state_dict(keep_vars=True)
    swap = ema.averaged(model)
    saved = {n: live[n].detach().clone() for n in swap}
    with torch.no_grad():
        for n, t in swap.items():
            live[n].copy_(t)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                live[n].copy_(t)


class _BatchRows:
    """The batch's puzzle-table rows as a leaf copy (what the model reads for `ids`): its gradient drives the
    sparse sign-SGD update of those rows."""

    def __init__(self, table: torch.Tensor):
        self.table, self.vecs, self.ids = table, None, None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.vecs, self.ids = self.table[ids].detach().clone().requires_grad_(True), ids
        return self.vecs


@dataclass
class _Window:
    """The steps since the last log line: their metric sums (kept on the device: no sync per step)."""
    step: int
    t: float = field(default_factory=time.perf_counter)
    sums: dict = field(default_factory=dict)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, val in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + val.detach().double()


def _all_finite(rt: Runtime, *tensors: torch.Tensor | None) -> bool:
    """Whether every tensor is finite on every rank (so that all ranks skip a step together)."""
    ok = torch.ones((), device=rt.device)
    for t in tensors:
        if t is not None:
            ok = ok * torch.isfinite(t.detach()).all().to(ok.device)
    if rt.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _metrics_row(sums: dict, samples: int, lr: float, p: str, rt: Runtime) -> dict:
    """The log row (keys under the prefix `p`) of a window's metric sums, summed over the ranks, per slot of the
    window's `samples` or per counted slot."""
    keys = sorted(sums)
    t = torch.stack([sums[k].to(rt.device) for k in keys])
    if rt.distributed:
        dist.all_reduce(t)
    s = dict(zip(keys, t.tolist()))  # the one sync of the log interval
    count = max(s.get("count", 0.0), 1.0)
    samples = max(samples, 1)
    row = {f"{p}/loss": s["loss_sum"] / samples, f"{p}/lr": lr, f"{p}/count": s.get("count", 0.0)}
    for k in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
        row[f"{p}/{k}"] = s.get(k, 0.0) / count
    for k in ("lm_loss", "q_halt_loss", "q_continue_loss"):
        if k in s:  # q_continue_loss: only where the model trains that head (HRM, model.act_continue)
            row[f"{p}/{k}"] = s[k] / samples
    return row


def _progress_bar(total: int, initial: int, desc: str):
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0)


class Checkpoints(Protocol):
    """The checkpoint save and resume of a run's whole training state (pipeline/training/train_state.py): the
    Trainer hands it its own state (optimiser steps taken, the ACT carry, the best metric) and takes it back."""

    def latest(self) -> Path | None:
        """The run folder's latest checkpoint (None: none)."""

    def save(self, step: int, carry: Carry | None, best_metric: float | None,
             metric: float | None = None) -> Checkpoint | None:
        """Write a checkpoint of step `step` on every rank; returns it on rank 0 (None on the others)."""

    def resume(self) -> tuple[int, Carry | None, float | None] | None:
        """Load the latest checkpoint into the run's parts; (step, carry, best metric) to go on from, or None."""


@dataclass(frozen=True)
class TrainParts:
    """What the Trainer steps besides model and sampler, built by pipeline/training/build.py when training begins."""
    trained: Trainables
    par: Parallel
    checkpoints: Checkpoints


class Trainer:
    """Runs one training run: `fit()` goes to cfg.train.steps (or a `Stop`), resuming the run folder's latest
    checkpoint, logging, evaluating and saving. Built by pipeline.training.build.build_run, which hands it the model, the
    sampler and `setup`: what builds its TrainParts (warm start, trainable set and optimiser, parallel wrapping,
    checkpoint I/O) when training begins (`prepare`)."""

    def __init__(self, cfg, rt: Runtime, model, sampler, setup: Callable[[], TrainParts], eval_fn=None,
                 sink=None, prefix: str = "train"):
        self.cfg, self.rt, self.model, self.sampler, self.setup = cfg.train, rt, model, sampler, setup
        self.run_dir, self.seed, self.eval_fn, self.prefix = Path(cfg.run_dir), cfg.seed, eval_fn, prefix
        self.sink = sink or NullSink()
        self.local_batch = self.cfg.global_batch // rt.world_size
        self.step, self.carry, self.best_metric, self.skipped = 0, None, None, 0
        self.saved: Checkpoint | None = None  # the last checkpoint this run saved (rank 0)
        self.parts: TrainParts | None = None  # built by prepare()
        self.schedule_steps, self.eval_steps, self.ema_tail = self.cfg.steps, set(), 0  # train.epochs: build.py

    def prepare(self) -> None:
        """Build the parts (pipeline/training/build.py) and continue from the run folder's latest checkpoint, if any.
        Once: fit() calls it, and so does whoever steps the trainer before (the submit calibration, the benches)."""
        if self.parts is not None:
            return
        self.parts = parts = self.setup()
        self.trained, self.checkpoints = parts.trained, parts.checkpoints
        self.params, self.ema = parts.trained.params, parts.trained.ema
        self.wrapped, self.engine, self.opt = parts.par.module, parts.par.engine, parts.par.opt
        self.autocast = self.rt.autocast()
        self.flops, self.peak = self.model.flops_per_step(self.local_batch), peak_flops(self.rt.device)
        loop = self.checkpoints.resume()
        if loop is not None:
            self.step, self.carry, self.best_metric = loop

    def restart_slots(self) -> None:
        """Drop the ACT carry: the next step fills every slot afresh (the submit calibration, between buckets)."""
        self.carry = None

    def save(self, metric: float | None = None) -> Checkpoint | None:
        """Write a checkpoint of this step; returns it on rank 0 (None on the others), and keeps it as `saved`."""
        self.saved = self.checkpoints.save(self.step, self.carry, self.best_metric, metric)
        return self.saved

    # -- one step -------------------------------------------------------------------------------------------
    def train_step(self, batch: dict | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step = one deep-supervision step on the ACT slots; returns detached metric sums. The
        batch is the sampler's next (a function of (seed, step)) unless one is given (the submit calibration)."""
        c, rt, trm = self.cfg, self.rt, self.model
        batch = to_torch(next(self.sampler) if batch is None else batch, rt.device)
        if self.carry is None:
            self.carry = empty_carry(trm, batch, carry_dtype(trm, rt.dtype))
        lr_mult = self._lr_mult(self.step + 1)  # this is optimiser step self.step + 1 (the official numbering)
        rows = _BatchRows(trm.puzzle_emb)
        min_steps = exploration_min_steps(self.seed, self.step, c.global_batch, rt.rank, rt.world_size,
                                          trm.cfg.halt_exploration_prob, trm.cfg.halt_max_steps, rt.device)
        with self.autocast:
            carry, loss, metrics, _ = supervision_step(self.wrapped, self.carry, batch, rows, True, min_steps)
        loss = loss / self.local_batch
        metrics["loss_sum"] = loss.detach() * self.local_batch
        self.carry, self.step = carry, self.step + 1
        not_finite = self._backward(loss, rows)
        if not_finite:
            return self._skip(metrics, not_finite)
        self._optimizer_step(c.lr * lr_mult)
        if rows.vecs.grad is not None:
            sign_sgd_rows(trm.puzzle_emb, rows.ids, rows.vecs.grad.float() / rt.world_size,
                          c.puzzle_emb_lr * lr_mult, c.puzzle_emb_weight_decay, rt.distributed)
        if self.ema is not None:
            for _ in range(1 + (self.ema_tail if self.step == self.cfg.steps else 0)):  # see build.official_length
                self.ema.update(trm)
        return metrics

    def _backward(self, loss: torch.Tensor, rows: _BatchRows) -> str | None:
        """Backward; what was not finite on some rank instead ("loss", "gradient": every rank skips the step)."""
        if self.engine is not None:
            # DeepSpeed partitions gradients, so check the loss (all ranks agree) before its backward.
            if not _all_finite(self.rt, loss):
                return "loss"
            self.engine.backward(loss)
            return None
        loss.backward()
        if not _all_finite(self.rt, self._grad_norm(), rows.vecs.grad):  # the one sync of a step
            self._zero_grad()
            return "gradient"
        return None

    def _lr_mult(self, step: int) -> float:
        """The schedule's factor for optimiser step `step` (1-based: the first step is step 1)."""
        c = self.cfg
        return lr_at(step, 1.0, c.lr_warmup, self.schedule_steps, c.lr_min_ratio)

    def _skip(self, metrics: dict, what: str) -> dict:
        self.skipped += 1
        log.warning("step %d: non-finite %s, step skipped", self.step - 1, what)
        return metrics

    def _optimizer_step(self, lr: float) -> None:
        if self.opt is None:
            return
        if self.trained.trunk_frozen(self.step):  # embeddings_then_all: the trunk waits (its moments stay empty)
            self._zero_grad()
            return
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # optimizer=muon: the Muon group's muon_lr / lr
        if self.engine is not None:
            self.engine.step()
        else:
            self.opt.step()
            self._zero_grad()

    def _grad_norm(self) -> torch.Tensor:
        """Total trunk gradient norm (clipping to cfg.grad_clip when set), as a device tensor."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.rt.device)
        if self.cfg.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, stop: Stop | None = None) -> dict:
        """Train to cfg.steps, or until `stop` says so at a step boundary; either way the run ends with a
        complete checkpoint at its last step. Returns the step, why it stopped and the last evaluation."""
        c = self.cfg
        self.prepare()
        bar = _progress_bar(c.steps, self.step, self.prefix) if self.rt.is_main and c.progress else None
        window, last_eval = _Window(self.step), {}
        stopped = self._stop_reason(stop, check_all=True) if self.step < c.steps else None
        while self.step < c.steps and stopped is None:
            window.add(self.train_step())
            at_log = self.step % c.log_every == 0 or self.step == c.steps
            if at_log:
                window = self._log(window, bar)
            if bar is not None:
                bar.update(1)
            stopped = self._stop_reason(stop, check_all=at_log)
            evaluated = self._maybe_evaluate_and_save(stopped)
            last_eval = last_eval if evaluated is None else evaluated
        if self.checkpoints.latest() is None:  # stopped before its first step: the warm start is the result
            self.save()
        if bar is not None:
            bar.close()
        self.sink.close()
        if self.rt.is_main:
            plot_curves(self.run_dir, self.prefix)
        reason = stopped or ("steps" if self.step >= c.steps else None)
        return {"step": self.step, "stopped": reason, "skipped_steps": self.skipped, **last_eval}

    def _log(self, window: _Window, bar) -> _Window:
        """One metrics row for the steps since the last (the one sync of the log interval); a new window."""
        self.rt.synchronize()
        now, steps, p = time.perf_counter(), self.step - window.step, self.prefix
        lr = self.cfg.lr * self._lr_mult(self.step)  # the last step's
        row = _metrics_row(window.sums, steps * self.cfg.global_batch, lr, p, self.rt)
        row[f"{p}/samples_per_s"] = steps * self.cfg.global_batch / (now - window.t)
        if self.peak:
            row[f"{p}/mfu"] = self.flops * steps / (now - window.t) / self.peak
        row[f"{p}/skipped_steps"] = self.skipped
        self.sink.log(self.step, row)
        if bar is not None:
            shown = ("loss", "exact_accuracy", "steps", "samples_per_s", "mfu")
            bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in row.items() if k.split("/")[1] in shown})
        return _Window(self.step, now)

    def _maybe_evaluate_and_save(self, stopped: str | None) -> dict | None:
        """After a step: the held-out evaluation when due (not past a deadline), then a checkpoint when due or
        at the last step. Returns the evaluation's metrics (None when none ran)."""
        c, out, metric = self.cfg, None, None
        eval_due = (c.eval_every and self.step % c.eval_every == 0) or self.step in self.eval_steps \
            or self.step == c.steps
        if self.eval_fn is not None and eval_due and stopped != "deadline":
            out = self.evaluate()
            metric = out.get("eval/pass@2")
            if metric is not None and (self.best_metric is None or metric > self.best_metric):
                self.best_metric = metric
        if self.step % c.ckpt_every == 0 or self.step == c.steps or stopped is not None:
            self.save(metric)
        return out

    def _stop_reason(self, stop: Stop | None, check_all: bool) -> str | None:
        """The stop condition, agreed by all ranks (rank 0 decides; under torchrun only at log steps, so
        that a per-step check costs no collective)."""
        if stop is None:
            return None
        if stop.steps is not None and self.step >= stop.steps:  # the same on every rank
            return "steps"
        if not self.rt.distributed:
            return stop.reason(self.step)
        if not check_all:
            return None
        box = [stop.reason(self.step) if self.rt.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def evaluate(self) -> dict:
        """The held-out evaluation (eval_fn) with the EMA weights on rank 0, logged; every rank gets its metrics."""
        out: dict = {}
        if self.rt.is_main:
            with ema_weights(self.model, self.ema):
                out = {f"eval/{k}": v for k, v in self.eval_fn(self.model).items()}
            self.sink.log(self.step, out)
            log.info("step %d eval: %s", self.step, out)
        if self.rt.distributed:
            box = [out]
            dist.broadcast_object_list(box, src=0)
            out = box[0]
        return out
