"""The one training loop, for pretraining and test-time training: they differ only in config and data.

Each optimiser step is one deep-supervision step of TRM over a persistent batch of ACT slots. The trunk
is trained by AdamATan2 (official or NVARC's variant), AdamW or Muon (+ AdamW for embeddings and heads), the
puzzle table by sparse
sign-SGD, an EMA copy is kept for evaluation. Data-parallel by DDP or a DeepSpeed ZeRO engine. Checkpoints hold everything a killed run
needs to continue bit-for-bit: weights, optimiser, EMA, ACT carry, sampler position and RNG (the folder
layout is pipeline/checkpoint.py's). `fit(stop)` ends at cfg.steps or earlier at a step boundary when a
`Stop` (step count, wall-clock deadline or a callable) says so, always leaving a complete checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.distributed as dist

from pipeline.act import IGNORE, Carry, empty_carry, supervision_step
from pipeline.checkpoint import (CheckpointError, Checkpointer, carry_file, deepspeed_dir, load_tensors, lora_file,
                                 read_ema, read_task_table, read_train_state, read_weights, save_tensors, warm_start,
                                 write_model_files, write_train_state)
from pipeline.metrics import NullSink, RunSink, plot_curves
from pipeline.optim import EMA, AdamATan2, AdamAtan2Pytorch, lr_at, muon_optimizer, sign_sgd_rows
from pipeline.runtime import compile_model, ensure_process_group

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 722_098
    """Optimiser steps; each is one supervision step (TRM ARC-AGI-2: 722k over ~3 days on 4xH100)."""
    global_batch: int = 768
    """ACT slots across all ranks (192 per GPU on 4 GPUs)."""
    optimizer: Literal["adam_atan2", "adam_atan2_pytorch", "adamw", "muon"] = "adam_atan2"
    """Trunk optimiser: `adam_atan2` (official TRM), `adam_atan2_pytorch` (NVARC's TRM: lucidrains'
    adam-atan2-pytorch 0.2.4, pipeline/optim.py AdamAtan2Pytorch; configs/ttt_nvarc.yaml), `adamw`, or `muon`
    (URM's choice for ARC-AGI-2: torch.optim.Muon on the trunk's 2-D matrices, AdamW on embeddings and heads;
    pipeline/optim.py muon_optimizer; in TTT a departure from the recipes, A/B row "Muon in TTT" in
    BENCHMARKS.md). The puzzle table is always sparse sign-SGD."""
    lr: float = 1e-4
    muon_lr: float = 0.0
    """optimizer=muon: the Muon matrices' lr, on AdamW's scale (its update is scaled to AdamW's RMS);
    0 = train.lr, as URM (UbiquantAI/URM pretrain.py: 1e-4 for both groups). The schedule keeps the ratio."""
    muon_momentum: float = 0.95
    """optimizer=muon: Nesterov momentum of Muon (URM and Keller Jordan's Muon: 0.95)."""
    lr_warmup: int = 2000
    """Linear warm-up steps. As the official code (which counts the step before computing its lr), optimiser
    step k (1-based) runs at lr * min(k / lr_warmup, 1): the first at lr / lr_warmup, never at 0."""
    lr_min_ratio: float = 1.0
    """Cosine decay floor as a fraction of lr; 1.0 = constant after warm-up (TRM)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = True
    ema_decay: float = 0.999
    grad_clip: float = 0.0
    """Clip the trunk gradient norm to this value; 0 = off (TRM)."""
    trainable: Literal["all", "embeddings", "lora", "embeddings_then_all"] = "all"
    """What trains: `all` (full fine-tuning), `embeddings` (puzzle table only, the trunk frozen), `lora`
    (low-rank adapters on attention and MLP projections + the puzzle table; saved merged into the weights, the
    EMA being that of the merged weights; A/B row "LoRA" in BENCHMARKS.md), `embeddings_then_all` (McGovern's
    recipe: the table alone for the first `freeze_fraction` of the steps, then everything)."""
    freeze_fraction: float = 0.25
    """embeddings_then_all: fraction of the steps with the trunk frozen (McGovern's paper: one quarter)."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (1 or 2) when engine = deepspeed."""
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto = bfloat16 autocast on GPU, float32 on CPU."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model step; auto = on for CUDA, off on CPU."""
    log_every: int = 50
    eval_every: int = 5000
    """Held-out evaluation interval in steps (0 = only at the end)."""
    ckpt_every: int = 5000
    keep_last: int = 2
    save_carry: bool = True
    """Save the ACT carry with each checkpoint (needed for an exact resume; ~0.7 GB per rank at ARC size)."""
    init_from: str = ""
    """Warm start: weights of this checkpoint (run folder or checkpoint folder), used only when the run
    folder has no checkpoint of its own (resume wins). A different puzzle table size re-initialises it
    to the mean row, as TRM does for new tasks."""
    progress: bool = True
    wandb_project: str = ""
    """Also log the metrics to wandb, offline (RUN/wandb; `wandb sync` uploads them), under this project; empty = off.
    wandb is optional: build_run refuses a run that asks for it without the package. TTT runs start with it off."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch < 1:
            raise ValueError("train.steps and train.global_batch must be >= 1")
        if len(self.betas) != 2:
            raise ValueError("train.betas must be two numbers")
        if self.zero_stage not in (1, 2):
            raise ValueError("train.zero_stage must be 1 or 2")
        if self.keep_last < 1:
            raise ValueError("train.keep_last must be >= 1")
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise ValueError("train.freeze_fraction must be in [0, 1)")
        if self.lora_rank < 1:
            raise ValueError("train.lora_rank must be >= 1")
        if self.optimizer == "muon" and self.engine == "deepspeed":
            raise ValueError("train.optimizer=muon runs on the DDP engine only (DeepSpeed ZeRO partitions the "
                             "matrices Muon orthogonalises)")
        if self.optimizer == "muon" and (self.lr <= 0 or self.muon_lr < 0):
            raise ValueError("train.optimizer=muon needs train.lr > 0 (train.muon_lr, >= 0, is kept relative to it)")


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


def _weights_config(model_cfg):
    """The model config less what changes only the compute (model.crop, crop_groups): what a resume compares,
    so that a run started on the full canvas continues under a preset that crops."""
    return replace(model_cfg, crop=False, crop_groups=1)


class Trainer:
    """Owns model, optimisers, EMA, sampler and carry of one run; `fit()` runs to cfg.train.steps (or a
    `Stop`) with automatic resume and checkpoints. Built by pipeline.build.build_run."""

    def __init__(self, cfg, rt, model, sampler, task_ids: list[str], eval_fn=None, init_rows=None,
                 prefix: str = "train"):
        from pipeline.config import dump_config  # config imports this module

        c = cfg.train
        self.run_cfg, self.cfg, self.rt, self.model, self.sampler = cfg, c, rt, model, sampler
        self.run_dir, self.seed, self.prefix = Path(cfg.run_dir), cfg.seed, prefix
        self.config_yaml, self.task_ids, self.eval_fn, self.init_rows = dump_config(cfg), task_ids, eval_fn, init_rows
        self.local_batch = c.global_batch // rt.world_size
        self.lora_scales = None
        if c.trainable == "embeddings":
            for p in model.parameters():
                p.requires_grad_(False)
        self.freeze_steps = int(c.freeze_fraction * c.steps) if c.trainable == "embeddings_then_all" else 0
        if c.engine == "deepspeed" and c.trainable != "all":
            raise ValueError(f"train.trainable={c.trainable} runs on the DDP engine only")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = self._build_optimizer() if self.params else None
        self.ema = EMA(model, c.ema_decay) if c.ema and self.params else None
        barrier = (lambda: dist.barrier()) if rt.distributed else (lambda: None)
        self.ckpt = Checkpointer(self.run_dir, c.keep_last, rt.rank, barrier)
        self.step, self.carry, self.best_metric = 0, None, None
        self.sink = RunSink(self.run_dir, c.wandb_project, asdict(cfg)) if rt.is_main else NullSink()

    def _build_optimizer(self):
        c = self.cfg
        if c.optimizer == "muon":
            return muon_optimizer(self.model, c.lr, c.muon_lr or c.lr, c.muon_momentum,
                                  c.betas, c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if c.optimizer == "adam_atan2_pytorch":
            return AdamAtan2Pytorch(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        return AdamATan2(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

    def _add_lora(self) -> None:
        """LoRA mode: adapters replace the trainable set (after the warm start, before wrapping)."""
        from pipeline.lora import MergedEMA, add_lora, lora_scales

        n = add_lora(self.model, self.cfg.lora_rank, self.cfg.lora_alpha)
        self.lora_scales = lora_scales(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = self._build_optimizer()
        self.ema = MergedEMA(self.model, self.cfg.ema_decay) if self.cfg.ema else None
        log.info("LoRA rank %d on %d projections: %d trainable parameters", self.cfg.lora_rank, n,
                 sum(p.numel() for p in self.params))

    def _wrap(self):
        c, rt, model = self.cfg, self.rt, self.model
        self.engine = None
        if c.engine == "deepspeed":
            return self._wrap_deepspeed()
        if rt.distributed and self.params:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # The puzzle table is updated identically on every rank; broadcasting it each step would cost
            # 2 GB of traffic at ARC size.
            model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                        broadcast_buffers=False, find_unused_parameters=not model.cfg.halting)
        if rt.compiles(c.compile):
            model = compile_model(model, self.model)
        return model

    def _wrap_deepspeed(self):
        if self.rt.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        ensure_process_group(self.rt)
        c = self.cfg
        ds_cfg = {"train_micro_batch_size_per_gpu": self.local_batch, "gradient_accumulation_steps": 1,
                  "train_batch_size": c.global_batch, "zero_optimization": {"stage": c.zero_stage},
                  "zero_allow_untested_optimizer": True, "bf16": {"enabled": self.rt.dtype == torch.bfloat16},
                  "gradient_clipping": c.grad_clip, "steps_per_print": 10**12, "wall_clock_breakdown": False}
        engine, opt, _, _ = deepspeed.initialize(model=self.model, optimizer=self.opt, config=ds_cfg,
                                                 dist_init_required=False)
        self.engine, self.opt = engine, opt
        return engine

    # -- checkpoints ------------------------------------------------------------------------------------
    def _inference_state(self, state: dict) -> dict:
        """A plain-TRM state dict (LoRA adapters merged) of the model or its EMA."""
        if self.lora_scales is None:
            return state
        from pipeline.lora import merged_state

        return merged_state(state, self.lora_scales)

    def save(self, metric: float | None = None) -> None:
        tmp = self.ckpt.begin(self.step)
        if self.cfg.save_carry and self.carry is not None:
            save_tensors({k: getattr(self.carry, k) for k in Carry.__dataclass_fields__}, carry_file(tmp, self.rt.rank))
        if self.engine is not None:
            self.engine.save_checkpoint(*deepspeed_dir(tmp))
        if self.rt.is_main:
            raw = self.model.state_dict()
            ema = self.ema.weights_for(self.model) if self.ema is not None else None
            if self.lora_scales is not None:  # the unmerged adapters, for an exact resume
                save_tensors({**raw, **{f"ema.{k}": v for k, v in (self.ema.shadow if self.ema else {}).items()}},
                             lora_file(tmp))
            write_model_files(tmp, model_state=self._inference_state(raw), config_yaml=self.config_yaml,
                              task_ids=self.task_ids, ids=self.sampler.ids,
                              ema_state=self._inference_state(ema) if ema is not None else None)
            state = {"step": self.step, "sampler": self.sampler.state_dict(), "best_metric": self.best_metric,
                     "world_size": self.rt.world_size}
            write_train_state(tmp, state, self.opt.state_dict() if self.opt is not None and self.engine is None else None)
        self.ckpt.commit(tmp, self.step, {"metric": metric, "prefix": self.prefix}, metric)

    def _check_same_run(self, latest: Path) -> None:
        """A run folder resumes only the run it holds: the same tasks, id table, model and training mode
        (a TTT folder reused for other tasks would otherwise hand them another task's trained rows). The warm
        start's source is not compared: it is read only by a fresh run."""
        task_ids, ids, cfg = read_task_table(latest)
        mine = self.sampler.ids
        differs = [what for what, same in (
            ("other tasks", list(task_ids) == list(self.task_ids)),
            ("another puzzle-id table", ids is None or (ids.name, ids.num_ids) == (mine.name, mine.num_ids)),
            ("another model config", _weights_config(cfg.model) == _weights_config(self.run_cfg.model)),
            *((f"train.{k}={getattr(cfg.train, k)!r}", getattr(cfg.train, k) == getattr(self.cfg, k))
              for k in ("trainable", "lora_rank", "optimizer"))) if not same]
        if differs:
            raise CheckpointError(f"{self.run_dir} holds a run of {', '.join(differs)}: resume it as it was, or "
                                  "use another run folder")

    def maybe_resume(self) -> bool:
        latest = self.ckpt.latest()
        if latest is None:
            return False
        self._check_same_run(latest)
        dev = self.rt.device
        state, optim_state = read_train_state(latest, dev)
        weights = read_weights(latest, use_ema=False, device=dev)
        if self.lora_scales is not None:
            lora = load_tensors(lora_file(latest), dev)
            weights = {k: v for k, v in lora.items() if not k.startswith("ema.")} | {"puzzle_emb": weights["puzzle_emb"]}
            if self.ema is not None:
                self.ema.load_state_dict({n: lora[f"ema.{n}"].float() for n in self.ema.shadow})
        elif self.ema is not None:
            ema_sd = read_ema(latest, dev)
            self.ema.load_state_dict({n: ema_sd[n].float() for n in self.ema.shadow})
        self.model.load_state_dict(weights)
        del weights
        if self.engine is not None:
            self.engine.load_checkpoint(*deepspeed_dir(latest))
        elif self.opt is not None and optim_state is not None:
            self.opt.load_state_dict(optim_state)
        cf = carry_file(latest, self.rt.rank)
        if cf.exists() and state["world_size"] == self.rt.world_size:
            self.carry = Carry(**load_tensors(cf, dev))
        else:
            log.warning("resuming without the ACT carry (not saved, or world size changed): not bit-exact")
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.best_metric = state["step"], state["best_metric"]
        log.info("resumed from %s at step %d", latest, self.step)
        return True

    # -- loop -----------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Warm-start from cfg.init_from when the run folder has no checkpoint of its own (resume wins), wrap
        the model (DDP / DeepSpeed / compile) and resume from the run folder's latest checkpoint. The warm
        start comes before wrapping: DeepSpeed copies the weights into its optimiser at wrap time."""
        if self.cfg.init_from and self.ckpt.latest() is None:
            warm_start(self.model, self.cfg.init_from, self.init_rows)
            log.info("warm start from %s", self.cfg.init_from)
            if self.ema is not None:  # average from the warm weights, not the random init
                self.ema = EMA(self.model, self.cfg.ema_decay)
        if self.cfg.trainable == "lora":
            self._add_lora()
        self.wrapped = self._wrap()
        self.maybe_resume()
        self.autocast = self.rt.autocast()
        self.skipped = 0

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step = one deep-supervision step on the ACT slots; returns detached metric sums."""
        c, rt, raw = self.cfg, self.rt, self.model
        batch = to_torch(self.sampler.batch_at(self.step), rt.device)
        self.sampler.step = self.step + 1
        if self.carry is None:
            self.carry = empty_carry(raw, batch, torch.float32)
        lr_mult = self._lr_mult(self.step + 1)  # this is optimiser step self.step + 1 (the official numbering)
        held = {}

        def puzzle_vecs(ids):
            # A leaf copy of the batch's rows: its gradient drives the sparse sign-SGD update.
            v = raw.puzzle_emb[ids].detach().clone().requires_grad_(True)
            held["v"], held["ids"] = v, ids
            return v

        min_steps = exploration_min_steps(self.seed, self.step, c.global_batch, rt.rank, rt.world_size,
                                          raw.cfg.halt_exploration_prob, raw.cfg.halt_max_steps, rt.device)
        with self.autocast:
            carry, loss, metrics, _ = supervision_step(self.wrapped, self.carry, batch, puzzle_vecs, True, min_steps)
        loss = loss / self.local_batch
        metrics["loss_sum"] = loss.detach() * self.local_batch
        self.carry, self.step = carry, self.step + 1
        if self.engine is not None:
            # DeepSpeed partitions gradients, so check the loss (all ranks agree) before its backward.
            if not self._all_finite(loss):
                return self._skip(metrics, "loss")
            self.engine.backward(loss)
        else:
            loss.backward()
            if not self._all_finite(self._grad_norm(), held["v"].grad):  # the one sync of a step
                self._zero_grad()
                return self._skip(metrics, "gradient")
        self._optimizer_step(c.lr * lr_mult)
        if held["v"].grad is not None:
            sign_sgd_rows(raw.puzzle_emb, held["ids"], held["v"].grad.float() / rt.world_size,
                          c.puzzle_emb_lr * lr_mult, c.puzzle_emb_weight_decay, rt.distributed)
        if self.ema is not None:
            self.ema.update(raw)
        return metrics

    def _lr_mult(self, step: int) -> float:
        """The schedule's factor for optimiser step `step` (1-based: the first step is step 1)."""
        c = self.cfg
        return lr_at(step, 1.0, c.lr_warmup, c.steps, c.lr_min_ratio)

    def _skip(self, metrics: dict, what: str) -> dict:
        self.skipped += 1
        log.warning("step %d: non-finite %s, step skipped", self.step - 1, what)
        return metrics

    def fit(self, stop: Stop | None = None) -> dict:
        """Train to cfg.steps, or until `stop` says so at a step boundary; either way the run ends with a
        complete checkpoint at its last step. Returns the step, why it stopped and the last evaluation."""
        c, rt = self.cfg, self.rt
        self.prepare()
        flops, peak = self.model.flops_per_step(self.local_batch), peak_flops(rt.device)
        bar = None
        if rt.is_main and c.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=self.prefix, dynamic_ncols=True, mininterval=1.0)
        acc: dict[str, torch.Tensor] = {}
        t_last, n_last, last_eval, reason = time.perf_counter(), self.step, {}, None
        stopped = self._stop_reason(stop, check_all=True) if self.step < c.steps else None
        while self.step < c.steps and stopped is None:
            for k, val in self.train_step().items():
                acc[k] = acc.get(k, 0.0) + val.detach().double()  # stays on the device: no sync per step
            at_log = self.step % c.log_every == 0 or self.step == c.steps
            if at_log:
                rt.synchronize()
                now = time.perf_counter()
                row = self._reduce_metrics(acc, c.lr * self._lr_mult(self.step),  # the last step's lr
                                           self.step - n_last)
                row[f"{self.prefix}/samples_per_s"] = (self.step - n_last) * c.global_batch / (now - t_last)
                if peak:
                    row[f"{self.prefix}/mfu"] = flops * (self.step - n_last) / (now - t_last) / peak
                row[f"{self.prefix}/skipped_steps"] = self.skipped
                self.sink.log(self.step, row)
                if bar is not None:
                    shown = ("loss", "exact_accuracy", "steps", "samples_per_s", "mfu")
                    bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in row.items() if k.split("/")[1] in shown})
                acc, t_last, n_last = {}, now, self.step
            if bar is not None:
                bar.update(1)
            stopped = self._stop_reason(stop, check_all=at_log)
            is_last = self.step == c.steps or stopped is not None
            metric = None
            eval_due = (c.eval_every and self.step % c.eval_every == 0) or self.step == c.steps
            if self.eval_fn is not None and eval_due and stopped != "deadline":
                last_eval = self._evaluate()
                metric = last_eval.get("eval/pass@2")
                if metric is not None and (self.best_metric is None or metric > self.best_metric):
                    self.best_metric = metric
            if self.step % c.ckpt_every == 0 or is_last:
                self.save(metric)
        if self.ckpt.latest() is None:  # stopped before its first step: the warm start is the result
            self.save()
        reason = stopped or ("steps" if self.step >= c.steps else None)
        if bar is not None:
            bar.close()
        self.sink.close()
        if rt.is_main:
            plot_curves(self.run_dir, self.prefix)
        return {"step": self.step, "stopped": reason, "skipped_steps": self.skipped, **last_eval}

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

    def _evaluate(self) -> dict:
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

    def _all_finite(self, *tensors: torch.Tensor | None) -> bool:
        """Whether every tensor is finite on every rank (so that all ranks skip a step together)."""
        ok = torch.ones((), device=self.rt.device)
        for t in tensors:
            if t is not None:
                ok = ok * torch.isfinite(t.detach()).all().to(ok.device)
        if self.rt.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

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

    def _optimizer_step(self, lr: float) -> None:
        if self.opt is None:
            return
        if self.step <= self.freeze_steps:  # embeddings_then_all: the trunk waits (its moments stay empty)
            self._zero_grad()
            return
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # optimizer=muon: the Muon group's muon_lr / lr
        if self.engine is not None:
            self.engine.step()
        else:
            self.opt.step()
            self._zero_grad()

    def _reduce_metrics(self, acc: dict, lr: float, steps: int) -> dict:
        keys = sorted(acc)
        t = torch.stack([acc[k].to(self.rt.device) for k in keys])
        if self.rt.distributed:
            dist.all_reduce(t)
        s = dict(zip(keys, t.tolist()))  # the one sync of the log interval
        count = max(s.get("count", 0.0), 1.0)
        samples = max(steps * self.cfg.global_batch, 1)
        p = self.prefix
        row = {f"{p}/loss": s["loss_sum"] / samples, f"{p}/lr": lr, f"{p}/count": s.get("count", 0.0)}
        for k in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
            row[f"{p}/{k}"] = s.get(k, 0.0) / count
        for k in ("lm_loss", "q_halt_loss"):
            row[f"{p}/{k}"] = s.get(k, 0.0) / samples
        return row
