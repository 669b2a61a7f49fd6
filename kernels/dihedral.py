"""Index maps for the 8 dihedral transforms, shared by the augment and inverse kernels."""
import numpy as np
from numba import njit

_INV = np.array([0, 3, 2, 1, 4, 5, 6, 7], dtype=np.int64)


@njit(cache=True, inline="always")
def swaps_axes(d):
    return d == 1 or d == 3 or d == 6 or d == 7


@njit(cache=True, inline="always")
def source_index(d, i, j, h, w):
    """Cell of the (h, w) source grid that lands at (i, j) after dihedral transform d."""
    if d == 0:
        return i, j
    if d == 1:
        return j, w - 1 - i
    if d == 2:
        return h - 1 - i, w - 1 - j
    if d == 3:
        return h - 1 - j, i
    if d == 4:
        return i, w - 1 - j
    if d == 5:
        return h - 1 - i, j
    if d == 6:
        return j, i
    return h - 1 - j, w - 1 - i


@njit(cache=True, inline="always")
def inverse_id(d):
    return _INV[d]
