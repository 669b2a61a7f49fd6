"""On-the-fly training batches: tasks x random augmentations, encoded by the numba kernels per batch, as the
data config (pipeline/config.py DataConfig: sources, canvas, augmentation) says.

Nothing augmented is ever materialised: each batch is a pure function of (seed, step) over the packed tasks
(pipeline/data/packed.py), so a resumed run continues exactly and data-parallel ranks take disjoint slices of the
same global batch.
"""
from __future__ import annotations

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.encode import bound_offsets, encode
from pipeline.data.packed import PackedTasks, task_sides
from pipeline.data.puzzle_ids import PuzzleIdScheme


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
        if cfg.bucket_steps:
            side = task_sides(packed)[self.trainable]
            order = self.trainable[np.argsort(side, kind="stable")]
            self.buckets = [b for b in np.array_split(order, min(cfg.size_buckets, len(order))) if len(b)]

    def bucket_at(self, step: int) -> np.ndarray:
        """The tasks step `step` draws from: all trainable tasks, or its run's size bucket."""
        if len(self.buckets) == 1:
            return self.buckets[0]
        run = step // self.cfg.bucket_steps
        return self.buckets[np.random.default_rng([self.seed, 0xB0C, run]).integers(len(self.buckets))]

    def batch_at(self, step: int, bucket: int | None = None) -> dict:
        """Batch `step` (this rank's slice): a function of (seed, step), drawn from size bucket `bucket` instead
        of the step's own when given (the submit calibration times each bucket's steps)."""
        rng = np.random.default_rng([self.seed, step])
        B = self.global_batch
        pool = self.bucket_at(step) if bucket is None else self.buckets[bucket]
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
