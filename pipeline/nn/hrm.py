"""HRM (Wang et al. 2025, "Hierarchical Reasoning Model"), as the official TRM repository trains it
(`arch=hrm`, models/recursive_reasoning/hrm.py): two networks, L (`model.layers` blocks) and H
(`model.h_layers`, TRM's `h_blocks`), on two carried states z_H (our y, which the heads read) and z_L (our z).
One supervision step runs h_cycles cycles of l_cycles L updates z_L = L(z_L + z_H + x), each followed by one
H update z_H = H(z_H + z_L); only the last L and the last H update carry gradients (the 1-step gradient). So
HRM is TRM's recursion with a separate y network and the 1-step gradient (the TRM paper's two ablations:
model.h_layers, model.one_step_grad), always. Its training halts on q_halt > q_continue and trains the
Q-continue head (ModelConfig.continue_loss, pipeline/nn/act.py). The puzzle prefix is
ceil(puzzle_emb_ndim / hidden) long (ModelConfig checks it).
"""
from __future__ import annotations

from pipeline.nn.model import TRM, step_flops


class HRM(TRM):
    def recurse(self, x, y, z, rope, mask=None):
        return self._recurse_one_step(x, y, z, rope, mask)

    def flops_per_step(self, batch: int, seq_len: int | None = None, train: bool = True) -> float:
        c = self.cfg
        return step_flops(c, batch, seq_len, c.h_cycles * (c.l_cycles * c.layers + c.h_layers),
                          c.layers + c.h_layers if train else 0)
