"""Task-sized sequences (compute.crop): which canvas rectangle each example computes on.

An example's own rectangle is [0:rows, 0:cols] of the canvas, the smallest that holds its grids, their EOS
border and their translation: measured from the tokens in training (`used_extents`), and from the view's
placement plus the answer's size bound in prediction (`view_extents`), where the output is unknown. A step
runs the rectangle covering its examples (or, in training, each of `crop_groups` size groups on its own),
each example masked to its own rectangle (`own_rectangles`), so that an example's result is a function of
the example alone (`step_crop`, `rect_crop`). The model keeps every cell's full-canvas position
(pipeline/nn/model.py, TRM.keep_index)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from kernels import PAD, view_sizes


class Crop(NamedTuple):
    """What TRM.forward runs under compute.crop (rect_crop, step_crop build it): `keep`, the sequence positions of
    the canvas rectangle covering the batch (`TRM.keep_index`), and `own` [B, len(keep)], True at the
    positions of each example's own rectangle and the prefix (None: every example fills the rectangle)."""
    keep: torch.Tensor
    own: torch.Tensor | None = None


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


def _group_parts(extents: np.ndarray, groups: int) -> list[np.ndarray]:
    """Slot indices (sorted) of `groups` groups of equal count, by size (largest side, then area)."""
    return [np.sort(part) for part in np.array_split(by_size(extents), min(groups, len(extents)))]


def size_groups(extents: np.ndarray, groups: int, device) -> list | tuple[int, int]:
    """Slots sorted by size (largest side, then area) and cut into `groups` groups of equal count, each with
    the rectangle that covers it: [(slot indices, (rows, cols)), ...]; one group is just its rectangle."""
    if groups <= 1 or len(extents) <= 1:
        rows, cols = extents.max(0)
        return int(rows), int(cols)
    return [(torch.from_numpy(part).to(device), tuple(int(v) for v in extents[part].max(0)))
            for part in _group_parts(extents, groups)]


def own_rectangles(extents: np.ndarray, rect: tuple[int, int], prefix: int, device) -> torch.Tensor | None:
    """[B, prefix + rows * cols] bool over the positions of `rect` (as keep_index orders them): True on the
    prefix and on each example's own rectangle `extents[b]`; None when every example fills `rect` (nothing
    to mask)."""
    rows, cols = rect
    if (extents[:, 0] >= rows).all() and (extents[:, 1] >= cols).all():
        return None
    return rectangle_mask(torch.from_numpy(np.ascontiguousarray(extents, dtype=np.int64)).to(device), rect, prefix)


def rectangle_mask(extents: torch.Tensor, rect: tuple[int, int], prefix: int) -> torch.Tensor:
    """own_rectangles' mask from extents [B, 2] already on the device (built there, no host copy)."""
    rows, cols = rect
    r = torch.arange(rows, device=extents.device)[None, :, None] < extents[:, 0, None, None]
    c = torch.arange(cols, device=extents.device)[None, None, :] < extents[:, 1, None, None]
    cells = (r & c).flatten(1)
    return torch.cat((cells.new_ones(len(extents), prefix), cells), 1)


def rect_crop(extents: np.ndarray, model) -> Crop:
    """The `Crop` of examples with these extents [B, 2] for `model` (a TRM): the rectangle covering them,
    each example masked to its own."""
    rect = int(extents[:, 0].max()), int(extents[:, 1].max())
    return Crop(model.keep_index(*rect), own_rectangles(extents, rect, model.cfg.puzzle_emb_len,
                                                        model.y_init.device))


def step_crop(extents: np.ndarray, groups: int, model):
    """What TRM.forward takes as `crop` for slots of these extents: one `Crop` covering them, or
    [(slot indices, Crop), ...] for `groups` size groups. Either way each slot computes on its own
    rectangle, so the grouping changes the speed, not the result."""
    if groups <= 1 or len(extents) <= 1:
        return rect_crop(extents, model)
    device = model.y_init.device
    return [(torch.from_numpy(part).to(device), rect_crop(extents[part], model)) for part in _group_parts(extents, groups)]


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
