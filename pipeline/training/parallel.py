"""How the model runs data-parallel and compiled: DDP (the puzzle table kept out of its broadcasts) or a DeepSpeed
ZeRO-1/2 engine (which takes over the optimiser), then torch.compile where the runtime compiles. Built by
pipeline/training/build.py after the trainable set (pipeline/training/trainable.py), handed to the Trainer."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.runtime import Runtime, compile_model, ensure_process_group
from pipeline.training.trainable import Trainables


@dataclass(frozen=True)
class Parallel:
    module: torch.nn.Module
    """What a training step calls: the model, or its DDP / DeepSpeed / compiled wrapper."""
    engine: object | None
    """The DeepSpeed engine (engine=deepspeed): it runs backward and the optimiser step, and saves its own files."""
    opt: object | None
    """The optimiser the loop steps: the trunk optimiser, or under DeepSpeed the engine's ZeRO optimiser over it."""


def wrap_model(model: torch.nn.Module, trained: Trainables, c, rt: Runtime) -> Parallel:
    """`model` wrapped for `c.engine` (`c`: the run's TrainConfig) on this runtime."""
    if c.engine == "deepspeed":
        return _deepspeed(model, trained, c, rt)
    module = model
    if rt.distributed and trained.params:
        # The puzzle table is updated identically on every rank; broadcasting it each step would cost
        # 2 GB of traffic at ARC size.
        module = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                     broadcast_buffers=False, find_unused_parameters=not model.cfg.halting)
    if rt.compiles(model.compute.compile):
        module = compile_model(module, model)
    return Parallel(module, None, trained.opt)


def _deepspeed(model: torch.nn.Module, trained: Trainables, c, rt: Runtime) -> Parallel:
    if rt.device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # optional (pyproject's `deepspeed` extra), and it reads DS_ACCELERATOR at import

    ensure_process_group(rt)
    ds_cfg = {"train_micro_batch_size_per_gpu": c.global_batch // rt.world_size, "gradient_accumulation_steps": 1,
              "train_batch_size": c.global_batch, "zero_optimization": {"stage": c.zero_stage},
              "zero_allow_untested_optimizer": True, "bf16": {"enabled": rt.dtype == torch.bfloat16},
              "gradient_clipping": c.grad_clip, "steps_per_print": 10**12, "wall_clock_breakdown": False}
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=trained.opt, config=ds_cfg,
                                             dist_init_required=False)
    return Parallel(engine, engine, opt)
