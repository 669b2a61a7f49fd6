"""Inverse of the augmentation: find a predicted grid's extent from its border, crop, undo translation,
dihedral transform and colour permutation. Hashing works on the inverted grid without materialising it,
so voting over 1000 views touches each predicted cell once."""
import numpy as np
from numba import njit

from kernels.dihedral import inverse_id, source_index, swaps_axes

_EOS, _OFF = 1, 2
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@njit(cache=True, nogil=True)
def crop_extent(tokens, r0, c0, canvas):
    """(h, w) of the grid whose top-left corner is at (r0, c0), or (0, 0) if no valid grid is there.

    The width is the run of colour tokens along the first row; rows count while all w cells are
    colours. Valid only if each run ends at the canvas edge or at an EOS token (the border)."""
    w = 0
    while c0 + w < canvas and tokens[r0 * canvas + c0 + w] >= _OFF:
        w += 1
    if w == 0 or (c0 + w < canvas and tokens[r0 * canvas + c0 + w] != _EOS):
        return 0, 0
    h = 0
    while r0 + h < canvas:
        base = (r0 + h) * canvas + c0
        full = True
        for j in range(w):
            if tokens[base + j] < _OFF:
                full = False
                break
        if not full:
            break
        h += 1
    if r0 + h < canvas and tokens[(r0 + h) * canvas + c0] != _EOS:
        return 0, 0
    return h, w


@njit(cache=True, nogil=True)
def _inverse_perm(perm):
    inv = np.zeros(10, dtype=np.uint8)
    for c in range(10):
        inv[perm[c]] = c
    return inv


@njit(cache=True, nogil=True)
def _hash_inverted(tokens, r0, c0, canvas, th, tw, d, inv_perm):
    di = inverse_id(d)
    h, w = (tw, th) if swaps_axes(d) else (th, tw)
    acc = _FNV_OFFSET
    acc = (acc ^ np.uint64(h)) * _FNV_PRIME
    acc = (acc ^ np.uint64(w)) * _FNV_PRIME
    for i in range(h):
        for j in range(w):
            si, sj = source_index(di, i, j, th, tw)
            v = inv_perm[tokens[(r0 + si) * canvas + c0 + sj] - _OFF]
            acc = (acc ^ np.uint64(v)) * _FNV_PRIME
    return acc


@njit(cache=True, nogil=True)
def hash_views(tokens, r0, c0, dihedral, perms, canvas, hashes, heights, widths):
    """For N predicted canvases [N, canvas*canvas]: hash of each inverted grid and its (h, w);
    h = w = 0 marks an invalid decoding (no border, empty)."""
    N = tokens.shape[0]
    for n in range(N):
        th, tw = crop_extent(tokens[n], r0[n], c0[n], canvas)
        if th == 0:
            heights[n], widths[n], hashes[n] = 0, 0, 0
            continue
        inv = _inverse_perm(perms[n])
        hashes[n] = _hash_inverted(tokens[n], r0[n], c0[n], canvas, th, tw, dihedral[n], inv)
        if swaps_axes(dihedral[n]):
            heights[n], widths[n] = tw, th
        else:
            heights[n], widths[n] = th, tw


@njit(cache=True, nogil=True)
def decode_view(tokens, r0, c0, dihedral, perm, canvas):
    """The inverted grid (uint8 [h, w]) of one predicted canvas, or a 0x0 array if invalid."""
    th, tw = crop_extent(tokens, r0, c0, canvas)
    if th == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    inv = _inverse_perm(perm)
    di = inverse_id(dihedral)
    h, w = (tw, th) if swaps_axes(dihedral) else (th, tw)
    out = np.empty((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            si, sj = source_index(di, i, j, th, tw)
            out[i, j] = inv[tokens[(r0 + si) * canvas + c0 + sj] - _OFF]
    return out
