"""Deep supervision with adaptive halting (ACT), the loss, and streaming inference (all N_sup steps, as the
official evaluation, or adaptive halting on request).

Training follows TRM: a batch of slots carries (y, z) across optimiser steps. Every call first refills the
slots that halted last time with the newly fetched batch's rows (resetting their state), runs one
supervision step, and halts slots at N_sup or when the halting logit is positive (or above the Q-continue
logit, and with the Q-continue loss, where the model's config asks: HRM, model.act_continue).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.nn.crop import Crop, rectangle_mask, step_crop, used_extents
from pipeline.nn.model import TRM

IGNORE = -100


def unwrap(model) -> TRM:
    """The TRM itself inside DDP / DeepSpeed / torch.compile wrappers."""
    while not isinstance(model, TRM):
        model = getattr(model, "module", None) or model._orig_mod
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


def carry_dtype(model: TRM, dtype: torch.dtype) -> torch.dtype:
    """The carried (y, z)'s dtype on a runtime computing in `dtype`, which sets the forward's (model.py `_step`):
    `dtype` itself under compute.carry=forward (official: forward_dtype covers the carry), float32 under
    compute.carry=float32 (a departure: bf16 autocast around a float32 carry and residual stream)."""
    return dtype if model.compute.carry == "forward" else torch.float32


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

    `model` may be wrapped (DDP, DeepSpeed, compiled); its config and state come from `trm = unwrap(model)`.
    `min_steps`: exploration draws (slot may not halt before); None draws them here from torch's RNG.

    `puzzle_vecs_fn(ids)` returns the puzzle vectors for the slots (the sparse optimiser hooks in there).
    Returns (new carry, loss, metrics dict of detached sums, predictions)."""
    trm = unwrap(model)
    cfg = trm.cfg
    carry = refill(trm, carry, batch)
    crop = None
    if trm.compute.crop:
        crop = step_crop(used_extents(carry.inputs, carry.labels, trm.canvas, IGNORE), trm.compute.crop_groups, trm)
    vecs = puzzle_vecs_fn(carry.puzzle_ids)
    y, z, logits, q_halt, q_cont = model(carry.inputs, vecs, carry.y, carry.z, crop)
    labels = carry.labels
    target = None
    with torch.no_grad():
        steps = carry.steps + 1
        halted = steps >= cfg.halt_max_steps
        if training and cfg.halting and cfg.halt_max_steps > 1:
            halted = halted | ((q_halt > q_cont) if cfg.halts_on_continue else (q_halt > 0))
            if min_steps is None:
                explore = torch.rand_like(q_halt) < cfg.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, 2, cfg.halt_max_steps + 1)
            halted = halted & (steps >= min_steps)
            if cfg.continue_loss:
                target = continue_target(model, carry.inputs, vecs, y, z, crop, steps >= cfg.halt_max_steps)
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
    if target is not None:
        c_loss = F.binary_cross_entropy_with_logits(q_cont, target, reduction="sum")
        loss = lm_loss + 0.5 * (q_loss + c_loss)
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
        if target is not None:
            metrics["q_continue_loss"] = c_loss.detach()
    new = Carry(y, z, steps, halted, carry.inputs, labels, carry.puzzle_ids)
    return new, loss, metrics, preds


def continue_target(model, inputs, vecs, y, z, crop, last: torch.Tensor) -> torch.Tensor:
    """The Q-continue target (HRM's Q-learning without a replay buffer): a second forward from the new state
    (y, z) on the same inputs; sigmoid of its q_halt at the last step, else of max(q_halt, q_continue)."""
    _, _, _, next_halt, next_cont = model(inputs, vecs, y, z, crop)
    return torch.sigmoid(torch.where(last, next_halt, torch.maximum(next_halt, next_cont)))


@torch.inference_mode()
def predict_stream(model, inputs: torch.Tensor, puzzle_vecs: torch.Tensor | None, batch_size: int,
                   max_steps: int | None = None, adaptive: bool = False, extents: np.ndarray | None = None,
                   dtype: torch.dtype = torch.float32):
    """Run every view for max_steps (the official evaluation), or with `adaptive` until it halts (q_halt > 0, or
    q_halt > q_continue for a model that halts so in training; a departure: predict.adaptive_halting), with continuous
    batching: B slots stay full, a slot whose view finished is refilled with the next pending view from the initial
    state, as the ACT carry does in training; shapes stay [B, ...] (torch.compile). `dtype`: the caller's autocast
    dtype (the carry's follows compute.carry: `carry_dtype`). `extents` [N, 2] (compute.crop): the rows and columns
    each view needs; a step runs the rectangle covering its live slots, each view masked to its own
    (pipeline/nn/crop.py), so a view's answer does not depend on its neighbours (order views by extent).

    Returns argmax predictions [N, seq_len] uint8, halting probability [N] float64 and steps used [N]."""
    trm = unwrap(model)
    max_steps = max_steps or trm.cfg.halt_max_steps
    halts = adaptive and trm.cfg.halting
    N, dev = inputs.shape[0], inputs.device
    preds = torch.zeros(N, inputs.shape[1], dtype=torch.uint8, device=dev)
    conf = torch.zeros(N, dtype=torch.float64, device=dev)  # sigmoid in float64, as the official evaluator
    steps = torch.zeros(N, dtype=torch.int32, device=dev)
    B = min(batch_size, N)
    view = torch.arange(B, device=dev)  # the view each slot works on; -1 = free (only in the tail)
    y, z = trm.initial_state(B, carry_dtype(trm, dtype))  # as training's carry
    slot_steps = torch.zeros(B, dtype=torch.int32, device=dev)
    # Slot-resident inputs, changed only on refill (like the training carry), so a step gathers nothing.
    slot_inputs = inputs[:B].clone()
    slot_vecs = puzzle_vecs[:B].clone() if puzzle_vecs is not None else None
    pending, crop_of = B, None
    if extents is not None and trm.compute.crop:
        host_view = np.arange(B)  # the host's copy of `view`, kept in step at the step's one sync
        dev_extents = torch.from_numpy(np.ascontiguousarray(extents, dtype=np.int64)).to(dev)
        made = {}  # rectangle -> its positions, made once per stream
        slots_crop = []  # the Crop of the slots' current views, rebuilt only when a slot changes view

        def crop_of():
            if slots_crop:
                return slots_crop[0]
            live_ext = extents[host_view[host_view >= 0]]
            rect = int(live_ext[:, 0].max()), int(live_ext[:, 1].max())
            if rect not in made:
                made[rect] = trm.keep_index(*rect)
            mask = None
            if (live_ext < np.array(rect)).any():
                # a free slot (the tail) computes whatever: it takes the covering rectangle and masks nothing
                own = torch.where(view[:, None] >= 0, dev_extents[view.clamp(min=0)],
                                  torch.tensor(rect, device=dev))
                mask = rectangle_mask(own, rect, trm.cfg.puzzle_emb_len)
            slots_crop.append(Crop(made[rect], mask))
            return slots_crop[0]
    while True:
        live = view >= 0
        y, z, logits, q_halt, q_cont = model(slot_inputs, slot_vecs, y, z, crop_of() if crop_of else None)
        slot_steps += 1
        halt = halts & ((q_halt > q_cont) if trm.cfg.halts_on_continue else (q_halt > 0))
        done = live & ((slot_steps >= max_steps) | halt)
        idx = done.nonzero().flatten()  # the one sync of a step
        if len(idx):
            v = view[idx]
            preds[v] = logits[idx].argmax(-1).to(torch.uint8)
            conf[v] = torch.sigmoid(q_halt[idx].double())
            steps[v] = slot_steps[idx]
            take = min(len(idx), N - pending)
            view[idx] = -1
            if crop_of:
                slots_crop.clear()
                host_idx = idx.cpu().numpy()
                host_view[host_idx] = -1
                host_view[host_idx[:take]] = np.arange(pending, pending + take)
            if take:  # refill freed slots with pending views from their initial state
                fill = idx[:take]
                new = torch.arange(pending, pending + take, device=dev)
                view[fill] = new
                slot_inputs[fill] = inputs[new]
                if slot_vecs is not None:
                    slot_vecs[fill] = puzzle_vecs[new]
                y[fill], z[fill] = trm.y_init.to(y.dtype), trm.z_init.to(z.dtype)
                slot_steps[fill] = 0
                pending += take
            if pending >= N and not (view >= 0).any():
                break
    return preds, conf, steps
