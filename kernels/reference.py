"""Plain-NumPy/Python references for the kernels, written the obvious way (np.rot90, dict counting).
Tests compare each kernel with these; they are also the spec of the encoding."""
import numpy as np

PAD, EOS, OFF = 0, 1, 2


def dihedral_ref(grid: np.ndarray, d: int) -> np.ndarray:
    return [lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 3),
            np.fliplr, np.flipud, lambda a: a.T, lambda a: np.fliplr(np.rot90(a, 1))][d](grid)


def augment_grid_ref(grid: np.ndarray, d: int, perm: np.ndarray) -> np.ndarray:
    return dihedral_ref(perm[grid], d)  # colour first, then dihedral (they commute)


def encode_grid_ref(grid: np.ndarray, r0: int, c0: int, canvas: int) -> np.ndarray:
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    h, w = grid.shape
    out[r0:r0 + h, c0:c0 + w] = grid + OFF
    if r0 + h < canvas:
        out[r0 + h, c0:c0 + w] = EOS
    if c0 + w < canvas:
        out[r0:r0 + h, c0 + w] = EOS
    return out.reshape(-1)


def decode_ref(tokens: np.ndarray, r0: int, c0: int, d: int, perm: np.ndarray, canvas: int):
    """Inverse of encode+augment; None when no bordered, all-colour rectangle starts at (r0, c0)."""
    t = tokens.reshape(canvas, canvas)
    w = 0
    while c0 + w < canvas and t[r0, c0 + w] >= OFF:
        w += 1
    if w == 0 or (c0 + w < canvas and t[r0, c0 + w] != EOS):
        return None
    h = 0
    while r0 + h < canvas and t[r0 + h, c0] >= OFF:
        h += 1
    if r0 + h < canvas and t[r0 + h, c0] != EOS:
        return None
    g = t[r0:r0 + h, c0:c0 + w].astype(np.int64) - OFF
    if (g < 0).any() or (g > 9).any():
        return None
    inv_d = (0, 3, 2, 1, 4, 5, 6, 7)[d]
    return np.argsort(perm)[dihedral_ref(g, inv_d)].astype(np.uint8)


def vote_ref(grids: list, conf: list, k: int = 2):
    """grids: inverted views of one test input (None = invalid). Returns [(grid, count, mean_conf)] best first."""
    stats: dict = {}
    for n, (g, c) in enumerate(zip(grids, conf)):
        if g is None:
            continue
        key = (g.shape, g.tobytes())
        cnt, s, first, grid = stats.get(key, (0, 0.0, n, g))
        stats[key] = (cnt + 1, s + c, first, grid)
    ranked = sorted(stats.values(), key=lambda v: (-v[0], -v[1] / v[0], v[2]))
    return [(v[3], v[0], v[1] / v[0]) for v in ranked[:k]]
