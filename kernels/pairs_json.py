"""Reading pair-list JSON straight from bytes: a file that is a JSON list of {"input": GRID, "output": GRID}
objects (NVARC's synthetic puzzles, re-arc), GRID a list of equal rows of single digits 0..9, 1..30 per side.

json.loads + numpy costs ~2.6 ms for a 30-pair file (100k puzzles: ~5 minutes on one core); this scanner reads
many files' bytes in one call, validating as it goes, and writes the grids packed (cells, starts, heights,
widths: the layout of pipeline/data/packed.py PackedTasks). It takes only that strict shape (any whitespace, the two
keys in either order); anything else (another key, a number that is not one digit, a ragged or empty grid,
a grid over 30, broken JSON) rejects the file, which then goes the slow way: json.loads and the validation
that names the problem (pipeline/data/tasks.py). `parse_pairs_ref` is the plain reference it is tested against.
"""
import json

import numpy as np
from numba import njit

_MAX_SIDE = 30
_INPUT = np.frombuffer(b'input"', np.uint8)
_OUTPUT = np.frombuffer(b'output"', np.uint8)


@njit(cache=True)
def _ws(buf, i, hi):
    while i < hi and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    return i


@njit(cache=True)
def _match(buf, i, hi, word):
    if i + len(word) > hi:
        return False
    for k in range(len(word)):
        if buf[i + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _grid(buf, i, hi, cells, c):
    """One grid at buf[i]; returns (next i, next cell, h, w) with h = -1 when it is not a valid grid. The cell loop
    skips spaces inline and calls nothing (a call per cell made it 10x slower); other whitespace takes _ws."""
    if i >= hi or buf[i] != 91:  # '['
        return i, c, -1, 0
    i = _ws(buf, i + 1, hi)
    h, w = 0, -1
    while True:
        if i >= hi or buf[i] != 91 or c + _MAX_SIDE > len(cells):
            return i, c, -1, 0
        i += 1
        row = 0
        while True:
            while i < hi and buf[i] == 32:
                i += 1
            if i < hi and buf[i] < 32:  # newlines, tabs: indented files
                i = _ws(buf, i, hi)
            if i >= hi:
                return i, c, -1, 0
            v = np.int64(buf[i]) - 48
            if v < 0 or v > 9 or row == _MAX_SIDE:
                return i, c, -1, 0
            cells[c] = v
            c += 1
            row += 1
            i += 1
            while i < hi and buf[i] == 32:
                i += 1
            if i < hi and buf[i] < 32:
                i = _ws(buf, i, hi)
            if i >= hi:
                return i, c, -1, 0
            b = buf[i]
            i += 1
            if b == 44:  # ','
                continue
            if b == 93:  # ']'
                break
            return i, c, -1, 0
        if w >= 0 and row != w:
            return i, c, -1, 0
        w = row
        h += 1
        if h > _MAX_SIDE:
            return i, c, -1, 0
        i = _ws(buf, i, hi)
        if i < hi and buf[i] == 44:
            i = _ws(buf, i + 1, hi)
        elif i < hi and buf[i] == 93:
            return i + 1, c, h, w
        else:
            return i, c, -1, 0


@njit(cache=True)
def _file(buf, lo, hi, word_in, word_out, cells, c, starts, heights, widths, g):
    """One file's pairs into the outputs from cell c and grid g; returns (pairs, next cell), pairs = -1 when the
    file is not in the strict shape (nothing it wrote counts)."""
    i = _ws(buf, lo, hi)
    if i >= hi or buf[i] != 91:
        return -1, c
    i = _ws(buf, i + 1, hi)
    k = 0
    while True:
        if i >= hi or buf[i] != 123 or g + 2 * k + 1 >= len(starts):  # '{'
            return -1, c
        i = _ws(buf, i + 1, hi)
        seen = 0
        while True:
            if i >= hi or buf[i] != 34:  # '"'
                return -1, c
            if _match(buf, i + 1, hi, word_in):
                role, i = 0, i + 1 + len(word_in)
            elif _match(buf, i + 1, hi, word_out):
                role, i = 1, i + 1 + len(word_out)
            else:
                return -1, c
            if seen & (1 << role):
                return -1, c
            seen |= 1 << role
            i = _ws(buf, i, hi)
            if i >= hi or buf[i] != 58:  # ':'
                return -1, c
            i = _ws(buf, i + 1, hi)
            slot = g + 2 * k + role
            starts[slot] = c
            i, c, h, w = _grid(buf, i, hi, cells, c)
            if h < 0:
                return -1, c
            heights[slot], widths[slot] = h, w
            i = _ws(buf, i, hi)
            if i < hi and buf[i] == 44:
                i = _ws(buf, i + 1, hi)
            elif i < hi and buf[i] == 125 and seen == 3:  # '}'
                i += 1
                break
            else:
                return -1, c
        k += 1
        i = _ws(buf, i, hi)
        if i < hi and buf[i] == 44:
            i = _ws(buf, i + 1, hi)
        elif i < hi and buf[i] == 93:
            return (k, c) if _ws(buf, i + 1, hi) == hi else (-1, c)
        else:
            return -1, c


@njit(cache=True, nogil=True)
def parse_pair_files(buf, file_start, word_in, word_out, cells, starts, heights, widths, pos, pairs, first_grid):
    """Parse the files whose bytes are buf[file_start[f]:file_start[f + 1]], in order. Grids go to cells/starts/
    heights/widths from the write positions pos = [cell, grid] (updated): grid 2k of a file is its pair k's
    input, 2k + 1 its output. pairs[f] = the file's pair count, or -1 if it was rejected (then it wrote nothing);
    first_grid[f] = the index of its first grid."""
    for f in range(len(file_start) - 1):
        c0, g0 = pos[0], pos[1]
        n, c = _file(buf, file_start[f], file_start[f + 1], word_in, word_out, cells, c0, starts, heights, widths, g0)
        pairs[f], first_grid[f] = n, g0
        if n >= 0:
            pos[0], pos[1] = c, g0 + 2 * n


def parse_files(buf: np.ndarray, file_start: np.ndarray, cells: np.ndarray, starts: np.ndarray, heights: np.ndarray,
                widths: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, first_grid) of parse_pair_files; `cells` needs len(buf) // 2 + 1 entries and the grid arrays
    len(buf) // 13 + 2 from the write positions on (a cell takes at least 2 bytes, a grid 13)."""
    pairs, first = np.empty(len(file_start) - 1, np.int64), np.empty(len(file_start) - 1, np.int64)
    parse_pair_files(buf, file_start, _INPUT, _OUTPUT, cells, starts, heights, widths, pos, pairs, first)
    return pairs, first


def parse_pairs_ref(data: bytes) -> list[np.ndarray] | None:
    """The reference: grids [input 0, output 0, input 1, ...] of a file in the strict shape, else None."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(obj, list) or not obj:
        return None
    grids = []
    for pair in obj:
        if not isinstance(pair, dict) or sorted(pair) != ["input", "output"]:
            return None
        for key in ("input", "output"):
            g = pair[key]
            if not (isinstance(g, list) and g and all(isinstance(r, list) and r for r in g)):
                return None
            if len({len(r) for r in g}) != 1 or len(g) > _MAX_SIDE or len(g[0]) > _MAX_SIDE:
                return None
            if not all(type(v) is int and 0 <= v <= 9 for r in g for v in r):
                return None
            grids.append(np.array(g, np.uint8))
    return grids
