"""Task-sized sequences (model.crop): which canvas rectangle a step runs on.

A step's rectangle is [0:rows, 0:cols] of the canvas, the smallest that holds every live example's grids,
their EOS border and their translation: measured from the tokens in training (`used_extent`), and from the
view's placement plus the answer's size bound in prediction (`view_extents`), where the output is unknown.
The model keeps every cell's full-canvas position (pipeline/model.py, TRM.keep_index)."""
from __future__ import annotations

import numpy as np
import torch

from kernels import DIHEDRAL_SWAPS_AXES, PAD


def used_extent(inputs: torch.Tensor, labels: torch.Tensor, canvas: int, ignore: int) -> tuple[int, int]:
    """(rows, cols) of the canvas that any row of the batch uses: a non-PAD input token or a label that is
    not ignored (grids and their EOS border). One host sync."""
    used = ((inputs != PAD) | (labels != ignore)).view(-1, canvas, canvas).any(0)
    rows, cols = used.any(1), used.any(0)
    ext = torch.stack((_last_true(rows), _last_true(cols))).tolist()
    return max(1, ext[0]), max(1, ext[1])


def _last_true(v: torch.Tensor) -> torch.Tensor:
    """1 + index of the last True in a 1-D bool tensor (0 when none)."""
    idx = torch.arange(1, len(v) + 1, device=v.device)
    return torch.where(v, idx, 0).max()


def view_extents(in_h: np.ndarray, in_w: np.ndarray, bound: np.ndarray, dihedral: np.ndarray, r0: np.ndarray,
                 c0: np.ndarray, canvas: int) -> np.ndarray:
    """[N, 2] (rows, cols) each prediction view needs: its input and its answer (size bounded from the
    demonstrations, `bound` [N, 2] in the task's frame, 0 = unknown) placed at (r0, c0), plus the EOS border;
    the whole axis where the answer's size cannot be bounded."""
    swap = np.asarray(DIHEDRAL_SWAPS_AXES)[dihedral]
    size_in = np.stack([np.where(swap, in_w, in_h), np.where(swap, in_h, in_w)], 1)
    size_out = np.stack([np.where(swap, bound[:, 1], bound[:, 0]), np.where(swap, bound[:, 0], bound[:, 1])], 1)
    off = np.stack([r0, c0], 1)
    need = off + np.maximum(size_in, size_out) + 1
    need = np.where(size_out > 0, need, canvas)
    return np.minimum(need, canvas).astype(np.int64)
