"""Loading an official TRM build at the size of the prebuilt 1000-augmentation sets (`official:DIR`,
pipeline/data/official_build.py): 1280 tasks x 1001 puzzle ids (each task's original and 1000 augmentations, named
TASK|||tD|||PERM), ~5M example rows of 900 tokens in train/ (~9 GB of inputs and labels).

    python -m bench.official_build                           # writes /tmp/trm-official-1001 once, then loads it
    python -m bench.official_build --tasks 100 --augs 100 --dir /tmp/small   # a quick look

The build has the official builder's layout (identifiers.json; train/ and test/ with dataset.json and the
all__*.npy arrays; the evaluation tasks' test pairs in test/, for every version) but is written sparse: only the
original puzzles' rows hold their grids, the augmented puzzles' rows are holes of zeros that take no disk. A
loader that read them would reject them ("the input row holds no grid"), so the run also checks that only the
originals are read. What is measured is what the loader does at this size (parse 1.28M names, walk 1.28M
puzzles, read the chosen rows of full-size memory-mapped arrays); the rows it reads are in the page cache
(written just before), as the files of a build read twice are. One core. Prints JSON last.
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import emit, rss_mb
from kernels.reference import encode_grid_ref
from pipeline.data.official_build import BLANK, load_official_build
from scripts.make_fixtures import random_tasks, size_mix

CANVAS = 30


def version_names(rng: np.random.Generator, task: str, augs: int) -> list[str]:
    """The original and `augs` distinct augmented names of a task, as the official builder names them."""
    names: set[str] = set()
    while len(names) < augs:
        perm = np.concatenate([[0], rng.permutation(9) + 1])
        names.add(f"{task}|||t{int(rng.integers(0, 8))}|||{''.join(map(str, perm))}")
    return [task] + sorted(names)


def write_sparse_build(out: Path, tasks, eval_ids: set[str], augs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    names = [BLANK]
    splits = {s: {"pids": [], "counts": [], "rows": []} for s in ("train", "test")}  # rows: original puzzles' pairs
    for task in tasks:
        demos = task.train + ([] if task.id in eval_ids else list(zip(task.test_inputs, task.test_outputs)))
        for k, name in enumerate(version_names(rng, task.id, augs)):
            names.append(name)
            for split, pairs in (("train", demos), ("test", list(zip(task.test_inputs, task.test_outputs)))):
                if split == "test" and task.id not in eval_ids:
                    continue
                s = splits[split]
                if k == 0:  # the original: its rows get their grids
                    s["rows"] += [(sum(s["counts"]) + j, i, o) for j, (i, o) in enumerate(pairs)]
                s["pids"].append(len(names) - 1)
                s["counts"].append(len(pairs))
    out.mkdir(parents=True)
    (out / "identifiers.json").write_text(json.dumps(names))
    sizes = {}
    for split, s in splits.items():
        (out / split).mkdir()
        n_rows = sum(s["counts"])
        for key in ("inputs", "labels"):  # sparse: untouched rows stay holes
            a = np.lib.format.open_memmap(out / split / f"all__{key}.npy", mode="w+", dtype=np.uint8,
                                          shape=(n_rows, CANVAS * CANVAS))
            for r, i, o in s["rows"]:
                a[r] = encode_grid_ref(i if key == "inputs" else o, 0, 0, CANVAS)
            a.flush()
            del a
        np.save(out / split / "all__puzzle_identifiers.npy", np.array(s["pids"], np.int32))
        np.save(out / split / "all__puzzle_indices.npy", np.concatenate([[0], np.cumsum(s["counts"])]).astype(np.int32))
        np.save(out / split / "all__group_indices.npy", np.arange(len(tasks) + 1, dtype=np.int32))
        (out / split / "dataset.json").write_text(json.dumps(
            {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": CANVAS ** 2,
             "num_puzzle_identifiers": len(names), "total_puzzles": len(s["pids"]), "sets": ["all"]}))
        sizes[split] = {"rows": n_rows, "puzzles": len(s["pids"]), "arrays_gb": 2 * n_rows * CANVAS ** 2 / 2**30}
    return {"puzzle_ids": len(names) - 1, **sizes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/trm-official-1001")
    p.add_argument("--tasks", type=int, default=1280)
    p.add_argument("--eval", type=int, default=120, help="tasks whose test pairs go to test/ (ARC-AGI-2 evaluation)")
    p.add_argument("--augs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    folder = Path(args.dir)
    tasks = random_tasks(args.tasks, args.seed, size_mix())
    want = f"{args.tasks} {args.eval} {args.augs} {args.seed}"
    done = folder / ".complete"
    built, write_s = None, None
    if not done.exists() or done.read_text() != want:
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        built = write_sparse_build(folder, tasks, {t.id for t in tasks[-args.eval:]}, args.augs, args.seed)
        write_s = time.perf_counter() - t0
        done.write_text(want)
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    loaded, problems = load_official_build(folder)
    load_s = time.perf_counter() - t0
    same = all(len(got.train) == len(want.train) + (0 if want.id in {t.id for t in tasks[-args.eval:]} else 1)
               and all(np.array_equal(g, w) for (g, _), (w, _) in zip(got.train, want.train))
               for got, want in zip(loaded, tasks))
    apparent = sum(f.stat().st_size for f in folder.rglob("*.npy")) / 2**30
    emit({"bench": "official_build", "tasks": len(loaded), "problems": len(problems), "originals_recovered": same,
          "augs": args.augs, "built": built, "write_s": write_s, "arrays_gb_apparent": apparent,
          "identifiers_mb": (folder / "identifiers.json").stat().st_size / 2**20, "load_s": load_s,
          "rss_mb": rss_mb(), "load_rss_mb": rss_mb() - rss0})


if __name__ == "__main__":
    main()
