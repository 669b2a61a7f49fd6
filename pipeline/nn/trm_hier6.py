"""TRM with the latent in six pieces (`arch=trm_hier6`, the official models/recursive_reasoning/trm_hier6.py):
the carry holds z_H (our y) and z_L1..z_L6, concatenated along the last dim into our z [B, S, 6 * hidden].
L step j of a cycle replaces piece j by net(sum of the pieces + y + x) (so l_cycles <= 6, and pieces past
l_cycles keep their initial state); then y = net(y + sum of the pieces). h_cycles cycles, only the last with
gradients; the heads read y. Each piece starts from its own vector (official L1_init..L6_init: our
z1_init..z6_init; `z_init` is their concatenation).
"""
from __future__ import annotations

import torch

from pipeline.nn.model import TRM, trunc_normal_

PIECES = 6


def _sum(pieces: list[torch.Tensor]) -> torch.Tensor:
    total = pieces[0]
    for p in pieces[1:]:  # left to right, as the official sum
        total = total + p
    return total


class TRMHier6(TRM):
    def _init_states(self, h: int) -> None:
        self.register_buffer("y_init", trunc_normal_(torch.empty(h), 1.0))
        for i in range(1, PIECES + 1):
            self.register_buffer(f"z{i}_init", trunc_normal_(torch.empty(h), 1.0))

    @property
    def z_init(self) -> torch.Tensor:
        return torch.cat([getattr(self, f"z{i}_init") for i in range(1, PIECES + 1)])

    def _cycle6(self, x, y, pieces, rope, mask):
        for j in range(self.cfg.l_cycles):
            pieces[j] = self.net(_sum(pieces), y + x, rope, mask)
        return self.net(y, _sum(pieces), rope, mask)

    def recurse(self, x, y, z, rope, mask=None):
        pieces = list(z.chunk(PIECES, dim=-1))
        with torch.no_grad():
            for _ in range(self.cfg.h_cycles - 1):
                y = self._cycle6(x, y, pieces, rope, mask)
        y = self._cycle6(x, y, pieces, rope, mask)
        return y, torch.cat(pieces, dim=-1), y
