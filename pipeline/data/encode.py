"""Encoding augmented examples onto the token canvas: a batch of (input, output) pairs under dihedral transforms,
colour permutations and translations through the numba encoder (kernels/augment.py)."""
from __future__ import annotations

import numpy as np

from kernels import view_sizes
from kernels.augment import encode_pairs
from pipeline.data.packed import PackedTasks


def last_offset(extent, canvas: int, max_offset: int = 0) -> np.ndarray:
    """The last offset along an axis at which `extent` cells still fit inside the canvas, and at most max_offset
    (0 = no limit). Training places a pair anywhere up to the canvas edge (extent: its larger grid), the EOS border
    then falling off the canvas, as the official builder's randint(0, 30 - size + 1) and the encoder do.
    Prediction's extent is the answer plus its border: a predicted grid that reaches the edge of a translated axis
    cannot be told from a clipped one and casts no vote (pipeline/prediction/infer.py)."""
    room = np.maximum(canvas - np.asarray(extent), 0)
    return np.minimum(room, max_offset) if max_offset else room


def encode(packed: PackedTasks, in_idx, out_idx, dihedral, perms, u_row, u_col, canvas: int) -> dict:
    n = len(in_idx)
    inputs = np.empty((n, canvas * canvas), dtype=np.uint8)
    labels = np.empty((n, canvas * canvas), dtype=np.uint8)
    r0, c0 = np.empty(n, np.int64), np.empty(n, np.int64)
    encode_pairs(packed.cells, packed.starts, packed.heights, packed.widths, np.asarray(in_idx, np.int64),
                 np.asarray(out_idx, np.int64), np.asarray(dihedral, np.int64), np.ascontiguousarray(perms, np.uint8),
                 np.asarray(u_row, np.float64), np.asarray(u_col, np.float64), canvas, inputs, labels, r0, c0)
    return {"inputs": inputs, "labels": labels, "r0": r0, "c0": c0}


def bound_offsets(draws: np.ndarray, packed: PackedTasks, ex_in: np.ndarray, ex_out: np.ndarray, dihedral: np.ndarray,
                  canvas: int, max_offset: int) -> np.ndarray:
    """Rescale translation draws [2, B] in [0, 1) so that the encoder's offset floor(draw * (room + 1)) lands in
    0..min(room, max_offset), room = canvas - the pair's larger size along the axis (after the dihedral)."""
    h = np.maximum(packed.heights[ex_in], packed.heights[ex_out])
    w = np.maximum(packed.widths[ex_in], packed.widths[ex_out])
    size = np.stack(view_sizes(h, w, dihedral))
    return draws * (last_offset(size, canvas, max_offset) + 1) / (canvas - size + 1)
