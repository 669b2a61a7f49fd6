"""Synthetic ARC-like task families with exactly known rules, for tests that must show learning and for the
CPU demo. Spec: `synthetic:tasks=8,seed=0,size=6,demos=32,tests=4[,fixed=1][,families=flip_lr+gravity]`
(`fixed=1`: every grid is size x size; otherwise sides are drawn from 1..size).

Each task is one family with its own parameters (e.g. its colour map); inputs are random grids with a
black background, so held-out test inputs are new grids of a rule seen only through demonstrations.
"""
from __future__ import annotations

import numpy as np

from pipeline.data.tasks import DataError, Task


def _gravity(g: np.ndarray) -> np.ndarray:
    out = np.zeros_like(g)
    for c in range(g.shape[1]):
        col = g[:, c][g[:, c] != 0]
        if len(col):
            out[-len(col):, c] = col
    return out


def _make_rule(family: str, rng: np.random.Generator):
    if family == "flip_lr":
        return np.fliplr
    if family == "flip_ud":
        return np.flipud
    if family == "rot180":
        return lambda g: np.rot90(g, 2)
    if family == "transpose":
        return lambda g: g.T
    if family == "colour_map":
        perm = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        return lambda g: perm[g]
    if family == "recolour":
        c = np.uint8(rng.integers(1, 10))
        return lambda g: np.where(g != 0, c, 0).astype(np.uint8)
    if family == "gravity":
        return _gravity
    raise DataError(f"synthetic: unknown family '{family}' (known: {', '.join(FAMILIES)})")


FAMILIES = ("flip_lr", "flip_ud", "rot180", "transpose", "colour_map", "recolour", "gravity")


def _random_grid(rng: np.random.Generator, size: int, fixed: bool, square: bool) -> np.ndarray:
    """Half black background, half random colours 1..9; sides `size` (fixed) or drawn from 1..size."""
    h, w = (size, size) if fixed else rng.integers(1, size + 1, size=2)
    if square:  # transposed outputs keep the input's shape
        w = h
    g = rng.integers(1, 10, size=(h, w)).astype(np.uint8)
    return np.where(rng.random((h, w)) < 0.5, g, 0).astype(np.uint8)


def _parse(spec: str) -> dict:
    opts = {"tasks": 8, "seed": 0, "size": 6, "demos": 32, "tests": 4, "fixed": 0, "families": "+".join(FAMILIES)}
    for item in filter(None, spec.split(",")):
        key, sep, val = item.partition("=")
        if not sep or key not in opts:
            raise DataError(f"synthetic:{spec}: bad option '{item}' (known: {', '.join(opts)})")
        opts[key] = val if key == "families" else int(val)
    if not 1 <= opts["size"] <= 30:
        raise DataError(f"synthetic:{spec}: size must be 1..30")
    return opts


def synthetic_tasks(spec: str, train_on_test: bool = True) -> list[Task]:
    o = _parse(spec)
    families = o["families"].split("+")
    rng = np.random.default_rng(o["seed"])
    tasks = []
    for k in range(o["tasks"]):
        family = families[k % len(families)]
        rule = _make_rule(family, rng)

        grids = [_random_grid(rng, o["size"], bool(o["fixed"]), square=family == "transpose")
                 for _ in range(o["demos"] + o["tests"])]
        pairs = [(g, np.ascontiguousarray(rule(g))) for g in grids]
        train, test = pairs[:o["demos"]], pairs[o["demos"]:]
        tasks.append(Task(id=f"syn{o['seed']}_{k:03d}_{family}", train=train, test_inputs=[i for i, _ in test],
                          test_outputs=[t for _, t in test], source="synthetic", train_on_test=train_on_test))
    return tasks
