"""What a run trains and how, from `train.trainable`: the whole trunk, the puzzle table alone, LoRA adapters, or
the table alone for the first `freeze_fraction` of the steps and then everything (the freeze schedule); the
trunk optimiser over that set (pipeline/training/optim.py build_optimizer) and the EMA kept for evaluation and export.
Built by pipeline/training/build.py after the warm start (the EMA averages from the warm weights) and before the
parallel wrapping (pipeline/training/parallel.py), then handed to the Trainer. The puzzle table, a buffer, is always
sparse sign-SGD's and in none of these."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.training.lora import MergedEMA, add_lora, lora_scales, merged_state
from pipeline.training.optim import EMA, OptimizerSet, build_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trainables:
    params: list[torch.nn.Parameter]
    """The trunk parameters that train (empty for trainable=embeddings)."""
    opt: torch.optim.Optimizer | OptimizerSet | None
    """Their optimiser (None when nothing in the trunk trains)."""
    ema: EMA | None
    freeze_steps: int
    """embeddings_then_all: optimiser steps 1..freeze_steps leave the trunk as it is (0 otherwise)."""
    lora_scales: dict[str, float] | None
    """LoRA runs: each adapted projection's alpha / rank (what merges the adapters into plain weights)."""

    def trunk_frozen(self, step: int) -> bool:
        """Whether optimiser step `step` (1-based) leaves the trunk as it is (the freeze schedule)."""
        return step <= self.freeze_steps

    def inference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain-TRM state dict of the model or its EMA (LoRA adapters merged into the weights)."""
        return state if self.lora_scales is None else merged_state(state, self.lora_scales)


def build_trainables(c, model: torch.nn.Module) -> Trainables:
    """Mark what trains in `model` (`c`: the run's TrainConfig) and build its optimiser and EMA."""
    scales = None
    if c.trainable == "embeddings":
        for p in model.parameters():
            p.requires_grad_(False)
    elif c.trainable == "lora":  # adapters replace the trainable set
        n = add_lora(model, c.lora_rank, c.lora_alpha)
        scales = lora_scales(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if scales is not None:
        log.info("LoRA rank %d on %d projections: %d trainable parameters", c.lora_rank, n,
                 sum(p.numel() for p in params))
    opt = build_optimizer(c, model, params) if params else None
    ema = None
    if c.ema and params:
        ema = MergedEMA(model, c.ema_decay) if scales is not None else EMA(model, c.ema_decay)
    freeze_steps = int(c.freeze_fraction * c.steps) if c.trainable == "embeddings_then_all" else 0
    return Trainables(params, opt, ema, freeze_steps, scales)
