"""Forward augmentation + encoding: packed grids -> augmented token canvases, batched.

Grids live packed in one flat uint8 array (`cells`) with per-grid `starts`, `heights`, `widths`, so a
whole task collection is a few MB and any augmented example is produced on demand.
"""
from numba import njit

from kernels.dihedral import source_index, swaps_axes

_PAD, _EOS, _OFF = 0, 1, 2


@njit(cache=True, nogil=True)
def _write_grid(cells, start, h, w, d, perm, r0, c0, canvas, dst):
    th, tw = (w, h) if swaps_axes(d) else (h, w)
    for i in range(th):
        base = (r0 + i) * canvas + c0
        for j in range(tw):
            si, sj = source_index(d, i, j, h, w)
            dst[base + j] = perm[cells[start + si * w + sj]] + _OFF
    # End-of-grid border: a row below and a column right of the grid, the corner left PAD (as TRM).
    if r0 + th < canvas:
        base = (r0 + th) * canvas + c0
        for j in range(tw):
            dst[base + j] = _EOS
    if c0 + tw < canvas:
        for i in range(th):
            dst[(r0 + i) * canvas + c0 + tw] = _EOS


@njit(cache=True, nogil=True)
def encode_pairs(cells, starts, heights, widths, in_idx, out_idx, dihedral, perms, u_row, u_col, canvas,
                 inputs, labels, r0_out, c0_out):
    """Encode B (input, output) pairs with augmentations into `inputs`/`labels` [B, canvas*canvas] uint8.

    `out_idx[b] < 0` means no known output (a hidden test input): its label canvas is all PAD.
    The translation is drawn from `u_row/u_col` in [0, 1): the grid's top-left corner goes to
    floor(u * (canvas - max(h_in, h_out) + 1)), the same offset for input and output (as TRM).
    Pass zeros for no translation. The offsets used are written to `r0_out/c0_out`.
    """
    B = in_idx.shape[0]
    for b in range(B):
        gi, go = in_idx[b], out_idx[b]
        d = dihedral[b]
        hi, wi = heights[gi], widths[gi]
        mh, mw = (wi, hi) if swaps_axes(d) else (hi, wi)
        if go >= 0:
            ho, wo = heights[go], widths[go]
            th, tw = (wo, ho) if swaps_axes(d) else (ho, wo)
            mh, mw = max(mh, th), max(mw, tw)
        r0 = int(u_row[b] * (canvas - mh + 1))
        c0 = int(u_col[b] * (canvas - mw + 1))
        r0_out[b], c0_out[b] = r0, c0
        inputs[b, :] = _PAD
        labels[b, :] = _PAD
        _write_grid(cells, starts[gi], hi, wi, d, perms[b], r0, c0, canvas, inputs[b])
        if go >= 0:
            _write_grid(cells, starts[go], heights[go], widths[go], d, perms[b], r0, c0, canvas, labels[b])
