"""Numba kernels: pure array-in/array-out functions (no torch, nothing else of ours).

Token encoding (as in TRM): PAD 0, EOS 1, colour c -> c + 2, on a canvas x canvas grid (30 for ARC).
Dihedral ids follow the official TRM order: 0 identity, 1-3 rot90 x k (counter-clockwise), 4 flip
left-right, 5 flip up-down, 6 transpose, 7 anti-transpose.
"""
import numpy as np

PAD = 0
EOS = 1
COLOR_OFFSET = 2
NUM_COLORS = 10
VOCAB_SIZE = NUM_COLORS + COLOR_OFFSET
# Inverse of each dihedral id: rot90 and rot270 undo each other, the rest are involutions.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
# Dihedral ids that swap rows and columns (rot90, rot270, transpose, anti-transpose).
DIHEDRAL_SWAPS_AXES = (False, True, False, True, False, False, True, True)


def view_sizes(h, w, dihedral) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of grids of h rows and w columns after their dihedral transforms (rot90, rot270, transpose and
    anti-transpose swap the two)."""
    swap = np.asarray(DIHEDRAL_SWAPS_AXES)[dihedral]
    return np.where(swap, w, h), np.where(swap, h, w)
