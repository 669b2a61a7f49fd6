"""Inverse of the augmentation: find a predicted grid's extent from its border, crop, undo translation,
dihedral transform and colour permutation. Hashing identifies the inverted grid straight from the
canvas without materialising it, so voting over 1000 views touches each predicted cell once.

Extent rule: the grid's top-left corner is the view's offset (r0, c0); its width is the run of colour
tokens along row r0, its height the run down column c0; each run must end at the canvas edge or an EOS
token (the border), and every cell of the rectangle must be a colour. Anything else is invalid.
"""
import numpy as np
from numba import njit

from kernels.dihedral import inverse_id, source_index, swaps_axes

_EOS, _OFF = 1, 2
_INVALID = np.uint8(255)
_SEED = np.uint64(14695981039346656037)
_PRIME = np.uint64(1099511628211)


@njit(cache=True, nogil=True, inline="always")
def _mix(acc, word):
    acc = (acc ^ word) * _PRIME
    return acc ^ (acc >> np.uint64(29))


@njit(cache=True, nogil=True)
def crop_extent(tokens, r0, c0, canvas):
    """(h, w) of the bordered run-lengths at (r0, c0), or (0, 0) when a run is empty or not bordered.
    The rectangle's interior is checked by the reader (hash_views / decode_view)."""
    w = 0
    while c0 + w < canvas and tokens[r0 * canvas + c0 + w] >= _OFF:
        w += 1
    if w == 0 or (c0 + w < canvas and tokens[r0 * canvas + c0 + w] != _EOS):
        return 0, 0
    h = 0
    while r0 + h < canvas and tokens[(r0 + h) * canvas + c0] >= _OFF:
        h += 1
    if r0 + h < canvas and tokens[(r0 + h) * canvas + c0] != _EOS:
        return 0, 0
    return h, w


@njit(cache=True, nogil=True)
def _fill_lut(perm, lut):
    """lut[token] = original colour (undoing the permutation); PAD/EOS/out-of-range -> 255."""
    lut[:] = _INVALID
    for c in range(10):
        lut[perm[c] + _OFF] = c


@njit(cache=True, nogil=True)
def _inverse_strides(d, th, tw, r0, c0, canvas):
    """Flat canvas offset of inverted cell (0, 0) and the steps for +1 row / +1 column of the inverted grid:
    the inverse dihedral map is affine, so the inner loop needs no per-cell branching."""
    di = inverse_id(d)
    a_r, a_c = source_index(di, 0, 0, th, tw)
    b_r, b_c = source_index(di, 1, 0, th, tw)
    e_r, e_c = source_index(di, 0, 1, th, tw)
    base = (r0 + a_r) * canvas + c0 + a_c
    return base, (b_r - a_r) * canvas + (b_c - a_c), (e_r - a_r) * canvas + (e_c - a_c)


@njit(cache=True, nogil=True)
def hash_views(tokens, r0, c0, dihedral, perms, canvas, hashes, heights, widths):
    """For N predicted canvases [N, canvas*canvas]: a 64-bit hash of each inverted grid and its (h, w);
    h = w = 0 marks an invalid decoding. The inverted grid is visited in its own row-major order through
    precomputed strides, and each row's cells are packed into 64-bit words (16 colours of 4 bits) before
    mixing, so the inner loop is a load, a table lookup and a shift."""
    N = tokens.shape[0]
    lut = np.empty(256, dtype=np.uint8)
    for n in range(N):
        th, tw = crop_extent(tokens[n], r0[n], c0[n], canvas)
        heights[n], widths[n], hashes[n] = 0, 0, 0
        if th == 0:
            continue
        d = dihedral[n]
        h, w = (tw, th) if swaps_axes(d) else (th, tw)
        _fill_lut(perms[n], lut)
        base, step_i, step_j = _inverse_strides(d, th, tw, r0[n], c0[n], canvas)
        row = tokens[n]
        acc = _mix(_mix(_SEED, np.uint64(h)), np.uint64(w))
        seen = np.uint8(0)
        head = min(w, 16)
        for i in range(h):
            # A row (<= 30 cells) is two 64-bit words of 4-bit colours: no per-cell counter or branch.
            p = base + i * step_i
            word = np.uint64(0)
            for j in range(head):
                v = lut[row[p + j * step_j]]
                seen |= v
                word = (word << np.uint64(4)) | np.uint64(v & np.uint8(15))
            acc = _mix(acc, word)
            if w > 16:
                word = np.uint64(0)
                for j in range(16, w):
                    v = lut[row[p + j * step_j]]
                    seen |= v
                    word = (word << np.uint64(4)) | np.uint64(v & np.uint8(15))
                acc = _mix(acc, word)
        if seen & np.uint8(128):  # a PAD/EOS token inside the rectangle
            continue
        hashes[n] = acc
        heights[n], widths[n] = h, w


@njit(cache=True, nogil=True)
def decode_view(tokens, r0, c0, dihedral, perm, canvas):
    """The inverted grid (uint8 [h, w]) of one predicted canvas, or a 0x0 array if invalid."""
    th, tw = crop_extent(tokens, r0, c0, canvas)
    if th == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    h, w = (tw, th) if swaps_axes(dihedral) else (th, tw)
    lut = np.empty(256, dtype=np.uint8)
    _fill_lut(perm, lut)
    base, step_i, step_j = _inverse_strides(dihedral, th, tw, r0, c0, canvas)
    out = np.empty((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            v = lut[tokens[base + i * step_i + j * step_j]]
            if v == _INVALID:
                return np.zeros((0, 0), dtype=np.uint8)
            out[i, j] = v
    return out
