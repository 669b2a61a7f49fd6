"""Canonical hashes of (input, output) pairs, equal for a pair and any of its augmented versions: the 8 dihedral
transforms and every permutation of colours 1..9 (0 fixed, as the augmentation).

For each dihedral d both grids are transformed, then colours are renamed by first appearance in a fixed scan
(the input row by row, then the output; 0 stays 0, the next new colour becomes 1, ...), and the shapes and renamed
cells are hashed (FNV-1a over the values, a splitmix64 finaliser); the pair's hash is the minimum over the 8. Two
versions of one pair give the same 8 renamed sequences, hence the same minimum. Used by the contamination check
(pipeline/overlap.py), which confirms every hash match on the grids themselves. `canonical_hash_ref` is the plain
reference the kernel is tested against.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from kernels.dihedral import source_index, swaps_axes
from kernels.reference import dihedral_ref

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SEPARATOR = 0xFF  # between the input and the output (no colour or side takes this value)
_PAIRS_PER_THREAD = 50_000  # fewer pairs than this per thread are hashed on fewer threads


@njit(cache=True, inline="always")
def _fnv(x, v):
    return (x ^ np.uint64(v)) * _FNV_PRIME


@njit(cache=True, inline="always")
def _finish(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _grid(cells, start, h, w, d, remap, nxt, x):
    th, tw = (w, h) if swaps_axes(d) else (h, w)
    x = _fnv(_fnv(x, th), tw)
    for i in range(th):
        for j in range(tw):
            si, sj = source_index(d, i, j, h, w)
            c = cells[start + si * w + sj]
            if remap[c] < 0:
                remap[c] = nxt
                nxt += 1
            x = _fnv(x, remap[c])
    return x, nxt


@njit(cache=True, nogil=True)
def canonical_pair_hashes(cells, starts, heights, widths, in_idx, out_idx, out):
    """out[k] = the canonical hash of the pair (grid in_idx[k], grid out_idx[k]); out_idx[k] < 0 hashes the
    input alone."""
    remap = np.empty(10, np.int64)
    for k in range(len(in_idx)):
        gi, go = in_idx[k], out_idx[k]
        best = np.uint64(0xFFFFFFFFFFFFFFFF)
        for d in range(8):
            remap[:] = -1
            remap[0] = 0
            x, nxt = _grid(cells, starts[gi], heights[gi], widths[gi], d, remap, 1, _FNV_OFFSET)
            if go >= 0:
                x, nxt = _grid(cells, starts[go], heights[go], widths[go], d, remap, nxt, _fnv(x, _SEPARATOR))
            x = _finish(x)
            if x < best:
                best = x
        out[k] = best


def pair_hashes(cells, starts, heights, widths, in_idx, out_idx, threads: int = 0) -> np.ndarray:
    """canonical_pair_hashes of every pair, in `threads` threads (0: one per CPU core, at most 32) when there are
    many: the kernel releases the GIL, so 3.1M pairs (NVARC's puzzles, ~40 s on one core) split across cores."""
    in_idx, out_idx = np.asarray(in_idx, np.int64), np.asarray(out_idx, np.int64)
    out = np.empty(len(in_idx), np.uint64)
    canonical_pair_hashes(cells, starts, heights, widths, in_idx[:0], out_idx[:0], out[:0])  # compile once, here
    threads = max(1, min(threads or min(os.cpu_count() or 1, 32, len(in_idx) // _PAIRS_PER_THREAD), len(in_idx)))
    bounds = np.linspace(0, len(in_idx), threads + 1).astype(np.int64)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: canonical_pair_hashes(cells, starts, heights, widths, in_idx[bounds[k]:bounds[k + 1]],
                                                      out_idx[bounds[k]:bounds[k + 1]], out[bounds[k]:bounds[k + 1]]),
                      range(threads)))
    return out


def canonical_hash_ref(grid_in: np.ndarray, grid_out: np.ndarray | None) -> int:
    """The reference: the same hash written the obvious way (np.rot90 & co., a dict of first appearances)."""
    mask = (1 << 64) - 1

    def fnv(x, v):
        return ((x ^ v) * 0x100000001B3) & mask

    def finish(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    best = mask
    for d in range(8):
        grids = [dihedral_ref(grid_in, d)] + ([] if grid_out is None else [dihedral_ref(grid_out, d)])
        names = {0: 0}
        x = 0xCBF29CE484222325
        for n, g in enumerate(grids):
            if n:
                x = fnv(x, _SEPARATOR)
            x = fnv(fnv(x, g.shape[0]), g.shape[1])
            for c in g.ravel().tolist():
                x = fnv(x, names.setdefault(c, len(names)))
        best = min(best, finish(x))
    return best
