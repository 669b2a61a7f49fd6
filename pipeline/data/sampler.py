"""On-the-fly training batches: tasks x augmentations, encoded by the numba kernels per batch, as the data config
(pipeline/config.py DataConfig: sources, canvas, augmentation, sampler, translation) says. Nothing augmented is
ever materialised. `make_sampler` builds the one the config names:

- `OfficialSampler` (data.sampler=official, the default) composes batches as the official `PuzzleDataset` does
  (puzzle_dataset.py `_iter_train`, `_sample_batch`): an iteration of `epochs_per_iter` epochs shuffles the tasks
  (groups) once per epoch with `Philox(seed + iteration)`, then walks them; each visit picks one version of the task
  (one of its puzzle ids: the same Philox generator) and appends all of that version's examples in a random order
  (a permutation from a `RandomState(seed)` that runs through the whole run, as the official code's global numpy
  generator), only as many as the batch has room for when it is nearly full; the last incomplete batch of an
  iteration is dropped. Sequential: a checkpoint stores the position and both generators (`state_dict`).
- `IndependentSampler` (data.sampler=independent, a departure) draws B independent (task, example, version)
  triples; batch `step` is a pure function of (seed, step). Size bucketing for compute.crop (data.bucket_steps)
  needs it.

Translation (data.translate): officially each version's examples sit at offsets drawn once by the builder, one
example of each version left at (0, 0) (build_arc_dataset.py `no_aug_id`). Here an offset is a hash of (seed,
version, example): the same every time that version is drawn; with data.fresh_offsets (a departure, and always
under IndependentSampler) each draw gets a new one. A per_task version is the visit itself.
"""
from __future__ import annotations

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.encode import bound_offsets, encode
from pipeline.data.packed import PackedTasks, task_sides
from pipeline.data.puzzle_ids import PerAugmentationIds, PuzzleIdScheme

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash64(*parts) -> np.ndarray:
    """A hash of the parts (integers or integer arrays, combined element-wise) as uint64: a counter-based stream."""
    x = np.uint64(0x243F6A8885A308D3)
    with np.errstate(over="ignore"):
        for p in parts:
            x = _mix64(x ^ np.asarray(p).astype(np.uint64))
    return x


def version_offsets(seed: int, version: np.ndarray, example: np.ndarray, n_examples: np.ndarray) -> np.ndarray:
    """Translation draws [2, B] in [0, 1) fixed per (seed, version, example), and 0 (the top-left) for the one
    example of each version the official builder leaves untranslated (`no_aug_id`, uniform over its examples)."""
    key = _hash64(seed, version)
    with np.errstate(over="ignore"):
        own = _mix64(key ^ _mix64(np.asarray(example).astype(np.uint64)))
        draws = np.stack([_mix64(own ^ np.uint64(axis)) >> np.uint64(11) for axis in (1, 2)]) * 2.0 ** -53
    kept = (key % n_examples.astype(np.uint64)).astype(np.int64) == example
    return np.where(kept, 0.0, draws)


class _Encoder:
    """What both samplers share: the packed tasks, the id scheme, the rank's slice and the encoding of a batch."""

    def __init__(self, packed: PackedTasks, ids: PuzzleIdScheme, cfg: DataConfig, global_batch: int, seed: int,
                 rank: int, world_size: int):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.trainable = np.flatnonzero(packed.task_ex_count > 0)
        if len(self.trainable) == 0:
            raise ValueError("no task has a training example")
        self.packed, self.ids, self.cfg = packed, ids, cfg
        self.global_batch, self.seed, self.rank, self.world_size = global_batch, seed, rank, world_size
        self.step = 0
        self.buckets = [self.trainable]

    def _encode(self, ex, ids, dihedral, perms, draws) -> dict:
        """This rank's slice of the global batch of examples `ex` under (dihedral, perms, translation draws)."""
        p, cfg = self.packed, self.cfg
        draws = draws if cfg.translate else np.zeros_like(draws)
        if cfg.max_offset:
            draws = bound_offsets(draws, p, p.ex_in[ex], p.ex_out[ex], dihedral, cfg.canvas, cfg.max_offset)
        lo, hi = self.rank * len(ex) // self.world_size, (self.rank + 1) * len(ex) // self.world_size
        out = encode(p, p.ex_in[ex[lo:hi]], p.ex_out[ex[lo:hi]], dihedral[lo:hi], perms[lo:hi], draws[0, lo:hi],
                     draws[1, lo:hi], cfg.canvas)
        out["puzzle_ids"] = np.asarray(ids[lo:hi], np.int64)
        return out

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b = self.batch_at(self.step)
        self.step += 1
        return b


class IndependentSampler(_Encoder):
    """B independent (task, example, version) draws per batch; batch `step` depends only on (seed, step)."""

    def __init__(self, packed, ids, cfg, global_batch, seed, rank=0, world_size=1):
        super().__init__(packed, ids, cfg, global_batch, seed, rank, world_size)
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
        return self._encode(ex, ids, dihedral, perms, rng.random((2, B)))

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.global_batch \
                or state.get("sampler", "independent") != "independent":
            raise ValueError(f"sampler state (seed={state['seed']}, global_batch={state['global_batch']}, sampler="
                             f"{state.get('sampler', 'independent')}) does not match this independent sampler "
                             f"(seed={self.seed}, global_batch={self.global_batch})")
        self.step = int(state["step"])


MAX_ITERATION_VISITS = 1 << 24
"""A run counted in steps (train.epochs = 0) takes its iterations this many task visits long at most (the order and
its running sums: ~400 MB while an iteration starts)."""


def iteration_epochs(sizes: np.ndarray, global_batch: int, steps: int) -> int:
    """Epochs per iteration for a run counted in steps: as many as `steps` batches need, so that the run is one
    iteration as the official loop without eval_interval, but at most MAX_ITERATION_VISITS visits, and at least
    one batch's worth (a small task set against a large batch: TTT of one task)."""
    per_epoch = int(sizes.sum())
    need = -(-max(steps, 1) * global_batch // per_epoch)
    return max(1, min(need, MAX_ITERATION_VISITS // len(sizes)), -(-global_batch // per_epoch))


def iteration_order(seed: int, iteration: int, groups: int, epochs: int) -> tuple[np.random.Generator, np.ndarray]:
    """The official iteration's generator and its visiting order: `epochs` permutations of the groups."""
    rng = np.random.Generator(np.random.Philox(seed=seed + iteration))
    return rng, np.concatenate([rng.permutation(groups) for _ in range(epochs)])


def batch_ends(sizes: np.ndarray, batch: int) -> np.ndarray:
    """Where each full batch of an iteration ends (exclusive visit index) when visits of `sizes` examples fill
    batches of `batch` in order, the visit that fills a batch truncated and the last incomplete batch dropped."""
    total = np.cumsum(sizes)
    ends, done = [], 0  # examples the visits before the next batch hold
    while True:
        e = int(np.searchsorted(total, done + batch, side="left"))  # the visit that reaches `batch` examples
        if e >= len(total):
            return np.asarray(ends, np.int64)
        ends.append(e + 1)
        done = int(total[e])  # the filling visit's remainder is dropped


class OfficialSampler(_Encoder):
    """The official batch composition (module docstring); sequential, resumable from `state_dict`."""

    def __init__(self, packed, ids, cfg, global_batch, seed, rank=0, world_size=1, epochs_per_iter: int = 0,
                 run_steps: int = 0):
        """`epochs_per_iter` 0: sized for a run of `run_steps` steps (`iteration_epochs`)."""
        super().__init__(packed, ids, cfg, global_batch, seed, rank, world_size)
        if cfg.bucket_steps:
            raise ValueError("data.bucket_steps draws batches by size bucket: it needs data.sampler=independent")
        self.sizes = packed.task_ex_count[self.trainable]
        self.epochs_per_iter = epochs_per_iter or iteration_epochs(self.sizes, global_batch, run_steps)
        held = self.epochs_per_iter * int(self.sizes.sum())
        if held < global_batch:
            raise ValueError(f"an iteration of {self.epochs_per_iter} epoch(s) holds {held} examples, fewer than the "
                             f"global batch of {global_batch}: no batch could be filled (raise train.eval_interval, or "
                             "lower train.global_batch)")
        self.per_aug = isinstance(ids, PerAugmentationIds)
        self.versions = ids.counts[self.trainable] if self.per_aug else np.ones(len(self.trainable), np.int64)
        self._restart()

    def _restart(self) -> None:
        self.step, self.iteration, self.batch_in_iter = 0, 0, 0
        self.subsets = np.random.RandomState(self.seed)  # the official global numpy generator, seeded
        self._next_iteration()

    def _next_iteration(self) -> None:
        self.iteration += 1
        self.rng, order = iteration_order(self.seed, self.iteration, len(self.trainable), self.epochs_per_iter)
        self.order, self.ends, self.pos, self.batch_in_iter = order, batch_ends(self.sizes[order], self.global_batch), 0, 0

    def mean_examples(self) -> float:
        """The official `mean_puzzle_examples`: examples per version, over every version of every task."""
        return float((self.versions * self.sizes).sum() / self.versions.sum())

    def total_steps(self, epochs: int) -> int:
        """The official run length: int(epochs * total_groups * mean_puzzle_examples / global_batch_size)."""
        return int(epochs * len(self.trainable) * self.mean_examples() / self.global_batch)

    def iteration_end_steps(self, iterations: int) -> list[int]:
        """The optimiser step at which each of the first `iterations` iterations ends (when the official loop
        evaluates). Uses only the shuffles: what a visit picks does not change how many examples it has."""
        ends, step = [], 0
        for it in range(1, iterations + 1):
            _, order = iteration_order(self.seed, it, len(self.trainable), self.epochs_per_iter)
            step += len(batch_ends(self.sizes[order], self.global_batch))
            ends.append(step)
        return ends

    def plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next global batch as (task, version, example index within the task, visit) per row, advancing."""
        while self.batch_in_iter >= len(self.ends):  # the rest of the iteration cannot fill a batch: dropped
            self._consume(self.order[self.pos:], self.global_batch)
            self._next_iteration()
        end = int(self.ends[self.batch_in_iter])
        groups = self.order[self.pos:end]
        self.pos, self.batch_in_iter = end, self.batch_in_iter + 1
        return self._consume(groups, self.global_batch)

    def _consume(self, groups: np.ndarray, room: int):
        """Draw each visit's version (Philox) and example order (RandomState), in the official order."""
        versions = self.rng.integers(0, self.versions[groups])
        n = self.sizes[groups]
        takes = np.minimum(n, np.maximum(room - np.r_[0, np.cumsum(n)[:-1]], 0))
        permutation = self.subsets.permutation  # = np.random.choice(n, take, replace=False) of every visit
        exs = [permutation(k)[:t] for k, t in zip(n.tolist(), takes.tolist())]
        if not exs:
            return (np.zeros(0, np.int64),) * 4
        visit = np.repeat(np.arange(len(takes)), takes)
        return self.trainable[groups][visit], versions[visit], np.concatenate(exs).astype(np.int64), visit

    def batch_at(self, step: int) -> dict:
        """Batch `step` (this rank's slice), the sampler left after it: the next one when `step` is the sampler's
        position, else replayed from the start of the run (the stream is a function of the seed)."""
        if step < self.step:
            self._restart()
        while self.step < step:
            self.plan()
            self.step += 1
        return next(self)

    def __next__(self) -> dict:
        rows = self.plan()
        self.step += 1
        return self._encode_plan(*rows)

    def _encode_plan(self, tasks, versions, example, visit) -> dict:
        p, B = self.packed, len(tasks)
        ex = p.task_ex_start[tasks] + example
        if self.per_aug:
            idx = self.ids.offsets[tasks] + versions
            ids, dihedral, perms, key = 1 + idx, self.ids.dihedral[idx], self.ids.perms[idx], 1 + idx
        else:  # per_task: the visit is the version: one augmentation and one offset key per visit
            first = np.r_[0, np.flatnonzero(np.diff(visit)) + 1]
            rng = np.random.default_rng([self.seed, self.iteration, self.batch_in_iter, 0x5A])
            ids, dihedral, perms = (a[visit] for a in self.ids.sample(tasks[first], rng))
            key = _hash64(self.iteration, self.batch_in_iter, visit)
        if self.cfg.fresh_offsets:
            draws = np.random.default_rng([self.seed, self.iteration, self.batch_in_iter, 0x7A]).random((2, B))
        else:
            draws = version_offsets(self.seed, key, example, p.task_ex_count[tasks])
        return self._encode(ex, ids, dihedral, perms, draws)

    def state_dict(self) -> dict:
        """The position (step, iteration, batch within it) and both generators' states: an exact resume."""
        return {"step": self.step, "seed": self.seed, "global_batch": self.global_batch, "sampler": "official",
                "epochs_per_iter": self.epochs_per_iter, "iteration": self.iteration,
                "batch_in_iter": self.batch_in_iter, "philox": _jsonable(self.rng.bit_generator.state),
                "subsets": _jsonable(self.subsets.get_state(legacy=False))}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.global_batch \
                or state.get("sampler") != "official" or state.get("epochs_per_iter") != self.epochs_per_iter:
            raise ValueError(f"sampler state (seed={state['seed']}, global_batch={state['global_batch']}, "
                             f"sampler={state.get('sampler', 'independent')}, epochs_per_iter="
                             f"{state.get('epochs_per_iter')}) does not match this official sampler (seed={self.seed}, "
                             f"global_batch={self.global_batch}, epochs_per_iter={self.epochs_per_iter})")
        self.iteration = int(state["iteration"]) - 1
        self._next_iteration()
        self.step, self.batch_in_iter = int(state["step"]), int(state["batch_in_iter"])
        self.pos = int(self.ends[self.batch_in_iter - 1]) if self.batch_in_iter else 0
        self.rng.bit_generator.state = _from_json(state["philox"])
        self.subsets.set_state(_from_json(state["subsets"]))


def _jsonable(x):
    """A generator state as JSON values (arrays as {"array": list, "dtype": name})."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return {"array": x.tolist(), "dtype": str(x.dtype)}
    return x.item() if isinstance(x, np.generic) else x


def _from_json(x):
    if isinstance(x, dict) and set(x) == {"array", "dtype"}:
        return np.asarray(x["array"], dtype=x["dtype"])
    return {k: _from_json(v) for k, v in x.items()} if isinstance(x, dict) else x


def make_sampler(packed: PackedTasks, ids: PuzzleIdScheme, cfg: DataConfig, global_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1, epochs_per_iter: int = 0, run_steps: int = 0):
    """The sampler data.sampler names (the official one's iterations: `epochs_per_iter`, or 0: sized for
    `run_steps`)."""
    if cfg.sampler == "independent":
        return IndependentSampler(packed, ids, cfg, global_batch, seed, rank, world_size)
    return OfficialSampler(packed, ids, cfg, global_batch, seed, rank, world_size, epochs_per_iter, run_steps)
