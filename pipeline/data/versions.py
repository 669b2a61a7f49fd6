"""Which augmented versions of a task are distinct, judged as the official TRM builder judges them, and the
`per_augmentation` puzzle-id table built from them (`per_augmentation_ids`).

The official builder (dataset/build_arc_dataset.py) keeps the original task plus up to K augmentations
(dihedral transform x permutation of colours 1..9), drawing at most 5K random tries and dropping a try
whose augmented task equals one already kept. Two tasks are equal when their *multisets* of (input, output)
pairs are equal (a sorted list of per-pair grid hashes, shape included), over every demonstration and test
pair; a test pair with no known output counts as (input, [[0]]), the builder's dummy. So a transform that
only reorders the pairs (task 4522001f: its demonstrations are rotations of each other) is a duplicate too.

Hashing here replaces the builder's SHA-256 of every augmented grid by Zobrist hashing, linear in the colour
map: a grid's hash is the wrapping sum over its cells of Z[cell position, colour] plus a term for its shape.
Precomputing, for each dihedral d, H_d[c, k] = sum of Z[pos, k] over the cells of colour c gives the hash of
any colour map p as sum_c H_d[c, p[c]], so a try costs ~10 additions per grid instead of a pass over its
cells. Distinct grids collide with probability 2^-64.
"""
from __future__ import annotations

import numpy as np

from kernels.reference import dihedral_ref
from pipeline.data.packed import PackedTasks
from pipeline.data.puzzle_ids import PerAugmentationIds, random_perms

_RNG = np.random.default_rng(0x5EED_7A5C)
_Z = _RNG.integers(0, 2**64, size=(30 * 30, 10), dtype=np.uint64, endpoint=False)
_ZSHAPE = _RNG.integers(0, 2**64, size=(31, 31), dtype=np.uint64, endpoint=False)
DUMMY_OUTPUT = np.zeros((1, 1), np.uint8)  # the builder's output for a test input without a known output


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (element-wise, wrapping): makes the pair hash a non-linear function of its grids."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _grid_tables(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H [8, 10, 10], shape term [8]) of one grid: H[d, c, k] sums Z[pos, k] over the cells of colour c
    after dihedral d."""
    tables = np.zeros((8, 10, 10), np.uint64)
    shape = np.empty(8, np.uint64)
    for d in range(8):
        g = dihedral_ref(grid, d)
        h, w = g.shape
        pos = (np.arange(h)[:, None] * 30 + np.arange(w)[None, :]).ravel()
        np.add.at(tables[d], g.ravel().astype(np.int64), _Z[pos])
        shape[d] = _ZSHAPE[h, w]
    return tables, shape


class VersionHasher:
    """Hashes of augmented versions (dihedral d, colour map perm) of one task given as its (input, output) pairs."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        grids = [g for pair in pairs for g in pair]
        tabs = [_grid_tables(g) for g in grids]
        self.tables = np.stack([t for t, _ in tabs])  # [G, 8, 10, 10], grid 2i = input of pair i, 2i+1 = output
        self.shapes = np.stack([s for _, s in tabs])  # [G, 8]
        self.colours = np.unique(np.concatenate([g.ravel() for g in grids])).astype(np.int64)

    def __call__(self, d: np.ndarray, perms: np.ndarray) -> np.ndarray:
        """uint64 hash of the augmented task for each (d[i], perms[i]); equal hashes = the same task."""
        c = self.colours
        t = self.tables[:, d[:, None], c[None, :], perms[:, c].astype(np.int64)]  # [G, n, colours]
        grid = t.sum(axis=2, dtype=np.uint64) + self.shapes[:, d]  # [G, n]
        pair = _mix(grid[0::2] ^ _mix(grid[1::2]))
        return pair.sum(axis=0, dtype=np.uint64)  # a sum: the order of the pairs does not matter


def distinct_versions(hasher: VersionHasher, draw, k: int, max_tries: int) -> tuple[np.ndarray, np.ndarray]:
    """(dihedral [n], perms [n, 10]) of the original (first) and up to k distinct augmentations, in the order
    they were drawn. `draw(n)` returns n random tries (d, perms); at most `max_tries` are drawn, each chunk only
    as many as are still missing, so a task without symmetry costs k+1 hashes."""
    d0, p0 = np.zeros(1, np.int64), np.arange(10, dtype=np.uint8)[None, :]
    seen = {int(hasher(d0, p0)[0])}
    keep_d, keep_p, tried = [d0], [p0], 0
    while len(seen) < k + 1 and tried < max_tries:
        n = min(max_tries - tried, k + 1 - len(seen))
        cd, cp = draw(n)
        tried += n
        new = []
        for i, h in enumerate(hasher(cd, cp).tolist()):
            if h not in seen:
                seen.add(h)
                new.append(i)
        keep_d.append(cd[new]), keep_p.append(cp[new])
    return np.concatenate(keep_d), np.concatenate(keep_p)


def _task_pairs(packed: PackedTasks, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (input, output) pair of task t as the official builder sees it: demonstrations and test pairs,
    a test input without a known output paired with the builder's dummy [[0]]."""
    s, n = packed.task_ex_start[t], packed.task_ex_count[t]
    pairs = [(packed.grid(i), packed.grid(o)) for i, o in zip(packed.ex_in[s:s + n], packed.ex_out[s:s + n])]
    for r in np.flatnonzero((packed.test_task == t) & ~packed.test_trainable):  # trainable tests are examples already
        o = packed.test_out[r]
        pairs.append((packed.grid(packed.test_in[r]), packed.grid(o) if o >= 0 else DUMMY_OUTPUT))
    return pairs


def per_augmentation_ids(packed: PackedTasks, k: int, seed: int, dihedral: bool = True, colour_perm: bool = True,
                         tries_per_aug: int = 5) -> PerAugmentationIds:
    """The official table: the original plus up to k distinct augmentations of every task (k = data.augs_per_task)."""
    rng = np.random.default_rng([seed, 0xA06])

    def draw(n):
        return rng.integers(0, 8 if dihedral else 1, size=n), random_perms(rng, n, colour_perm)

    tables_d, tables_p = [], []
    for t in range(packed.num_tasks):
        if dihedral or colour_perm:
            d, p = distinct_versions(VersionHasher(_task_pairs(packed, t)), draw, k, tries_per_aug * k)
        else:  # nothing to draw: the original is the only version
            d, p = np.zeros(1, np.int64), np.arange(10, dtype=np.uint8)[None, :]
        tables_d.append(d), tables_p.append(p)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in tables_d])])
    empty_p = np.zeros((0, 10), np.uint8)
    return PerAugmentationIds(np.concatenate(tables_d) if tables_d else np.zeros(0, np.int64),
                              np.concatenate(tables_p) if tables_p else empty_p, offsets)
