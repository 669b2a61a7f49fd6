"""Low-rank adapters (LoRA, Hu et al. 2021) for test-time training: the trunk's attention and MLP projections
get W + (alpha / r) B A with W frozen, A small random and B zero (so training starts at the pretrained
function). `merged_state` folds the adapters back into plain weights, so checkpoints load into a plain TRM;
`MergedEMA` averages those merged weights (the EMA of W + s B A, not W + s EMA(B) EMA(A), which is not an
average of any weights the run had)."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.training.optim import EMA

TARGETS = ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down", "mixer.gate_up", "mixer.down")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.to(x.dtype).t() @ self.lora_b.to(x.dtype).t()) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + s B A, the plain weight this layer computes with (as merged_state folds it)."""
        return (self.base.weight.float() + self.scale * (self.lora_b.float() @ self.lora_a.float())).to(self.base.weight.dtype)


def add_lora(model: nn.Module, rank: int, alpha: float) -> int:
    """Wrap every target projection of the trunk and freeze all other parameters; returns how many were wrapped."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and any(full.endswith(t) for t in TARGETS):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped += 1
    return wrapped


def merged_state(state: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """A plain-TRM state dict from a LoRA model's state dict: `x.base.weight + scale * x.lora_b @ x.lora_a`."""
    out = {}
    for k, v in state.items():
        if ".lora_" in k:
            continue
        if ".base." in k:
            prefix, leaf = k.split(".base.")
            if leaf == "weight":
                a, b = state[f"{prefix}.lora_a"].float(), state[f"{prefix}.lora_b"].float()
                v = (v.float() + scales[prefix] * (b @ a)).to(v.dtype)
            k = f"{prefix}.{leaf}"
        out[k] = v
    return out


def lora_scales(model: nn.Module) -> dict[str, float]:
    return {n: m.scale for n, m in _lora_layers(model).items()}


class MergedEMA(EMA):
    """EMA for a LoRA run: of each adapted projection's merged weight W + s B A (fp32 shadow, named as the plain
    TRM's weight), the rest of the model being frozen. `averaged` puts the average in the base weight and
    zeroes the adapter, so `merged_state` of `weights_for` is the plain TRM with the averaged weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {f"{n}.weight": m.merged_weight().float().clone() for n, m in _lora_layers(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, m in _lora_layers(model).items():
            self.shadow[f"{n}.weight"].lerp_(m.merged_weight().float(), 1 - self.decay)

    def averaged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for n, m in _lora_layers(model).items():
            out[f"{n}.base.weight"] = self.shadow[f"{n}.weight"]
            out[f"{n}.lora_b"] = torch.zeros_like(m.lora_b)
        return out


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
