"""The one training loop, for pretraining and (later) test-time training: they differ only in config.

Each optimiser step is one deep-supervision step of TRM over a persistent batch of ACT slots. The trunk
is trained by AdamATan2 or AdamW, the puzzle table by sparse sign-SGD, an EMA copy is kept for
evaluation. Data-parallel by DDP or a DeepSpeed ZeRO engine. Checkpoints hold everything a killed run
needs to continue bit-for-bit: weights, optimiser, EMA, ACT carry, sampler position and RNG.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from pipeline.act import IGNORE, Carry, empty_carry, supervision_step
from pipeline.checkpoint import Checkpointer, load_tensors, save_arrays, save_tensors, warm_start
from pipeline.metrics import NullSink, RunSink, plot_curves
from pipeline.optim import EMA, AdamATan2, lr_at, sign_sgd_rows
from pipeline.runtime import ensure_process_group

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 722_098
    """Optimiser steps; each is one supervision step (TRM ARC-AGI-2: 722k over ~3 days on 4xH100)."""
    global_batch: int = 768
    """ACT slots across all ranks (192 per GPU on 4 GPUs)."""
    optimizer: Literal["adam_atan2", "adamw"] = "adam_atan2"
    lr: float = 1e-4
    lr_warmup: int = 2000
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
    trainable: Literal["all", "embeddings"] = "all"
    """`embeddings`: train only the puzzle table (the trunk frozen)."""
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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch < 1:
            raise ValueError("train.steps and train.global_batch must be >= 1")
        if len(self.betas) != 2:
            raise ValueError("train.betas must be two numbers")
        if self.zero_stage not in (1, 2):
            raise ValueError("train.zero_stage must be 1 or 2")
        if self.keep_last < 1:
            raise ValueError("train.keep_last must be >= 1")


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
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in ema.shadow}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in ema.shadow:
                p.copy_(ema.shadow[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])


class Trainer:
    """Owns model, optimisers, EMA, sampler and carry; `fit()` runs to cfg.steps with resume and checkpoints."""

    def __init__(self, model, sampler, train_cfg: TrainConfig, rt, run_dir: Path, seed: int,
                 config_yaml: str, task_ids: list[str], eval_fn=None, prefix: str = "train"):
        self.model, self.sampler, self.cfg, self.rt = model, sampler, train_cfg, rt
        self.run_dir, self.seed, self.prefix = Path(run_dir), seed, prefix
        self.config_yaml, self.task_ids, self.eval_fn = config_yaml, task_ids, eval_fn
        self.local_batch = train_cfg.global_batch // rt.world_size
        if train_cfg.trainable == "embeddings":
            for p in model.parameters():
                p.requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = self._build_optimizer() if self.params else None
        self.ema = EMA(model, train_cfg.ema_decay) if train_cfg.ema and self.params else None
        barrier = (lambda: dist.barrier()) if rt.distributed else (lambda: None)
        self.ckpt = Checkpointer(self.run_dir, train_cfg.keep_last, rt.rank, barrier)
        self.step, self.carry, self.best_metric = 0, None, None
        self.sink = RunSink(self.run_dir) if rt.is_main else NullSink()

    def _build_optimizer(self):
        c = self.cfg
        if c.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        return AdamATan2(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

    # -- wrapping -----------------------------------------------------------------------------------
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
        if c.compile is True or (c.compile == "auto" and rt.device.type == "cuda"):
            model = torch.compile(model)
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
    def save(self, metric: float | None = None) -> None:
        tmp = self.ckpt.begin(self.step)
        if self.cfg.save_carry and self.carry is not None:
            save_tensors({k: getattr(self.carry, k) for k in Carry.__dataclass_fields__},
                         tmp / f"carry_rank{self.rt.rank}.safetensors")
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp), tag="deepspeed")
        if self.rt.is_main:
            save_tensors(self.model.state_dict(), tmp / "model.safetensors")
            if self.ema is not None:
                save_tensors(self.ema.weights_for(self.model), tmp / "ema.safetensors")
            if self.opt is not None and self.engine is None:
                torch.save(self.opt.state_dict(), tmp / "optim.pt")
            state = {"step": self.step, "sampler": self.sampler.state_dict(), "best_metric": self.best_metric,
                     "world_size": self.rt.world_size,
                     "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
            (tmp / "state.json").write_text(json.dumps(state))
            (tmp / "config.yaml").write_text(self.config_yaml)
            ids = self.sampler.ids
            (tmp / "tasks.json").write_text(json.dumps({"task_ids": self.task_ids, "puzzle_ids": ids.name}))
            save_arrays(ids.state_dict(), tmp / "puzzle_ids.safetensors")
        self.ckpt.commit(tmp, self.step, {"metric": metric, "prefix": self.prefix}, metric)

    def maybe_resume(self) -> bool:
        latest = self.ckpt.latest()
        if latest is None:
            return False
        state = json.loads((latest / "state.json").read_text())
        dev = self.rt.device
        self.model.load_state_dict(load_tensors(latest / "model.safetensors", dev))
        if self.ema is not None:
            ema_sd = load_tensors(latest / "ema.safetensors", dev)
            self.ema.load_state_dict({n: ema_sd[n].float() for n in self.ema.shadow})
        if self.engine is not None:
            self.engine.load_checkpoint(str(latest), tag="deepspeed")
        elif self.opt is not None:
            self.opt.load_state_dict(torch.load(latest / "optim.pt", map_location=dev, weights_only=True))
        carry_file = latest / f"carry_rank{self.rt.rank}.safetensors"
        if carry_file.exists() and state["world_size"] == self.rt.world_size:
            self.carry = Carry(**load_tensors(carry_file, dev))
        else:
            log.warning("resuming without the ACT carry (not saved, or world size changed): not bit-exact")
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.best_metric = state["step"], state["best_metric"]
        torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch_rng"]), dtype=np.uint8).copy()))
        log.info("resumed from %s at step %d", latest, self.step)
        return True

    # -- loop -----------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Warm-start from cfg.init_from when the run folder has no checkpoint of its own (resume wins), wrap
        the model (DDP / DeepSpeed / compile) and resume from the run folder's latest checkpoint. The warm
        start comes before wrapping: DeepSpeed copies the weights into its optimiser at wrap time."""
        if self.cfg.init_from and self.ckpt.latest() is None:
            warm_start(self.model, self.cfg.init_from)
            log.info("warm start from %s", self.cfg.init_from)
            if self.ema is not None:  # average from the warm weights, not the random init
                self.ema = EMA(self.model, self.cfg.ema_decay)
        self.wrapped = self._wrap()
        self.maybe_resume()
        rt = self.rt
        self.autocast = torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.dtype != torch.float32)
        self.skipped = 0

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step = one deep-supervision step on the ACT slots; returns detached metric sums."""
        c, rt, raw = self.cfg, self.rt, self.model
        batch = to_torch(self.sampler.batch_at(self.step), rt.device)
        self.sampler.step = self.step + 1
        if self.carry is None:
            self.carry = empty_carry(raw, batch, torch.float32)
        lr_mult = lr_at(self.step, 1.0, c.lr_warmup, c.steps, c.lr_min_ratio)
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

    def _skip(self, metrics: dict, what: str) -> dict:
        self.skipped += 1
        log.warning("step %d: non-finite %s, step skipped", self.step - 1, what)
        return metrics

    def fit(self) -> dict:
        c, rt = self.cfg, self.rt
        self.prepare()
        flops, peak = self.model.flops_per_step(self.local_batch), peak_flops(rt.device)
        bar = None
        if rt.is_main and c.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=self.prefix, dynamic_ncols=True, mininterval=1.0)
        acc: dict[str, torch.Tensor] = {}
        t_last, n_last, last_eval = time.perf_counter(), self.step, {}
        while self.step < c.steps:
            for k, val in self.train_step().items():
                acc[k] = acc.get(k, 0.0) + val.detach().double()  # stays on the device: no sync per step
            if self.step % c.log_every == 0 or self.step == c.steps:
                if rt.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                row = self._reduce_metrics(acc, c.lr * lr_at(self.step, 1.0, c.lr_warmup, c.steps, c.lr_min_ratio),
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
            is_last = self.step == c.steps
            metric = None
            if self.eval_fn is not None and ((c.eval_every and self.step % c.eval_every == 0) or is_last):
                last_eval = self._evaluate()
                metric = last_eval.get("eval/pass@2")
                if metric is not None and (self.best_metric is None or metric > self.best_metric):
                    self.best_metric = metric
            if self.step % c.ckpt_every == 0 or is_last:
                self.save(metric)
        if bar is not None:
            bar.close()
        self.sink.close()
        if rt.is_main:
            plot_curves(self.run_dir, self.prefix)
        return {"step": self.step, "skipped_steps": self.skipped, **last_eval}

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
        for g in self.opt.param_groups:
            g["lr"] = lr
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
