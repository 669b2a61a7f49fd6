"""TRM with a single latent (`arch=trm_singlez`, the official models/recursive_reasoning/trm_singlez.py): the
carry holds only z (official z_L; our y is empty, [B, S, 0]). One cycle: l_cycles updates z = net(z + x), then
one z = net(z) without the input; h_cycles cycles, only the last with gradients; the heads read z.
"""
from __future__ import annotations

import torch

from pipeline.nn.model import TRM, trunc_normal_


class TRMSingleZ(TRM):
    def _init_states(self, h: int) -> None:
        self.register_buffer("y_init", torch.zeros(0), persistent=False)  # no y: an empty state
        self.register_buffer("z_init", trunc_normal_(torch.empty(h), 1.0))

    def _blocks(self, h, rope, mask):
        for blk in self.blocks:
            h = blk(h, rope, mask)
        return h

    def _cycle_z(self, x, z, rope, mask):
        for _ in range(self.cfg.l_cycles):
            z = self.net(z, x, rope, mask)
        return self._blocks(z, rope, mask)

    def recurse(self, x, y, z, rope, mask=None):
        with torch.no_grad():
            for _ in range(self.cfg.h_cycles - 1):
                z = self._cycle_z(x, z, rope, mask)
        z = self._cycle_z(x, z, rope, mask)
        return y, z, z
