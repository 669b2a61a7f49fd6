"""Task-sized sequences (model.crop): which canvas rectangle a step runs on.

A step's rectangle is [0:rows, 0:cols] of the canvas, the smallest that holds every live example's grids,
their EOS border and their translation: measured from the tokens in training (`used_extents`, optionally in
size groups: `step_crop`), and from the view's placement plus the answer's size bound in prediction
(`view_extents`), where the output is unknown. The model keeps every cell's full-canvas position
(pipeline/model.py, TRM.keep_index)."""
from __future__ import annotations

import numpy as np
import torch

from kernels import PAD
from pipeline.encode import view_sizes


def used_extents(inputs: torch.Tensor, labels: torch.Tensor, canvas: int, ignore: int) -> np.ndarray:
    """[B, 2] (rows, cols) of the canvas each row of the batch uses, at least 1 x 1: a non-PAD input token or
    a label that is not ignored (grids and their EOS border). One host sync."""
    used = ((inputs != PAD) | (labels != ignore)).view(-1, canvas, canvas)
    idx = torch.arange(1, canvas + 1, device=inputs.device)
    rows = torch.where(used.any(2), idx, 0).amax(1)
    cols = torch.where(used.any(1), idx, 0).amax(1)
    return np.maximum(torch.stack((rows, cols), 1).cpu().numpy(), 1)


def by_size(extents: np.ndarray) -> np.ndarray:
    """The order of [N, 2] extents from the smallest to the largest (largest side, then area): how size
    groups are cut and (reversed) how prediction streams its views."""
    return np.lexsort((extents.prod(1), extents.max(1)))


def size_groups(extents: np.ndarray, groups: int, device) -> list | tuple[int, int]:
    """Slots sorted by size (largest side, then area) and cut into `groups` groups of equal count, each with
    the rectangle that covers it: [(slot indices, (rows, cols)), ...]; one group is just its rectangle."""
    if groups <= 1 or len(extents) <= 1:
        rows, cols = extents.max(0)
        return int(rows), int(cols)
    order = by_size(extents)
    out = []
    for part in np.array_split(order, min(groups, len(order))):
        rows, cols = extents[part].max(0)
        out.append((torch.from_numpy(np.sort(part)).to(device), (int(rows), int(cols))))
    return out


def step_crop(extents: np.ndarray, groups: int, keep_index, device):
    """What TRM.forward takes as `crop` for slots of these extents: the positions (`keep_index(rows, cols)`)
    of the one rectangle covering them, or [(slot indices, positions), ...] for `groups` size groups."""
    g = size_groups(extents, groups, device)
    return keep_index(*g) if isinstance(g, tuple) else [(slots, keep_index(*rect)) for slots, rect in g]


def view_extents(in_h: np.ndarray, in_w: np.ndarray, bound: np.ndarray, dihedral: np.ndarray, r0: np.ndarray,
                 c0: np.ndarray, canvas: int) -> np.ndarray:
    """[N, 2] (rows, cols) each prediction view needs: its input and its answer (size bounded from the
    demonstrations, `bound` [N, 2] in the task's frame, 0 = unknown) placed at (r0, c0), plus the EOS border;
    the whole axis where the answer's size cannot be bounded."""
    size_in = np.stack(view_sizes(in_h, in_w, dihedral), 1)
    size_out = np.stack(view_sizes(bound[:, 0], bound[:, 1], dihedral), 1)
    off = np.stack([r0, c0], 1)
    need = off + np.maximum(size_in, size_out) + 1
    need = np.where(size_out > 0, need, canvas)
    return np.minimum(need, canvas).astype(np.int64)
