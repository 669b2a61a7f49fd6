"""Official checkpoints keep their puzzle embeddings: an official build's identifiers.json becomes our id table,
and our views of its evaluation test inputs are the official build's test rows with the same puzzle ids.

`../shared/fixtures/official_build_mini` is a real official build (five tasks, 8 augmentations each)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import FIXTURE, ROOT, SHARED, needs_shared
from pipeline.prediction.infer import PredictTasks, ViewSpec, make_views
from pipeline.layout import Checkpoint
from pipeline.data.official_build import official_id_table
from pipeline.nn.official import read_official
from pipeline.data.official_build import read_identifiers
from pipeline.data.encode import encode
from pipeline.data.packed import pack_tasks
from pipeline.data.sources import load_source
from pipeline.data.tasks import DataError

BUILD = SHARED / "fixtures" / "official_build_mini"
needs_build = needs_shared(BUILD)  # each test carries what it reads (one reads neither: it runs without ../shared)
needs_weights = needs_shared(FIXTURE)
ORDER = ["007bbfb7", "00d62c1b", "017c7c7b", "00576224", "009d5c81"]


def _official_test_rows() -> list[tuple[int, bytes, bytes]]:
    """(puzzle id, input canvas, label canvas) of every example in the official test split."""
    inputs, labels = np.load(BUILD / "test/all__inputs.npy"), np.load(BUILD / "test/all__labels.npy")
    pids, starts = np.load(BUILD / "test/all__puzzle_identifiers.npy"), np.load(BUILD / "test/all__puzzle_indices.npy")
    return [(int(pids[p]), inputs[j].tobytes(), labels[j].tobytes())
            for p in range(len(pids)) for j in range(starts[p], starts[p + 1])]


@needs_build
def test_official_identifiers_become_our_id_table():
    table = official_id_table(read_identifiers(BUILD / "identifiers.json"))
    assert table.task_ids == ORDER  # official order
    assert list(table.ids.counts) == [9] * 5 and table.ids.num_ids == 46
    np.testing.assert_array_equal(table.rows, np.arange(46))  # the builder's order is ours: every row stays
    first = table.ids.offsets[:-1]
    assert (table.ids.dihedral[first] == 0).all() and (table.ids.perms[first] == np.arange(10)).all()
    # official id 40, 009d5c81|||t3|||0512739486, is our id 40 (table entry 39, ids count from 1)
    pid, d, perms = table.ids.views(4, 9, np.random.default_rng(0))
    assert pid[3] == 40 and d[3] == 3 and perms[3].tolist() == [0, 5, 1, 2, 7, 3, 9, 4, 8, 6]


@needs_build
def test_official_build_test_rows_equal_our_views_with_the_imported_ids():
    table = official_id_table(read_identifiers(BUILD))
    packed = pack_tasks(load_source(str(BUILD / "source/arc-agi_minieval_challenges.json#demos")).tasks)
    task_to_ckpt = np.array([table.task_ids.index(t) for t in packed.task_ids])
    ours = []
    for row in range(len(packed.test_task)):
        n = int(table.ids.counts[task_to_ckpt[packed.test_task[row]]])  # one view per version, as official
        v = make_views(PredictTasks(packed, task_to_ckpt, table.ids), np.array([row]), ViewSpec(n, canvas=30))
        assert len(set(v.puzzle_ids.tolist())) == n
        labels = encode(packed, np.full(n, packed.test_in[row]), np.full(n, packed.test_out[row]), v.dihedral,
                        v.perms, np.zeros(n), np.zeros(n), 30)["labels"]
        ours += [(int(table.rows[p]), x.tobytes(), y.tobytes()) for p, x, y in zip(v.puzzle_ids, v.inputs, labels)]
    theirs = _official_test_rows()
    assert len(theirs) == 18  # 2 evaluation tasks x 9 versions x 1 test input
    assert sorted(ours) == sorted(theirs)


@needs_build
def test_official_ids_in_any_order_land_on_the_row_they_name():
    names = read_identifiers(BUILD)
    rng = np.random.default_rng(0)
    order = np.concatenate([[0], 1 + rng.permutation(len(names) - 1)])
    shuffled = [names[i] for i in order]  # shuffled[j] = names[order[j]]
    base, moved = official_id_table(names), official_id_table(shuffled)
    assert sorted(moved.task_ids) == sorted(ORDER)
    for t, task in enumerate(moved.task_ids):
        b = base.task_ids.index(task)
        rng = np.random.default_rng(0)
        got = [(int(d), bytes(p), shuffled[moved.rows[i]]) for i, d, p in zip(*moved.ids.views(t, 9, rng))]
        want = [(int(d), bytes(p), names[base.rows[i]]) for i, d, p in zip(*base.ids.views(b, 9, rng))]
        assert sorted(got) == sorted(want)
        assert got[0][2] == task  # version 0 is the original


def test_official_identifiers_errors_name_the_entry(tmp_path):
    bad = tmp_path / "identifiers.json"
    bad.write_text('["<blank>", "abc", "abc|||t9|||0123456789"]')
    with pytest.raises(DataError, match=r"official puzzle id 2 'abc\|\|\|t9\|\|\|0123456789'"):
        official_id_table(read_identifiers(bad))
    bad.write_text('["<blank>", "abc|||t1|||0123456789"]')
    with pytest.raises(DataError, match="official task abc: no puzzle id for its original"):
        official_id_table(read_identifiers(bad))
    with pytest.raises(DataError, match="not found"):
        read_identifiers(tmp_path / "nowhere")


def _import(tmp_path, official_file, *extra):
    out = tmp_path / "ckpt" / "step-00000000"
    cmd = [sys.executable, "-m", "stages.import_official", "--official", str(official_file), *extra,
           "--config", "configs/demo_cpu.yaml", "--out", str(out), "--set", "model.heads=4", "model.h_cycles=2",
           "model.l_cycles=3", "model.halt_max_steps=4", "model.puzzle_emb_len=2", "model.seq_len=900", "data.canvas=30"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@needs_build
@needs_weights
def test_official_import_with_its_dataset_keeps_every_puzzle_row(tmp_path):
    official = read_official(FIXTURE / "weights.safetensors")
    ndim = official["inner.puzzle_emb.weights"].shape[1]
    official["inner.puzzle_emb.weights"] = torch.randn(46, ndim, generator=torch.Generator().manual_seed(0))
    official["inner.puzzle_emb.weights"][0] = 0
    f = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in official.items()}, str(f))
    r = _import(tmp_path, f, "--dataset", str(BUILD))
    assert r.returncode == 0, r.stderr
    from pipeline.checkpoint import load_for_prediction

    loaded = load_for_prediction(Checkpoint.open(tmp_path))
    table = official_id_table(read_identifiers(BUILD))
    assert loaded.task_ids == ORDER
    for key, want in table.ids.state_dict().items():
        np.testing.assert_array_equal(loaded.ids.state_dict()[key], want)
    torch.testing.assert_close(loaded.model.puzzle_emb, official["inner.puzzle_emb.weights"][table.rows])
    assert loaded.config.predict.augs == 9 and loaded.config.predict.translate is False
    # an official import computes officially: the full canvas, all N_sup steps, untranslated views, in
    # predict and in TTT (and so in submit, which builds its TTT config the same way)
    from pipeline.training.ttt import ttt_config, ttt_departures

    c = loaded.config
    assert (c.compute.crop, c.predict.adaptive_halting, c.predict.max_steps, c.data.max_offset) == (False, False, 0, 0)
    assert c.model.halt_max_steps == 4 and loaded.departures == []  # the fixture's N_sup, every step run
    ttt = ttt_config(loaded.checkpoint, ROOT / "configs" / "ttt_full.yaml", [], tmp_path / "ttt")
    assert (ttt.compute.crop, ttt.predict.adaptive_halting, ttt.predict.translate) == (False, False, False)
    assert ttt_departures(ttt, loaded.checkpoint, ROOT / "configs" / "ttt_full.yaml") == []

    r = _import(tmp_path, FIXTURE / "weights.safetensors", "--dataset", str(BUILD))  # another build's table
    assert r.returncode == 2 and "46 puzzle ids, but the checkpoint's puzzle table has" in r.stderr
    assert "Traceback" not in r.stderr


@needs_weights
@pytest.mark.parametrize("prefix", ["", "model.", "_orig_mod.", "_orig_mod.model."])
def test_an_official_pt_reads_the_same_under_each_prefix_a_save_may_carry(tmp_path, prefix):
    """The keys of an official `.pt` with none, `model.` (the loss head), `_orig_mod.` (torch.compile) or both:
    the importer reads the same state as from the fixture's own names (the whole import, from the prefix
    official training writes: the next test)."""
    official = read_official(FIXTURE / "weights.safetensors")
    torch.save({f"{prefix}{k}": v for k, v in official.items()}, tmp_path / "step_1000.pt")
    read = read_official(tmp_path / "step_1000.pt")
    assert read.keys() == official.keys()
    for k, v in official.items():
        torch.testing.assert_close(read[k], v, rtol=0, atol=0, msg=k)


@needs_build
@needs_weights
def test_an_official_pt_with_its_prefixes_and_ids_in_another_order_keeps_every_row(tmp_path):
    """The `.pt` path as official training saves it (every key under `_orig_mod.model.`: torch.compile and the
    loss head) with an identifiers.json whose order is not the builder's: each of our ids gets the embedding
    the checkpoint holds for the official name it maps to, looked up by name."""
    official = read_official(FIXTURE / "weights.safetensors")
    by_name = torch.randn(46, official["inner.puzzle_emb.weights"].shape[1], generator=torch.Generator().manual_seed(1))
    by_name[0] = 0
    names = read_identifiers(BUILD)
    order = np.concatenate([[0], 1 + np.random.default_rng(1).permutation(len(names) - 1)])
    shuffled = [names[i] for i in order]  # official row j of this build is names[order[j]]
    official["inner.puzzle_emb.weights"] = by_name[order]
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "identifiers.json").write_text(json.dumps(shuffled))
    torch.save({f"_orig_mod.model.{k}": v for k, v in official.items()}, tmp_path / "step_1000.pt")
    r = _import(tmp_path, tmp_path / "step_1000.pt", "--dataset", str(tmp_path / "build"))
    assert r.returncode == 0, r.stderr
    from pipeline.checkpoint import load_for_prediction

    loaded, table = load_for_prediction(Checkpoint.open(tmp_path)), official_id_table(shuffled)
    assert (table.rows != np.arange(46)).any()  # the row order is not the identity here
    for key, want in table.ids.state_dict().items():
        np.testing.assert_array_equal(loaded.ids.state_dict()[key], want)
    for ours in range(1, 46):
        want = by_name[names.index(shuffled[table.rows[ours]])]
        torch.testing.assert_close(loaded.model.puzzle_emb[ours], want, msg=f"our id {ours}")
