"""HRM (Wang et al. 2025, "Hierarchical Reasoning Model"), as the official TRM repository trains it
(`arch=hrm`, models/recursive_reasoning/hrm.py): two networks, L (`model.layers` blocks) and H
(`model.h_layers`), on two carried states z_H (our y, which the heads read) and z_L (our z). One supervision
step runs h_cycles cycles of l_cycles L updates z_L = L(z_L + z_H + x), each followed by one H update
z_H = H(z_H + z_L); only the last L and the last H update carry gradients (the 1-step gradient). Its
training halts on q_halt > q_continue and trains the Q-continue head (ModelConfig.continue_loss,
pipeline/nn/act.py). The puzzle prefix is ceil(puzzle_emb_ndim / hidden) long (ModelConfig checks it).
"""
from __future__ import annotations

from torch import nn
import torch

from pipeline.config import ComputeConfig, ModelConfig
from pipeline.nn.model import TRM, Block, step_flops


class HRM(TRM):
    def __init__(self, cfg: ModelConfig, num_puzzle_ids: int, compute: ComputeConfig | None = None):
        super().__init__(cfg, num_puzzle_ids, compute)
        self.h_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.h_layers))

    def h_net(self, h: torch.Tensor, injection: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        h = h + injection
        for blk in self.h_blocks:
            h = blk(h, rope, mask)
        return h

    def recurse(self, x, y, z, rope, mask=None):
        z_h, z_l = y, z
        H, L = self.cfg.h_cycles, self.cfg.l_cycles
        with torch.no_grad():  # every update but the last L and the last H one
            for i in range(H):
                for j in range(L):
                    if i < H - 1 or j < L - 1:
                        z_l = self.net(z_l, z_h + x, rope, mask)
                if i < H - 1:
                    z_h = self.h_net(z_h, z_l, rope, mask)
        z_l = self.net(z_l, z_h + x, rope, mask)
        z_h = self.h_net(z_h, z_l, rope, mask)
        return z_h, z_l, z_h

    def flops_per_step(self, batch: int, seq_len: int | None = None) -> float:
        c = self.cfg
        return step_flops(c, batch, seq_len, c.h_cycles * (c.l_cycles * c.layers + c.h_layers),
                          c.layers + c.h_layers)
