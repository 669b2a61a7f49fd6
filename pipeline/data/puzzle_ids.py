"""Puzzle-id schemes: which puzzle-embedding row an example of a task under an augmentation uses (the official
table of distinct augmentations per task, `per_augmentation`, built by data.versions.per_augmentation_ids; or one
row per task, `per_task`), the colour permutations they draw, and how a scheme is rebuilt from its stored state."""
from __future__ import annotations

from typing import Protocol

import numpy as np


def random_perms(rng: np.random.Generator, n: int, enabled: bool = True) -> np.ndarray:
    """n colour permutations as uint8 [n, 10] lookup tables with 0 fixed."""
    perms = np.tile(np.arange(10, dtype=np.uint8), (n, 1))
    if enabled and n:
        perms[:, 1:] = np.argsort(rng.random((n, 9)), axis=1) + 1
    return perms


class PuzzleIdScheme(Protocol):
    """Maps (task, augmentation) to a puzzle-embedding row. Id 0 is the blank id used for padding rows."""
    name: str
    num_ids: int

    def sample(self, tasks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, dihedral ids, colour perms) for one random augmentation of each task index."""

    def views(self, task: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, dihedral, perms) of n inference views of a task; view 0 is the identity."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays that rebuild the scheme exactly (saved with every checkpoint)."""


class PerAugmentationIds:
    """The official scheme: each task's original plus up to K distinct augmentations, each its own id.

    Ids go task by task, the original first (view 0 is always the identity), then the augmentations in the
    order they were drawn, as in the official build's identifiers.json. Augmentations that give a task
    equal to one already kept are dropped exactly as the official builder drops them (built by
    pipeline/data/versions.py per_augmentation_ids: same multiset of (input, output) pairs; at most 5K tries). The table is kept in the checkpoint
    (state_dict), so prediction never needs the training data to rebuild it; an official identifiers.json
    converts into one (pipeline/nn/official.py)."""

    name = "per_augmentation"

    def __init__(self, dihedral: np.ndarray, perms: np.ndarray, offsets: np.ndarray):
        self.dihedral, self.perms, self.offsets = dihedral.astype(np.int64), perms.astype(np.uint8), offsets.astype(np.int64)
        self.counts = np.diff(self.offsets)
        self.num_ids = 1 + int(self.offsets[-1])

    def sample(self, tasks, rng):
        idx = self.offsets[tasks] + (rng.random(len(tasks)) * self.counts[tasks]).astype(np.int64)
        return 1 + idx, self.dihedral[idx], self.perms[idx]

    def views(self, task, n, rng):
        idx = self.offsets[task] + np.arange(n) % self.counts[task]
        return 1 + idx, self.dihedral[idx], self.perms[idx]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"dihedral": self.dihedral, "perms": self.perms, "offsets": self.offsets}


class PerTaskIds:
    """One id per task; augmentations are drawn freely (embeddings grow with tasks, not tasks x augmentations)."""

    name = "per_task"

    def __init__(self, num_tasks: int, dihedral: bool = True, colour_perm: bool = True):
        self.num_tasks, self.num_ids = num_tasks, 1 + num_tasks
        self._dihedral, self._colour = dihedral, colour_perm

    def sample(self, tasks, rng):
        d = rng.integers(0, 8 if self._dihedral else 1, size=len(tasks))
        return 1 + tasks, d.astype(np.int64), random_perms(rng, len(tasks), self._colour)

    def views(self, task, n, rng):
        d = (np.arange(n) % 8 if self._dihedral else np.zeros(n)).astype(np.int64)
        perms = random_perms(rng, n, self._colour)
        perms[0] = np.arange(10)
        return np.full(n, 1 + task, dtype=np.int64), d, perms

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"flags": np.array([self.num_tasks, self._dihedral, self._colour], dtype=np.int64)}


def id_scheme_from_state(name: str, state: dict[str, np.ndarray]) -> PuzzleIdScheme:
    if name == "per_task":
        n, dihedral, colour = (int(x) for x in state["flags"])
        return PerTaskIds(n, bool(dihedral), bool(colour))
    return PerAugmentationIds(state["dihedral"], state["perms"], state["offsets"])
