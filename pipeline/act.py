"""Deep supervision with adaptive halting (ACT), the loss, and adaptive-halting inference.

Training follows TRM: a batch of slots carries (y, z) across optimiser steps. Every call first refills the
slots that halted last time with the newly fetched batch's rows (resetting their state), runs one
supervision step, and halts slots at N_sup or when the halting logit is positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.model import TRM

IGNORE = -100


def unwrap(model) -> TRM:
    """The raw TRM inside DDP / DeepSpeed / torch.compile wrappers."""
    while not isinstance(model, TRM):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


@dataclass
class Carry:
    y: torch.Tensor
    z: torch.Tensor
    steps: torch.Tensor
    halted: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor
    puzzle_ids: torch.Tensor


def empty_carry(model: TRM, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> Carry:
    """A carry whose every slot is halted, so the first step takes all rows of `batch`."""
    B = batch["inputs"].shape[0]
    y, z = model.initial_state(B, dtype)
    dev = batch["inputs"].device
    return Carry(y, z, torch.zeros(B, dtype=torch.int32, device=dev), torch.ones(B, dtype=torch.bool, device=dev),
                 torch.zeros_like(batch["inputs"]), torch.full_like(batch["labels"], IGNORE),
                 torch.zeros_like(batch["puzzle_ids"]))


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def token_ce(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token cross-entropy (0 where ignored); stablemax in float64 as TRM."""
    mask = labels != IGNORE
    safe = torch.where(mask, labels, 0).long()
    if kind == "stablemax":
        logp = log_stablemax(logits.double(), dim=-1)
        return -torch.where(mask, logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1), 0)
    ce = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view(labels.shape)
    return torch.where(mask, ce, 0)


def refill(model: TRM, carry: Carry, batch: dict[str, torch.Tensor]) -> Carry:
    h = carry.halted
    y, z = model.reset_state(carry.y, carry.z, h)
    pick = lambda new, old: torch.where(h.view(-1, *[1] * (new.dim() - 1)), new, old)  # noqa: E731
    return Carry(y, z, torch.where(h, 0, carry.steps), h, pick(batch["inputs"], carry.inputs),
                 pick(batch["labels"], carry.labels), pick(batch["puzzle_ids"], carry.puzzle_ids))


def supervision_step(model, carry: Carry, batch: dict[str, torch.Tensor], puzzle_vecs_fn,
                     training: bool = True, min_steps: torch.Tensor | None = None):
    """Refill halted slots from `batch`, run one step, compute the loss (summed over the batch, as TRM;
    divide by the batch before backward) and metrics over the slots that halted now.

    `model` may be wrapped (DDP, DeepSpeed, compiled); `raw` config/state come from `unwrap(model)`.
    `min_steps`: exploration draws (slot may not halt before); None draws them here from torch's RNG.

    `puzzle_vecs_fn(ids)` returns the puzzle vectors for the slots (the sparse optimiser hooks in there).
    Returns (new carry, loss, metrics dict of detached sums, predictions)."""
    raw = unwrap(model)
    cfg = raw.cfg
    carry = refill(raw, carry, batch)
    y, z, logits, q_halt, _ = model(carry.inputs, puzzle_vecs_fn(carry.puzzle_ids), carry.y, carry.z)
    labels = carry.labels
    with torch.no_grad():
        steps = carry.steps + 1
        halted = steps >= cfg.halt_max_steps
        if training and cfg.halting and cfg.halt_max_steps > 1:
            halted = halted | (q_halt > 0)
            if min_steps is None:
                explore = torch.rand_like(q_halt) < cfg.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, 2, cfg.halt_max_steps + 1)
            halted = halted & (steps >= min_steps)
        mask = labels != IGNORE
        counts = mask.sum(-1)
        preds = logits.argmax(-1)
        correct = mask & (preds == labels)
        seq_correct = correct.sum(-1) == counts
        valid = halted & (counts > 0)
    lm_loss = (token_ce(logits, labels, cfg.loss) / counts.clamp_min(1).unsqueeze(-1)).sum()
    loss = lm_loss
    q_loss = torch.zeros((), device=lm_loss.device)
    if cfg.halting:
        q_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
        loss = lm_loss + 0.5 * q_loss
    with torch.no_grad():
        metrics = {
            "count": valid.sum(),
            "accuracy": torch.where(valid, correct.sum(-1) / counts.clamp_min(1), 0).sum(),
            "exact_accuracy": (valid & seq_correct).sum(),
            "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_correct)).sum(),
            "steps": torch.where(valid, steps, 0).sum(),
            "lm_loss": lm_loss.detach(),
            "q_halt_loss": q_loss.detach(),
        }
    new = Carry(y, z, steps, halted, carry.inputs, labels, carry.puzzle_ids)
    return new, loss, metrics, preds


@torch.inference_mode()
def predict_batch(model: TRM, inputs: torch.Tensor, puzzle_vecs: torch.Tensor | None, max_steps: int | None = None,
                  adaptive: bool = True, dtype: torch.dtype = torch.float32):
    """Run supervision steps until each sample halts (q_halt > 0, or max_steps); halted samples leave the
    batch so compute goes to live ones. `adaptive=False` always runs max_steps (official evaluation).

    Returns argmax predictions [B, seq_len] uint8, halting probability [B] fp32 and steps used [B]."""
    max_steps = max_steps or model.cfg.halt_max_steps
    B = inputs.shape[0]
    dev = inputs.device
    preds = torch.zeros(B, inputs.shape[1], dtype=torch.uint8, device=dev)
    conf = torch.zeros(B, dtype=torch.float32, device=dev)
    steps = torch.zeros(B, dtype=torch.int32, device=dev)
    raw = unwrap(model)
    y, z = raw.initial_state(B, dtype)
    live = torch.arange(B, device=dev)
    for step in range(1, max_steps + 1):
        y, z, logits, q_halt, _ = model(inputs, puzzle_vecs, y, z)
        if step == max_steps:
            done = torch.ones_like(q_halt, dtype=torch.bool)
        elif adaptive and raw.cfg.halting:
            done = q_halt > 0
        else:
            continue
        if done.any():
            idx = live[done]
            preds[idx] = logits[done].argmax(-1).to(torch.uint8)
            conf[idx] = torch.sigmoid(q_halt[done].float())
            steps[idx] = step
            keep = ~done
            live, y, z = live[keep], y[keep], z[keep]
            inputs = inputs[keep]
            puzzle_vecs = puzzle_vecs[keep] if puzzle_vecs is not None else None
            if live.numel() == 0:
                break
    return preds, conf, steps
