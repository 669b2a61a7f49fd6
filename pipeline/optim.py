"""Optimisers of TRM: AdamATan2 for the trunk (plain torch, CPU and GPU), sparse sign-SGD for the puzzle
table, the warm-up + cosine schedule and the EMA of the trunk weights."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of m / (sqrt(v) + eps) (Everett et al. 2024), exactly as the official `adam-atan2`
    CUDA kernel: p <- p (1 - lr wd); p <- p - (lr / bc1) atan2(m, sqrt(v) / sqrt(bc2)), bc1 = 1 - b1^t,
    bc2 = 1 - b2^t. The first bias correction stays outside atan2 (atan2 is not scale-invariant, so
    atan2(m / bc1, sqrt(v / bc2)) would be a different update over the first steps). Eps-free."""

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
                t = st["step"].item()
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                p.mul_(1 - lr * wd)
                p.add_(torch.atan2(m, v.sqrt() / math.sqrt(bc2)), alpha=-lr / bc1)


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
    """Linear warm-up from 0, then cosine decay to base * min_ratio (min_ratio 1.0 = constant, as TRM)."""
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

    def weights_for(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA values substituted for the averaged parameters. Nothing is copied
        but the substituted tensors (the puzzle table, a buffer, is the model's own: never averaged)."""
        sd = model.state_dict()
        for n, t in self.shadow.items():
            sd[n] = t.to(sd[n].dtype)
        return sd
