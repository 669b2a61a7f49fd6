"""Saving a training run's whole state into its checkpoints and resuming from the latest one (the folder layout
is pipeline/layout.py's): weights (LoRA adapters merged, and unmerged for resume), EMA, optimiser or
DeepSpeed engine state, each rank's ACT carry, sampler position, RNG and the loop's step and best metric, so
that a killed run continues bit-for-bit. A run folder resumes only the run it holds. Built by
pipeline/training/build.py over the parts it handed the Trainer (pipeline/training/train.py's `Checkpoints`); the
Trainer hands it its own state and takes back a `LoopState`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from pipeline.nn.act import Carry, carry_dtype, unwrap
from pipeline.checkpoint import (CheckpointError, Checkpointer, carry_file, deepspeed_dir, load_tensors, load_weights,
                                 lora_file, read_ema, read_train_state, save_tensors, stored_ids, write_model_files,
                                 write_train_state)
from pipeline.layout import Checkpoint
from pipeline.training.parallel import Parallel
from pipeline.runtime import Runtime
from pipeline.data.sampler import IndependentSampler, OfficialSampler
from pipeline.training.trainable import Trainables

log = logging.getLogger(__name__)


class LoopState(NamedTuple):
    """The Trainer's own state as a checkpoint holds it: optimiser steps taken, the ACT carry (None: every slot
    refills), best metric."""
    step: int = 0
    carry: Carry | None = None
    best_metric: float | None = None


class TrainCheckpoints:
    """One run's checkpoints as training state (train.py's `Checkpoints`): `save` on every rank, `resume()` at
    the start."""

    def __init__(self, ckpt: Checkpointer, cfg, config_yaml: str, rt: Runtime, *, model, sampler: OfficialSampler | IndependentSampler,
                 trained: Trainables, par: Parallel, task_ids: list[str], prefix: str):
        self.ckpt, self.cfg, self.config_yaml, self.rt = ckpt, cfg, config_yaml, rt
        self.model, self.sampler, self.trained, self.par = model, sampler, trained, par
        self.task_ids, self.prefix = task_ids, prefix

    def latest(self) -> Path | None:
        return self.ckpt.latest()

    def save(self, step: int, carry: Carry | None, best_metric: float | None,
             metric: float | None = None) -> Checkpoint | None:
        """Write a checkpoint of this step; returns it on rank 0 (None on the others)."""
        loop = LoopState(step, carry, best_metric)
        tmp = self.ckpt.begin(loop.step)
        if self.cfg.train.save_carry and loop.carry is not None:
            save_tensors({k: getattr(loop.carry, k) for k in Carry.__dataclass_fields__},
                         carry_file(tmp, self.rt.rank))
        if self.par.engine is not None:
            self.par.engine.save_checkpoint(*deepspeed_dir(tmp))
        if self.rt.is_main:
            self._write_main(tmp, loop)
        final = self.ckpt.commit(tmp, loop.step, {"metric": metric, "prefix": self.prefix}, metric)
        if final is None:
            return None
        return Checkpoint.saved(final, self.cfg, self.task_ids, self.ckpt.last_meta, self.sampler.ids)

    def _write_main(self, tmp: Path, loop: LoopState) -> None:
        """Rank 0's files: weights, EMA, LoRA adapters, config, task table, loop state and optimiser."""
        t, ema = self.trained, self.trained.ema
        raw = self.model.state_dict()
        ema_sd = ema.weights_for(self.model) if ema is not None else None
        if t.lora_scales is not None:  # the unmerged adapters, for an exact resume
            save_tensors({**raw, **{f"ema.{k}": v for k, v in (ema.shadow if ema else {}).items()}}, lora_file(tmp))
        write_model_files(tmp, model_state=t.inference_state(raw), config_yaml=self.config_yaml,
                          task_ids=self.task_ids, ids=self.sampler.ids,
                          ema_state=t.inference_state(ema_sd) if ema_sd is not None else None)
        state = {"step": loop.step, "sampler": self.sampler.state_dict(), "best_metric": loop.best_metric,
                 "world_size": self.rt.world_size}
        opt = self.par.opt
        write_train_state(tmp, state, opt.state_dict() if opt is not None and self.par.engine is None else None)

    def resume(self) -> LoopState | None:
        """Load the latest checkpoint into the parts (weights, EMA, optimiser or engine, sampler, RNG) and
        return the loop state to continue from; None when the run folder has none."""
        latest = self.ckpt.latest()
        if latest is None:
            return None
        self._check_same_run(latest)
        dev = self.rt.device
        state, optim_state = read_train_state(latest, dev)
        self._load_weights(latest)
        if self.par.engine is not None:
            self.par.engine.load_checkpoint(*deepspeed_dir(latest))
        elif self.par.opt is not None and optim_state is not None:
            self.par.opt.load_state_dict(optim_state)
        carry = None
        cf = carry_file(latest, self.rt.rank)
        if cf.exists() and state["world_size"] == self.rt.world_size:
            carry = Carry(**load_tensors(cf, dev))
            # in this run's carry dtype: it may resume on another device, or under another compute.carry
            carry.y, carry.z = (t.to(carry_dtype(unwrap(self.model), self.rt.dtype)) for t in (carry.y, carry.z))
        else:
            log.warning("resuming without the ACT carry (not saved, or world size changed): not bit-exact")
        self.sampler.load_state_dict(state["sampler"])
        log.info("resumed from %s at step %d", latest, state["step"])
        return LoopState(state["step"], carry, state["best_metric"])

    def _load_weights(self, latest: Path) -> None:
        """The model's raw weights and the EMA (LoRA runs: the unmerged adapters and their merged EMA)."""
        dev, ema = self.rt.device, self.trained.ema
        weights = load_weights(latest, use_ema=False, device=dev)
        if self.trained.lora_scales is not None:
            lora = load_tensors(lora_file(latest), dev)
            adapters = {k: v for k, v in lora.items() if not k.startswith("ema.")}
            weights = adapters | {"puzzle_emb": weights["puzzle_emb"]}
            if ema is not None:
                ema.load_state_dict({n: lora[f"ema.{n}"].float() for n in ema.shadow})
        elif ema is not None:
            ema_sd = read_ema(latest, dev)
            ema.load_state_dict({n: ema_sd[n].float() for n in ema.shadow})
        self.model.load_state_dict(weights)

    def _check_same_run(self, latest: Path) -> None:
        """A run folder resumes only the run it holds: the same tasks, id table, model and training mode
        (a TTT folder reused for other tasks would otherwise hand them another task's trained rows). The warm
        start's source is not compared: it is read only by a fresh run."""
        theirs = Checkpoint.open(latest)
        task_ids, ids, cfg = theirs.task_ids, stored_ids(theirs), theirs.config
        mine, run = self.sampler.ids, self.cfg
        differs = [what for what, same in (
            ("other tasks", list(task_ids) == list(self.task_ids)),
            ("another puzzle-id table", ids is None or (ids.name, ids.num_ids) == (mine.name, mine.num_ids)),
            ("another model config", cfg.model == run.model),  # compute: (crop...) may change
            *((f"train.{k}={getattr(cfg.train, k)!r}", getattr(cfg.train, k) == getattr(run.train, k))
              for k in ("trainable", "lora_rank", "optimizer"))) if not same]
        if differs:
            raise CheckpointError(f"{Path(run.run_dir)} holds a run of {', '.join(differs)}: resume it as it was, or "
                                  "use another run folder")
