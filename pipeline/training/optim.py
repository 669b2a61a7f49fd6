"""Optimisers of TRM: AdamATan2 for the trunk (plain torch, CPU and GPU: the official kernel, or NVARC's
adam-atan2-pytorch variant), AdamW, or Muon for the trunk's 2-D matrices with AdamW for the rest
(`muon_param_split`, `OptimizerSet`), chosen by `build_optimizer`; sparse sign-SGD for the puzzle table, the
warm-up + cosine schedule and the EMA of the trunk weights."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class _Atan2Adam(torch.optim.Optimizer):
    """The loop both atan2 variants share: per parameter with a gradient, the step count and the first moment,
    coupled weight decay (p <- p (1 - lr wd)), then the variant's second moment and update (`_update`)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.95), weight_decay: float = 0.1):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                p.mul_(1 - lr * wd)
                self._update(p, st["exp_avg"], st["exp_avg_sq"], st["step"].item(), lr, b1, b2)

    def _update(self, p, m, v, t: float, lr: float, b1: float, b2: float) -> None:
        raise NotImplementedError


class AdamATan2(_Atan2Adam):
    """Adam with atan2 in place of m / (sqrt(v) + eps) (Everett et al. 2024), exactly as the official `adam-atan2`
    CUDA kernel: p <- p (1 - lr wd); p <- p - (lr / bc1) atan2(m, sqrt(v) / sqrt(bc2)), bc1 = 1 - b1^t,
    bc2 = 1 - b2^t. The first bias correction stays outside atan2 (atan2 is not scale-invariant, so
    atan2(m / bc1, sqrt(v / bc2)) would be a different update over the first steps). Eps-free."""

    def _update(self, p, m, v, t, lr, b1, b2):
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        p.add_(torch.atan2(m, v.sqrt() / math.sqrt(1 - b2 ** t)), alpha=-lr / (1 - b1 ** t))


class AdamAtan2Pytorch(_Atan2Adam):
    """`adam_atan2_pytorch.AdamAtan2` 0.2.4 (lucidrains/adam-atan2-pytorch), the trunk optimiser of NVARC's TRM
    (1ytic/NVARC TRM/eval-arc-k-10.py, pinned in TRM/README.md), at the defaults NVARC kept (a = 1.27, b = 1,
    coupled weight decay, no cautious or regenerative terms): p <- p (1 - lr wd); then
    p <- p - 1.27 lr atan2(m / bc1, sqrt(v / bc2)). Unlike the official kernel (AdamATan2) both bias
    corrections sit inside atan2 and the step is scaled by 1.27."""

    A = 1.27

    def _update(self, p, m, v, t, lr, b1, b2):
        v.lerp_(p.grad * p.grad, 1 - b2)
        den = v.mul(1 / (1 - b2 ** t)).sqrt_()
        p.add_(m.mul(1 / (1 - b1 ** t)).atan2_(den), alpha=-lr * self.A)


MUON_PREFIX = ("blocks.", "h_blocks.")
"""The recursive trunk: its 2-D weights (attention qkv/out, SwiGLU gate_up/down, the MLP-t mixer, LoRA A/B)
are hidden-to-hidden matrices, Muon's domain. Token and position embeddings and the output / halting heads
stay with AdamW, as Keller Jordan's Muon prescribes (embeddings and heads are not matrices acting on a
hidden state). URM's pretrain.py (UbiquantAI/URM, `use_muon=True`) instead gives Muon every 2-D parameter,
embeddings and heads included."""


def muon_param_split(model: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Parameter]],
                                                     list[tuple[str, torch.nn.Parameter]]]:
    """The trainable parameters as (muon, adamw) lists of (name, parameter): Muon takes the 2-D weights
    under `blocks.` (HRM: and `h_blocks.`), AdamW everything else (embed_tokens, embed_pos, lm_head, q_head,
    biases). The puzzle table is a buffer (sign-SGD), in neither."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (muon if name.startswith(MUON_PREFIX) and p.ndim == 2 else adamw).append((name, p))
    return muon, adamw


class OptimizerSet:
    """Several torch optimisers stepped as one (Muon + AdamW), with the one-optimiser surface the Trainer
    uses: param_groups (each with an `lr_scale`: its lr relative to train.lr, kept by the schedule), step,
    zero_grad, state_dict / load_state_dict (one entry per named optimiser)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimiser state holds {sorted(state)}, this run has {sorted(self.optimizers)}")
        for k, opt in self.optimizers.items():
            scales = [g.get("lr_scale", 1.0) for g in opt.param_groups]
            opt.load_state_dict(state[k])
            for g, scale in zip(opt.param_groups, scales):  # the config's muon_lr / lr wins over the saved one
                g["lr_scale"] = scale


def muon_optimizer(model: torch.nn.Module, lr: float, muon_lr: float, momentum: float, betas, weight_decay: float
                   ) -> OptimizerSet:
    """torch.optim.Muon on the trunk's matrices, AdamW on the rest (muon_param_split), as URM (UbiquantAI/URM
    pretrain.py, `use_muon=True`): Muon momentum 0.95 with Nesterov, 5 Newton-Schulz steps, its update scaled
    to AdamW's RMS (0.2 sqrt(max(A, B)), Moonshot's "match_rms_adamw", URM's matched_adamw_rms=0.2) so that
    it takes an AdamW-scale lr; weight decay on both. The Muon group's `lr_scale` = muon_lr / lr."""
    muon, adamw = muon_param_split(model)
    opts = {}
    if muon:
        opts["muon"] = torch.optim.Muon([p for _, p in muon], lr=muon_lr, weight_decay=weight_decay,
                                        momentum=momentum, nesterov=True, adjust_lr_fn="match_rms_adamw")
        opts["muon"].param_groups[0]["lr_scale"] = muon_lr / lr
    if adamw:
        opts["adamw"] = torch.optim.AdamW([p for _, p in adamw], lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return OptimizerSet(opts)


def build_optimizer(c, model: torch.nn.Module, params: list[torch.nn.Parameter]):
    """The trunk optimiser `c.optimizer` names (`c`: the run's TrainConfig) over `params`, the trainable
    parameters (optimizer=muon splits the model's own trainable set: muon_param_split)."""
    if c.optimizer == "muon":
        return muon_optimizer(model, c.lr, c.muon_lr or c.lr, c.muon_momentum, c.betas, c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
    if c.optimizer == "adam_atan2_pytorch":
        return AdamAtan2Pytorch(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
    return AdamATan2(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


@torch.no_grad()
def sign_sgd_rows(table: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, lr: float, weight_decay: float,
                  distributed: bool = False) -> None:
    """Sparse sign-SGD on the puzzle table (official CastedSparseEmbeddingSignSGD): gather (ids, grads) from
    all ranks, sum grads per id, then row <- row (1 - lr wd) - lr sign(grad). Rows not in the batch stay."""
    if distributed and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        all_ids = [torch.empty_like(ids) for _ in range(world)]
        all_grads = [torch.empty_like(grads) for _ in range(world)]
        dist.all_gather(all_ids, ids.contiguous())
        dist.all_gather(all_grads, grads.contiguous())
        ids, grads = torch.cat(all_ids), torch.cat(all_grads)
    keep = ids > 0  # id 0 is the blank padding id
    ids, grads = ids[keep], grads[keep]
    uniq, inv = torch.unique(ids, return_inverse=True)
    summed = torch.zeros(len(uniq), grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(0, inv, grads)
    rows = table[uniq]
    table[uniq] = (rows * (1 - lr * weight_decay) - lr * summed.sign()).to(table.dtype)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to base * min_ratio (min_ratio 1.0 = constant, as TRM): the official
    schedule. The Trainer numbers optimiser steps from 1, as the official loop (which increments its step
    before computing the lr), so the first step runs at base / warmup."""
    if step < warmup:
        return base * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow), used for evaluation and export."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)

    def averaged(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state-dict entries that the EMA replaces, with their averaged values."""
        return self.shadow

    def weights_for(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA values substituted for the averaged parameters. Nothing is copied
        but the substituted tensors (the puzzle table, a buffer, is the model's own: never averaged)."""
        sd = model.state_dict()
        for n, t in self.averaged(model).items():
            sd[n] = t.to(sd[n].dtype)
        return sd
