"""Plain-NumPy/Python references for the kernels, written the obvious way (np.rot90, dict counting).
Tests compare each kernel with these; they are also the spec of the encoding."""
import numpy as np

from kernels import DIHEDRAL_INVERSE

PAD, EOS, OFF = 0, 1, 2


def dihedral_ref(grid: np.ndarray, d: int) -> np.ndarray:
    return [lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 3),
            np.fliplr, np.flipud, lambda a: a.T, lambda a: np.fliplr(np.rot90(a, 1))][d](grid)


def augment_grid_ref(grid: np.ndarray, d: int, perm: np.ndarray) -> np.ndarray:
    return dihedral_ref(perm[grid], d)  # colour first, then dihedral (they commute)


def invert_augment_ref(grid: np.ndarray, d: int, perm: np.ndarray) -> np.ndarray:
    """The grid g with augment_grid_ref(g, d, perm) == grid: the inverse dihedral, then the inverse colour map."""
    return np.argsort(perm).astype(np.uint8)[dihedral_ref(grid, DIHEDRAL_INVERSE[d])]


def encode_grid_ref(grid: np.ndarray, r0: int, c0: int, canvas: int) -> np.ndarray:
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    h, w = grid.shape
    out[r0:r0 + h, c0:c0 + w] = grid + OFF
    if r0 + h < canvas:
        out[r0 + h, c0:c0 + w] = EOS
    if c0 + w < canvas:
        out[r0:r0 + h, c0 + w] = EOS
    return out.reshape(-1)


def crop_ref(t: np.ndarray) -> tuple[int, int]:
    """The official TRM crop (evaluators/arc.py `_crop`) of a [rows, cols] canvas anchored at (0, 0): scan rows;
    a row's width is its run of leading colour tokens, capped by the previous row's; largest area, first on ties."""
    best, size, width = 0, (0, 0), t.shape[1]
    for r in range(1, t.shape[0] + 1):
        for c in range(width):
            if not OFF <= t[r - 1, c] <= OFF + 9:
                width = c
                break
        if r * width > best:
            best, size = r * width, (r, width)
    return size


def decode_ref(tokens: np.ndarray, r0: int, c0: int, d: int, perm: np.ndarray, canvas: int):
    """Inverse of encode+augment: the official crop from (r0, c0), then inverse dihedral and colour map. None
    when the crop is empty, or when a translated view's crop reaches the canvas edge along a translated axis."""
    h, w = crop_ref(tokens.reshape(canvas, canvas)[r0:, c0:])
    if h == 0 or (r0 > 0 and r0 + h == canvas) or (c0 > 0 and c0 + w == canvas):
        return None
    g = tokens.reshape(canvas, canvas)[r0:r0 + h, c0:c0 + w].astype(np.int64) - OFF
    return invert_augment_ref(g, d, perm)


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
