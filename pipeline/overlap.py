"""Contamination check: which evaluation tasks have pairs that occur in training data, also under any of the 8
dihedral transforms and any permutation of colours 1..9 (NVARC's `nvarc_full` was built partly from the ARC-AGI-2
public evaluation puzzles: a local score after training on it is contaminated).

The training side is every pair a run trains on (the packed example table: demonstrations, and test pairs only
where they are trained, so `arc:evaluation2#demos` contributes its demonstrations, not its tests). The evaluation
side is each task's demonstrations and its test pairs with known outputs. Every pair gets a canonical hash
(kernels/canonical.py); a hash match is confirmed on the grids (the dihedral and colour map that turn the
evaluation pair into the training pair are found, or the match is dropped as a hash collision).

A test pair found in training is contamination: a model may have learnt that answer. A demonstration found is
expected when evaluation demonstrations are part of training (the paper's 1280-task mix) and is reported apart.

For `make score` the training side is what the checkpoint was trained on: pretraining records it when it starts
(TrainedPairs, `RUN/trained_pairs.npz`: the canonical hashes, its warm start's record merged in), and the check
reads that record first; a run without one has its config's sources re-read (as they are now), and so on up its
warm-start chain. What cannot be read is reported as not checked, never as clean.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kernels.canonical import pair_hashes
from kernels.reference import augment_grid_ref, dihedral_ref
from pipeline.layout import Checkpoint, CheckpointError, resolve_checkpoint, run_dir_of
from pipeline.data.packed import PackedTasks
from pipeline.data.sources import load_sources
from pipeline.data.tasks import DataError

log = logging.getLogger(__name__)

TRAINED_PAIRS = "trained_pairs.npz"


@dataclass(frozen=True)
class Match:
    eval_task: str
    kind: str
    """'test' (a test pair with its solution) or 'demonstration'."""
    index: int
    """Which test input (its position in the task's tests) or which demonstration."""
    train_task: str
    train_pair: int
    """Which of the training task's trained examples."""
    dihedral: int
    colour_map: list[int]
    """The training pair is dihedral(colour_map[evaluation pair]) (kernels.reference.augment_grid_ref)."""

    @property
    def how(self) -> str:
        same_colours = self.colour_map == list(range(10))
        if self.dihedral == 0 and same_colours:
            return "identical"
        parts = ([f"dihedral {self.dihedral}"] if self.dihedral else []) + \
            ([] if same_colours else ["colours " + "".join(map(str, self.colour_map))])
        return " + ".join(parts)


def relation(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[int, np.ndarray] | None:
    """(d, colour map) with b == augment(a, d, map) for both grids, 0 fixed; None when there is none."""
    for d in range(8):
        ga, gb = [dihedral_ref(g, d) for g in a], list(b)
        if any(x.shape != y.shape for x, y in zip(ga, gb)):
            continue
        src = np.concatenate([g.ravel() for g in ga])
        dst = np.concatenate([g.ravel() for g in gb])
        perm = np.full(10, -1, np.int64)
        perm[0] = 0
        _, first = np.unique(src, return_index=True)
        perm[src[first]] = dst[first]
        if perm[0] != 0 or len(set(perm[perm >= 0].tolist())) != (perm >= 0).sum():
            continue
        free = [c for c in range(10) if c not in set(perm[perm >= 0].tolist())]
        perm[perm < 0] = free  # colours the pair does not use: any completion (the identity where possible)
        perm = perm.astype(np.uint8)
        if all(np.array_equal(augment_grid_ref(x, 0, perm), y) for x, y in zip(ga, gb)):
            return d, perm
    return None


def _hashes(packed: PackedTasks, in_idx: np.ndarray, out_idx: np.ndarray) -> np.ndarray:
    return pair_hashes(packed.cells, packed.starts, packed.heights, packed.widths, in_idx, out_idx)


def evaluation_pairs(packed: PackedTasks) -> dict[str, np.ndarray]:
    """The evaluation side: each task's demonstrations (its examples that are not test pairs) and its test pairs
    with known outputs, as arrays task, kind (0 demonstration, 1 test), index, input grid, output grid."""
    trained_tests = packed.test_in[packed.test_trainable]
    task_of_ex = np.repeat(np.arange(packed.num_tasks), packed.task_ex_count)
    is_demo = ~np.isin(packed.ex_in, trained_tests)
    demo_rank = np.arange(len(packed.ex_in)) - packed.task_ex_start[task_of_ex]
    known = packed.test_out >= 0
    return {"task": np.concatenate([task_of_ex[is_demo], packed.test_task[known]]),
            "kind": np.concatenate([np.zeros(is_demo.sum(), np.int64), np.ones(known.sum(), np.int64)]),
            "index": np.concatenate([demo_rank[is_demo], packed.test_index[known]]),
            "in": np.concatenate([packed.ex_in[is_demo], packed.test_in[known]]),
            "out": np.concatenate([packed.ex_out[is_demo], packed.test_out[known]])}


def find_overlaps(train: PackedTasks, evaluation: PackedTasks) -> list[Match]:
    """Every evaluation pair that occurs in training (under augmentation), with where and how."""
    train_h = _hashes(train, train.ex_in, train.ex_out)
    order = np.argsort(train_h, kind="stable")
    sorted_h = train_h[order]
    ev = evaluation_pairs(evaluation)
    ev_h = _hashes(evaluation, ev["in"], ev["out"])
    lo, hi = np.searchsorted(sorted_h, ev_h, "left"), np.searchsorted(sorted_h, ev_h, "right")
    train_task = np.repeat(np.arange(train.num_tasks), train.task_ex_count)
    matches = []
    for k in np.flatnonzero(hi > lo):
        pair = (evaluation.grid(ev["in"][k]), evaluation.grid(ev["out"][k]))
        for row in order[lo[k]:hi[k]]:
            rel = relation(pair, (train.grid(train.ex_in[row]), train.grid(train.ex_out[row])))
            if rel is None:
                continue  # a hash collision
            t = train_task[row]
            matches.append(Match(evaluation.task_ids[ev["task"][k]], "test" if ev["kind"][k] else "demonstration",
                                 int(ev["index"][k]), train.task_ids[t], int(row - train.task_ex_start[t]),
                                 int(rel[0]), rel[1].tolist()))
            break  # one training occurrence per evaluation pair is enough to report it
    return matches


def overlap_report(matches: list[Match], evaluation: PackedTasks) -> dict:
    """Per evaluation task: its test pairs and demonstrations found in training; totals."""
    ev = evaluation_pairs(evaluation)
    per_task: dict[str, dict] = {}
    for m in matches:
        entry = per_task.setdefault(m.eval_task, {"tests": [], "demonstrations": []})
        entry["tests" if m.kind == "test" else "demonstrations"].append({**asdict(m), "how": m.how})
    contaminated = sorted(t for t, e in per_task.items() if e["tests"])
    return {"evaluation_tasks": evaluation.num_tasks, "evaluation_test_pairs": int(ev["kind"].sum()),
            "test_pairs_unknown": int((evaluation.test_out < 0).sum()),
            "contaminated_tasks": contaminated, "test_pairs_found": sum(len(e["tests"]) for e in per_task.values()),
            "tasks_with_demonstrations_found": sum(bool(e["demonstrations"]) for e in per_task.values()),
            "demonstrations_found": sum(len(e["demonstrations"]) for e in per_task.values()), "tasks": per_task}


@dataclass
class TrainedPairs:
    """What a pretraining run trained on, as canonical pair hashes: `RUN/trained_pairs.npz`, written by rank 0 when
    the run starts (record_trained_pairs), so that `make score` checks the data as it was at training time even
    where its files are gone or changed since. ~12 bytes per distinct pair plus the task names: 48.7 MB for 103k
    pair-list puzzles x 30 pairs (hashing them: 28 s of CPU, split across cores), a few KB for the 1280-task mix
    (BENCHMARKS.md, "100k pair-list puzzles")."""
    hashes: np.ndarray
    """Canonical hashes (uint64), sorted, distinct."""
    task: np.ndarray
    """Per hash, the index in `tasks` of a task that trained on that pair (int32)."""
    tasks: list[str]
    sources: list[str]
    """The training sources of the run and of its warm-start ancestors."""
    unknown: list[str]
    """Warm-start ancestors whose training data is not known (no record): the check cannot cover them."""

    @classmethod
    def of(cls, packed: PackedTasks, sources: list[str]) -> "TrainedPairs":
        task = np.repeat(np.arange(packed.num_tasks, dtype=np.int32), packed.task_ex_count)
        return cls._distinct(_hashes(packed, packed.ex_in, packed.ex_out), task, list(packed.task_ids), list(sources), [])

    @classmethod
    def _distinct(cls, hashes, task, tasks, sources, unknown) -> "TrainedPairs":
        hashes, first = np.unique(np.asarray(hashes, np.uint64), return_index=True)
        return cls(hashes, np.asarray(task, np.int32)[first], tasks, sources, unknown)

    def merge(self, other: "TrainedPairs") -> "TrainedPairs":
        names = list(dict.fromkeys(self.tasks + other.tasks))
        where = {t: k for k, t in enumerate(names)}
        remap = np.array([where[t] for t in other.tasks], np.int32).reshape(-1)
        return self._distinct(np.concatenate([self.hashes, other.hashes]), np.concatenate([self.task, remap[other.task]]),
                              names, list(dict.fromkeys(self.sources + other.sources)),
                              list(dict.fromkeys(self.unknown + other.unknown)))

    def save(self, path: Path) -> None:
        """Atomically: a temporary file beside `path`, renamed into place."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, hashes=self.hashes, task=self.task, tasks=np.array(self.tasks, dtype=str),
                     sources=np.array(self.sources, dtype=str), unknown=np.array(self.unknown, dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "TrainedPairs":
        """A saved record; a DataError naming the file when it is damaged (not a record, a key missing)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["hashes"], z["task"], z["tasks"].tolist(), z["sources"].tolist(), z["unknown"].tolist())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: damaged record of trained pairs ({type(e).__name__}: {e})") from e


def find_trained_pairs(checkpoint: str | Path) -> TrainedPairs | None:
    """The record of the run a checkpoint (or run folder) belongs to, None where it has none."""
    ckpt = resolve_checkpoint(checkpoint)
    for folder in (run_dir_of(ckpt), ckpt):
        if folder is not None and (folder / TRAINED_PAIRS).is_file():
            return TrainedPairs.load(folder / TRAINED_PAIRS)
    return None


def record_trained_pairs(run_dir: Path, packed: PackedTasks, sources: list[str], init_from: str = "") -> TrainedPairs:
    """Write RUN/trained_pairs.npz (rank 0, when pretraining starts): this run's pairs, those of an earlier start of
    the same run (a resumed run may have read changed files), and the warm start's record, or its name among
    the `unknown` where it has none."""
    record = TrainedPairs.of(packed, sources)
    path = run_dir / TRAINED_PAIRS
    unknown = []
    if path.exists():
        try:
            record = record.merge(TrainedPairs.load(path))
        except DataError as e:  # the earlier starts' pairs are lost: the check will say so, not pass them
            log.warning("%s; rewritten from this start's data only", e)
            unknown.append(f"an earlier start of {run_dir} ({e})")
    if init_from:
        try:
            parent = find_trained_pairs(init_from)
        except (CheckpointError, DataError) as e:
            log.warning("warm start %s: %s", init_from, e)
            parent = None
        if parent is not None:
            record = record.merge(parent)
        else:
            unknown.append(str(init_from))
    record = dataclasses.replace(record, unknown=list(dict.fromkeys(record.unknown + unknown)))
    run_dir.mkdir(parents=True, exist_ok=True)
    record.save(path)
    log.info("%s: canonical hashes of %d distinct trained pairs of %d tasks (%.1f MB)%s", path, len(record.hashes),
             len(record.tasks), path.stat().st_size / 2**20,
             f"; not known for the warm start(s) {record.unknown}" if record.unknown else "")
    return record


def training_data(checkpoint: str | Path) -> tuple[TrainedPairs | None, list[str], list[str]]:
    """What a checkpoint trained on: its run's record, else its config's sources re-read now, then the same for
    its warm start (train.init_from), and so on up the chain. Returns the merged pairs (None if nothing could be
    read), where they come from, and what could not be checked (each with why)."""
    merged, where, unchecked, seen = None, [], [], set()
    path: str | Path | None = checkpoint
    while path:
        try:
            ckpt = resolve_checkpoint(path)
        except CheckpointError as e:
            unchecked.append(f"warm start {path}: {e}")
            break
        if ckpt in seen:
            break
        seen.add(ckpt)
        try:
            record = find_trained_pairs(ckpt)
        except DataError as e:  # damaged: said so, and the sources are re-read below instead
            unchecked.append(f"{ckpt}'s recorded pairs: {e}")
            record = None
        if record is not None:  # written at training time, its own warm starts included
            merged = record if merged is None else merged.merge(record)
            where.append(f"{ckpt}'s pairs recorded at pretraining ({TRAINED_PAIRS})")
            unchecked += [f"warm start {u}: no record of its training data" for u in record.unknown]
            break
        cfg = Checkpoint.open(ckpt).config
        try:
            pairs = TrainedPairs.of(load_sources(cfg.data.sources, cfg.data.arc_root).pack(), cfg.data.sources)
        except DataError as e:
            unchecked.append(f"{ckpt} (no {TRAINED_PAIRS}): its training sources cannot be read here: {e}")
        else:
            merged = pairs if merged is None else merged.merge(pairs)
            where.append(f"{ckpt}'s sources {cfg.data.sources}, re-read now (no {TRAINED_PAIRS}: the files may "
                         "have changed since training)")
        path = cfg.train.init_from
    return merged, where, unchecked


def scored_set_overlap(checkpoint: str | Path, scored: PackedTasks | None, scored_ids: list[str],
                       task_ids: list[str]) -> tuple[list[str], dict]:
    """What `make score` says about a checkpoint and the scored tasks (`scored`: their grids, None where the
    challenges file is missing; `task_ids`: the checkpoint's task table): warning lines and a summary. Every scored
    pair (demonstrations, test pairs with solutions) is hashed canonically and looked up in training_data. A
    part that cannot be checked is a 'contamination NOT checked' warning, never an all-clear; task ids alone
    prove nothing (NVARC's puzzles are not named after the evaluation tasks they were made from)."""
    n = len(scored_ids)
    known = sorted(set(task_ids) & set(scored_ids))
    ids_note = (f"by task id only, {len(known)} of the {n} scored tasks are in the checkpoint's task table"
                + (f" ({', '.join(known[:6])}{' ...' if len(known) > 6 else ''})" if known else ""))
    if scored is None:
        return [f"warning: contamination NOT checked: the scored tasks' challenges file was not found ({ids_note})"], \
            {"checked": "no", "not_checked": ["the scored tasks' challenges file was not found"], "tasks_in_checkpoint": known}
    trained, where, unchecked = training_data(checkpoint)
    if trained is None:
        return [f"warning: contamination NOT checked: {why}" for why in unchecked] + [f"warning: {ids_note}; whether "
                "their pairs were trained on is unknown"], {"checked": "no", "not_checked": unchecked, "tasks_in_checkpoint": known}
    ev = evaluation_pairs(scored)
    h = _hashes(scored, ev["in"], ev["out"])
    at = np.minimum(np.searchsorted(trained.hashes, h), len(trained.hashes) - 1)
    hit = trained.hashes[at] == h
    tests: dict[str, list[str]] = {}
    demo_tasks: set[str] = set()
    for k in np.flatnonzero(hit):
        task = scored.task_ids[ev["task"][k]]
        if ev["kind"][k]:
            tests.setdefault(task, []).append(trained.tasks[trained.task[at[k]]])
        else:
            demo_tasks.add(task)
    bad = sorted(tests)
    summary = {"checked": "hashes", "training_data": where, "contaminated_tasks": bad,
               "tasks_with_demonstrations_trained": len(demo_tasks), "not_checked": unchecked}
    lines = [f"warning: contamination NOT checked for {why}" for why in unchecked]
    if bad:
        lines.append(f"warning: {len(bad)} of the {n} scored tasks have test pairs in the checkpoint's training data "
                     f"({sum(map(len, tests.values()))} test pairs, each the same as a trained pair up to a dihedral "
                     f"transform and colour permutation; {'; '.join(where)}): this score is contaminated: "
                     + ", ".join(f"{t} ({tests[t][0]})" for t in bad[:6]) + (" ..." if len(bad) > 6 else ""))
    else:
        lines.append(f"overlap check: no scored test pair occurs in the checkpoint's training data ({'; '.join(where)})"
                     + (", as far as it could be checked" if unchecked else ""))
    if demo_tasks:
        lines.append(f"overlap check: {len(demo_tasks)} scored tasks' demonstrations are in the training data "
                     "(expected where evaluation demonstrations are trained on, as in mix:arc2-1280)")
    return lines, summary
