"""The official TRM build folder as a source, `official:DIR` (the folder `dataset/build_arc_dataset.py` writes, such as
the prebuilt TRM training sets shared on Kaggle): `identifiers.json` and, per split (`train/`, `test/`), `dataset.json`
and the `SET__inputs.npy`, `SET__labels.npy`, `SET__puzzle_identifiers.npy`, `SET__puzzle_indices.npy` arrays.

The build holds every task many times over (its original and its augmentations, each a puzzle id, each example
translated); this recovers the original tasks so that our own augmentation and id schemes apply to them:
- a puzzle name is `TASK` (the original) or `TASK|||tD|||PERM` (dihedral D after the colour map PERM, PERM[c] the
  colour c became, 0 fixed); per task and split the original puzzle is read, or, where the build lacks it, the
  first augmented one, inverted;
- an example row decodes to its grid as the bounding box of the colour tokens (colour + 2; PAD 0 and the EOS
  border 1 around it), wherever the builder translated it; a label row without colour tokens is an unknown output;
- the `train/` examples of a task are its demonstrations (the builder put there the demonstrations of every task
  and the test pairs of the training subsets), the `test/` examples its test pairs, which the official run never
  trains on: here too they are held out (scored by the periodic held-out evaluation).
Tasks come in the build's id order (as pipeline/nn/official.py's id table). Only the names and rows of the chosen
puzzles are parsed and read (the arrays are memory-mapped): a 1000-augmentation build of 1280 tasks (1.28M puzzle
ids, 8.6 GB of arrays) loads in 2.4-3.7 s on one core (BENCHMARKS.md, `bench.official_build`). Torch-free.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import COLOR_OFFSET, NUM_COLORS
from kernels.reference import invert_augment_ref
from pipeline.data.puzzle_ids import PerAugmentationIds
from pipeline.data.tasks import DataError, Task, TaskProblem, read_json

SEPARATOR, BLANK = "|||", "<blank>"
_ARRAYS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices")


def read_identifiers(path: str | Path) -> list[str]:
    """The official build's identifiers.json (given itself or its dataset folder): index = official id."""
    path = Path(path)
    if path.is_dir():
        path = path / "identifiers.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (give the official dataset folder or its identifiers.json)")
    names = read_json(path)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names or names[0] != BLANK:
        raise DataError(f"{path}: expected a JSON list of puzzle names starting with '{BLANK}'")
    return names


def parse_name(name: str, official_id: int) -> tuple[str, int, np.ndarray | None]:
    """(task, dihedral, colour map or None for the original) of one official puzzle name."""
    if SEPARATOR not in name:
        return name, 0, None
    parts = name.rsplit(SEPARATOR, 2)
    if len(parts) != 3 or not re.fullmatch(r"t[0-7]", parts[1]) or not re.fullmatch(r"\d{10}", parts[2]) \
            or sorted(parts[2]) != list("0123456789"):
        raise DataError(f"official puzzle id {official_id} '{name}': expected TASK|||tD|||PERM "
                        "(D in 0..7, PERM a permutation of the digits 0-9)")
    return parts[0], int(parts[1][1:]), np.array([int(c) for c in parts[2]], dtype=np.uint8)


def decode_row(tokens: np.ndarray, side: int) -> np.ndarray | None:
    """The grid an encoded example row holds (colour tokens' bounding box), None for a row without colours;
    a DataError when the colour tokens do not fill their box (not a builder's row)."""
    canvas = tokens.reshape(side, side)
    colour = canvas >= COLOR_OFFSET
    rows, cols = np.flatnonzero(colour.any(1)), np.flatnonzero(colour.any(0))
    if len(rows) == 0:
        return None
    box = canvas[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if not (box >= COLOR_OFFSET).all() or (box >= COLOR_OFFSET + NUM_COLORS).any():
        raise DataError("an example row whose colour tokens do not form one grid")
    return (box - COLOR_OFFSET).astype(np.uint8)


def _invert(grid: np.ndarray, d: int, perm: np.ndarray | None) -> np.ndarray:
    return grid if perm is None else invert_augment_ref(grid, d, perm)


def _read_split(folder: Path, split: str) -> list[dict] | None:
    """Each set of a split as {name: array (memory-mapped)}, None when the build has no such split."""
    meta_path = folder / split / "dataset.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("sets"), list) or not isinstance(meta.get("seq_len"), int):
        raise DataError(f"{meta_path}: expected the official dataset.json (with 'sets' and 'seq_len')")
    side = math.isqrt(meta["seq_len"])
    if side * side != meta["seq_len"] or not 1 <= side <= 30:
        raise DataError(f"{meta_path}: seq_len {meta['seq_len']} is not a square canvas of side 1..30")
    out = []
    for name in meta["sets"]:
        arrays = {}
        for key in _ARRAYS:
            f = folder / split / f"{name}__{key}.npy"
            try:
                arrays[key] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{f}: cannot read ({e})") from e
        n_rows, n_puzzles = len(arrays["inputs"]), len(arrays["puzzle_identifiers"])
        if arrays["inputs"].shape != (n_rows, side * side) or arrays["labels"].shape != arrays["inputs"].shape \
                or len(arrays["puzzle_indices"]) != n_puzzles + 1 or arrays["puzzle_indices"][-1] != n_rows:
            raise DataError(f"{folder / split}: the arrays of set '{name}' do not fit together "
                            f"({n_rows} rows of {side * side} tokens expected, {n_puzzles} puzzles)")
        out.append({**arrays, "side": side, "where": f"{folder / split}/{name}"})
    return out


def _split_examples(sets: list[dict], names: list[str], task_of: list[int]):
    """{task number: (dihedral, perm, [(input row, label row)], where)} for one split: per task the original
    puzzle, else its first augmented one. Only the names of the versions chosen are parsed (a 1000-augmentation
    build has 1.28M: parsing them all took 30 of a 41 s load)."""
    chosen: dict[int, tuple] = {}
    for s in sets:
        pids, starts = np.asarray(s["puzzle_identifiers"]), np.asarray(s["puzzle_indices"])
        for p, pid in enumerate(pids.tolist()):
            if not 0 < pid < len(names):
                raise DataError(f"{s['where']}: puzzle {p} has id {pid}, outside identifiers.json (1..{len(names) - 1})")
            t = task_of[pid]
            if t in chosen and (chosen[t][1] is None or SEPARATOR in names[pid]):
                continue  # keep the original, else the first version seen
            _, d, perm = parse_name(names[pid], pid)
            rows = range(int(starts[p]), int(starts[p + 1]))
            chosen[t] = (d, perm, [(s["inputs"][r], s["labels"][r]) for r in rows], f"{s['where']} puzzle {p}")
    return chosen


def load_official_build(folder: str | Path, source: str = "") -> tuple[list[Task], list[TaskProblem]]:
    """The original tasks of an official build (module docstring), and the problems of tasks that could not be
    recovered (each names the task)."""
    folder = Path(folder)
    source = source or f"official:{folder}"
    names = read_identifiers(folder)
    task_index: dict[str, int] = {}
    task_of = [-1]  # per official id, its task's number (the name before `|||tD|||PERM`, as parse_name reads it)
    for name in names[1:]:
        task_of.append(task_index.setdefault(name.rsplit(SEPARATOR, 2)[0] if SEPARATOR in name else name,
                                             len(task_index)))
    splits = {s: _read_split(folder, s) for s in ("train", "test")}
    if splits["train"] is None and splits["test"] is None:
        raise DataError(f"{source}: not an official build folder (no train/dataset.json or test/dataset.json)")
    side = next(sets[0]["side"] for sets in splits.values() if sets)
    found = {s: _split_examples(sets, names, task_of) if sets else {} for s, sets in splits.items()}
    tasks, problems = [], []
    for task, t in task_index.items():
        try:
            pairs = {}
            for split, chosen in found.items():
                d, perm, rows, where = chosen.get(t, (0, None, [], ""))
                pairs[split] = []
                for k, (x, y) in enumerate(rows):
                    try:
                        g_in, g_out = decode_row(np.asarray(x), side), decode_row(np.asarray(y), side)
                    except DataError as e:
                        raise DataError(f"{where} example {k}: {e}") from e
                    if g_in is None:
                        raise DataError(f"{where} example {k}: the input row holds no grid")
                    pairs[split].append((_invert(g_in, d, perm), None if g_out is None else _invert(g_out, d, perm)))
        except DataError as e:
            problems.append(TaskProblem(task, str(e), source))
            continue
        train, test = pairs["train"], pairs["test"]
        if not train:
            problems.append(TaskProblem(task, "no demonstration pairs (no example in the build's train split)", source))
            continue
        if any(o is None for _, o in train):
            problems.append(TaskProblem(task, "a train-split example without an output grid", source))
            continue
        outputs = [o for _, o in test]
        tasks.append(Task(id=task, train=train, test_inputs=[i for i, _ in test],
                          test_outputs=None if any(o is None for o in outputs) else outputs, source=source,
                          train_on_test=False))
    return tasks, problems


@dataclass
class OfficialIds:
    """An official id table in our terms: the tasks in official order, our id table (each task's original
    first, then its augmentations in official id order) and rows[i] = the official id of our id i."""
    task_ids: list[str]
    ids: PerAugmentationIds
    rows: np.ndarray


def official_id_table(names: list[str]) -> OfficialIds:
    """Our id table for an official identifiers list; every official id lands on exactly one of ours."""
    versions: dict[str, list[tuple[int, int, np.ndarray | None]]] = {}
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name == BLANK:
            continue
        if name in seen:
            raise DataError(f"official puzzle id {i} '{name}': the name appears twice")
        seen.add(name)
        task, d, perm = parse_name(name, i)
        versions.setdefault(task, []).append((i, d, perm))
    dihedral, perms, rows, counts = [], [], [0], []
    for task, vs in versions.items():
        original = [v for v in vs if v[2] is None]
        if not original:
            raise DataError(f"official task {task}: no puzzle id for its original (untransformed) version")
        for i, d, perm in original + [v for v in vs if v[2] is not None]:
            dihedral.append(d), perms.append(np.arange(10, dtype=np.uint8) if perm is None else perm), rows.append(i)
        counts.append(len(vs))
    ids = PerAugmentationIds(np.array(dihedral, np.int64), np.array(perms, np.uint8).reshape(-1, 10),
                             np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return OfficialIds(list(versions), ids, np.array(rows, np.int64))


def build_id_table(folder: str | Path, task_ids: list[str]) -> PerAugmentationIds:
    """The build's own id table (identifiers.json) over the tasks loaded from it, in their order: each task's
    original and the augmentations the builder kept, as the official run trains them (an `official:DIR` source
    alone; tasks the loader dropped are left out)."""
    table = official_id_table(read_identifiers(folder))
    where = {t: k for k, t in enumerate(table.task_ids)}
    rows = [np.arange(table.ids.offsets[where[t]], table.ids.offsets[where[t] + 1]) for t in task_ids]
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    counts = np.array([len(r) for r in rows], np.int64)
    return PerAugmentationIds(table.ids.dihedral[idx], table.ids.perms[idx], np.concatenate([[0], np.cumsum(counts)]))
