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
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kernels.canonical import pair_hashes
from kernels.reference import augment_grid_ref, dihedral_ref
from pipeline.sampler import PackedTasks
from pipeline.sources import load_sources
from pipeline.tasks import DataError


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


def scored_set_overlap(task_ids: list[str], sources: list[str], arc_root: str, scored_ids: list[str],
                       scored: PackedTasks | None) -> tuple[list[str], dict]:
    """What `make score` says about a checkpoint (its task table `task_ids`, its config's training `sources`) and
    the scored tasks (`scored`: their grids, None where the challenges file is missing): warning lines and a
    summary. The checkpoint holds task ids, not grids: the grids come from re-reading its sources; where they
    cannot be read here (or the scored grids are unknown), only the ids are compared, and the lines say so."""
    known = sorted(set(task_ids) & set(scored_ids))
    n = len(scored_ids)
    train, why = None, "the scored tasks' challenges file was not found"
    if scored is not None:
        try:
            train = load_sources(sources, arc_root).pack()
        except DataError as e:
            why = f"its training sources cannot be read here: {e}"
    if train is None:
        summary = {"checked": "ids", "tasks_in_checkpoint": known}
        if not known:
            return [f"overlap check (ids only: {why}): none of the {n} scored tasks is in the checkpoint's task "
                    "table"], summary
        return [f"warning: the checkpoint's task table holds {len(known)} of the {n} scored tasks ({', '.join(known[:6])}"
                f"{' ...' if len(known) > 6 else ''}); ids only, {why}, so whether their test pairs were trained on is "
                "unknown"], summary
    report = overlap_report(find_overlaps(train, scored), scored)
    bad = report["contaminated_tasks"]
    demo_tasks = [t for t, e in report["tasks"].items() if e["demonstrations"]]
    summary = {"checked": "grids", "contaminated_tasks": bad, "tasks_with_demonstrations_trained": len(demo_tasks)}
    lines = []
    if bad:
        lines.append(f"warning: {len(bad)} of the {n} scored tasks have test pairs in the checkpoint's training data "
                     f"({report['test_pairs_found']} test pairs; sources {sources}): this score is contaminated: "
                     + ", ".join(f"{t} ({report['tasks'][t]['tests'][0]['train_task']}, "
                                 f"{report['tasks'][t]['tests'][0]['how']})" for t in bad[:6])
                     + (" ..." if len(bad) > 6 else ""))
    else:
        lines.append(f"overlap check: no scored test pair occurs in the checkpoint's training data (sources {sources})")
    if demo_tasks:
        lines.append(f"overlap check: {len(demo_tasks)} scored tasks' demonstrations are in the training data "
                     "(expected where evaluation demonstrations are trained on, as in mix:arc2-1280)")
    return lines, summary
