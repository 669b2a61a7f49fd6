"""Inverse of the augmentation: find a predicted grid's extent, crop, undo translation, dihedral transform
and colour permutation. Hashing identifies the inverted grid straight from the canvas without
materialising it, so voting over 1000 views touches each predicted cell a couple of times.

Extent rule (the official TRM crop, evaluators/arc.py `_crop`, started at the view's offset (r0, c0)):
scan rows down from r0; a row's width is the number of leading colour tokens from c0, never more than
the previous row's width; the grid is the top-left rectangle of largest area seen (the first on ties).
A missing or damaged EOS border therefore costs nothing and a damaged cell shortens the grid. Two
things make a view invalid (it casts no vote): an empty rectangle, and, for a translated view, a
rectangle that reaches the canvas edge along an axis with a non-zero offset (the grid ran into the
edge where its EOS border should be, so it was clipped). An untranslated 30-wide grid is fine.
"""
import numpy as np
from numba import njit

from kernels.dihedral import inverse_id, source_index, swaps_axes

_OFF, _LAST = 2, 11  # colour tokens
_INVALID = np.uint8(255)
_SEED = np.uint64(14695981039346656037)
_PRIME = np.uint64(1099511628211)


@njit(cache=True, nogil=True, inline="always")
def _mix(acc, word):
    acc = (acc ^ word) * _PRIME
    return acc ^ (acc >> np.uint64(29))


@njit(cache=True, nogil=True, inline="always")
def _is_colour(t):
    return t >= _OFF and t <= _LAST


@njit(cache=True, nogil=True, inline="always")
def _clipped(h, w, r0, c0, canvas):
    """A translated grid reaching the canvas edge along a translated axis (where its EOS border should be)."""
    return (r0 > 0 and r0 + h == canvas) or (c0 > 0 and c0 + w == canvas)


@njit(cache=True, nogil=True)
def crop_extent(tokens, r0, c0, canvas):
    """(h, w) of the official crop at (r0, c0) (module docstring), or (0, 0) when the view is invalid.
    Every cell of the rectangle is a colour token."""
    best_h = best_w = best = 0
    w = canvas - c0
    rows = canvas - r0
    for i in range(rows):
        p = (r0 + i) * canvas + c0
        j = 0
        while j < w and _is_colour(tokens[p + j]):
            j += 1
        w = j
        if (i + 1) * w > best:
            best, best_h, best_w = (i + 1) * w, i + 1, w
        if rows * w <= best:  # no later row can give a larger area (this also stops at an empty row)
            break
    if best == 0 or _clipped(best_h, best_w, r0, c0, canvas):
        return 0, 0
    return best_h, best_w


@njit(cache=True, nogil=True)
def _runs(tokens, r0, c0, canvas):
    """(colour run down column c0, colour run along row r0) from (r0, c0). When that rectangle is all colour
    it is exactly the official crop (every row is at least as wide, and the row below starts with a
    non-colour or is past the edge), which is the common case; hash_views checks and falls back."""
    w = 0
    while c0 + w < canvas and _is_colour(tokens[r0 * canvas + c0 + w]):
        w += 1
    h = 0
    while r0 + h < canvas and _is_colour(tokens[(r0 + h) * canvas + c0]):
        h += 1
    return h, w


@njit(cache=True, nogil=True)
def _fill_lut(perm, lut):
    """lut[token] = original colour (undoing the permutation); other tokens (never inside a crop) -> 255."""
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
def _hash_rect(row, lut, d, th, tw, r0, c0, canvas):
    """Hash of the inverted (h, w) grid of the th x tw canvas rectangle at (r0, c0), and the OR of its looked-up
    cells (bit 7 set: a non-colour token inside). The inverted grid is visited in its own row-major order
    through precomputed strides, and each row is packed into 64-bit words (16 colours of 4 bits) before
    mixing, so the inner loop is a load, a table lookup and a shift."""
    h, w = (tw, th) if swaps_axes(d) else (th, tw)
    base, step_i, step_j = _inverse_strides(d, th, tw, r0, c0, canvas)
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
    return acc, seen


@njit(cache=True, nogil=True)
def hash_views(tokens, r0, c0, dihedral, perms, canvas, hashes, heights, widths):
    """For N predicted canvases [N, canvas*canvas]: a 64-bit hash of each inverted grid and its (h, w);
    h = w = 0 marks an invalid decoding. The extent is tried from the two runs at (r0, c0) first (one pass
    over the grid when it is well formed) and found by the full official scan only when that fails."""
    N = tokens.shape[0]
    lut = np.empty(256, dtype=np.uint8)
    for n in range(N):
        heights[n], widths[n], hashes[n] = 0, 0, 0
        row, d, a, b = tokens[n], dihedral[n], r0[n], c0[n]
        th, tw = _runs(row, a, b, canvas)
        if th == 0:  # (r0, c0) is not a colour: the crop is empty
            continue
        _fill_lut(perms[n], lut)
        acc, seen = _hash_rect(row, lut, d, th, tw, a, b, canvas)
        if seen & np.uint8(128):
            th, tw = crop_extent(row, a, b, canvas)
            if th == 0:
                continue
            acc, seen = _hash_rect(row, lut, d, th, tw, a, b, canvas)
        elif _clipped(th, tw, a, b, canvas):
            continue
        hashes[n] = acc
        heights[n], widths[n] = (tw, th) if swaps_axes(d) else (th, tw)


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
            out[i, j] = lut[tokens[base + i * step_i + j * step_j]]
    return out
