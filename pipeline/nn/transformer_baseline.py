"""The transformer baseline (`arch=transformers_baseline`, the official
models/recursive_reasoning/transformers_baseline.py Model_ACTV2): `model.layers` post-norm blocks applied once
per supervision step to the carried state z_H (our y; our z is empty, [B, S, 0]) plus the input, with
gradients; no cycles (h_cycles = l_cycles = 1). Under the same ACT wrapper: training halts on
q_halt > q_continue, the continue loss only with model.act_continue (official compute_target_q). The puzzle
prefix is ceil(puzzle_emb_ndim / hidden) long.
"""
from __future__ import annotations

import torch

from pipeline.nn.model import TRM, step_flops, trunc_normal_


class TransformerBaseline(TRM):
    def _init_states(self, h: int) -> None:
        self.register_buffer("y_init", trunc_normal_(torch.empty(h), 1.0))
        self.register_buffer("z_init", torch.zeros(0), persistent=False)  # no z: an empty state

    def recurse(self, x, y, z, rope, mask=None):
        y = self.net(y, x, rope, mask)
        return y, z, y

    def flops_per_step(self, batch: int, seq_len: int | None = None, train: bool = True) -> float:
        return step_flops(self.cfg, batch, seq_len, self.cfg.layers, self.cfg.layers if train else 0)
