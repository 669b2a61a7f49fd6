"""The contamination check: canonical pair hashes (kernel against reference, invariant under the 8 dihedral
transforms and colour permutations), `stages.data overlap` finding augmented evaluation pairs embedded in a
pair-list folder (as NVARC's nvarc_full embeds ARC-AGI-2 evaluation puzzles), and `stages.score --checkpoint`'s
warning.

    .venv/bin/python -m pytest -q tests/test_overlap.py"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from kernels.canonical import canonical_hash_ref, pair_hashes
from kernels.reference import augment_grid_ref
from pipeline.checkpoint import write_weights_checkpoint
from pipeline.config import dump_config, load_config
from pipeline.nn.model import TRM
import pipeline.overlap
from pipeline.overlap import TRAINED_PAIRS, TrainedPairs, record_trained_pairs, relation
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.sources import load_source
from pipeline.data.tasks import Task, write_json_atomic
from scripts.make_fixtures import random_pairs, random_tasks, write_pairs
from stages.data import main as data_main
from stages.pretrain import main as pretrain_main
from stages.score import main as score_main

SHAPES = np.array([[3, 3, 3, 3], [2, 5, 5, 2], [1, 1, 4, 4], [6, 6, 2, 2], [7, 4, 9, 1]])


def _perm(rng):
    return np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)


def test_canonical_hash_equals_its_reference_and_ignores_augmentation():
    rng = np.random.default_rng(0)
    base = random_pairs(rng, SHAPES, 30) + [(np.zeros((2, 2), np.uint8), np.array([[0, 3]], np.uint8))]
    pairs = []
    for a, b in base:  # each pair, then its 8 dihedral versions, each under a random colour map
        pairs += [(a, b)] + [(augment_grid_ref(a, d, q), augment_grid_ref(b, d, q)) for d in range(8) for q in [_perm(rng)]]
    packed = pack_tasks([Task("t", pairs, [pairs[0][0]])])
    h = pair_hashes(packed.cells, packed.starts, packed.heights, packed.widths, packed.ex_in, packed.ex_out)
    assert h.tolist() == [canonical_hash_ref(a, b) for a, b in pairs]
    split = pair_hashes(packed.cells, packed.starts, packed.heights, packed.widths, packed.ex_in, packed.ex_out, threads=4)
    assert np.array_equal(split, h)  # the pairs hashed in 4 threads, each writing its own slice
    groups = h.reshape(len(base), 9)
    assert (groups == groups[:, :1]).all()
    assert len(set(groups[:, 0].tolist())) == len(base)  # different pairs, different hashes
    a, b = base[0]
    changed = b.copy()
    changed[0, 0] = (changed[0, 0] + 1) % 10
    assert len({canonical_hash_ref(a, b), canonical_hash_ref(b, a), canonical_hash_ref(a, changed)}) == 3
    only_inputs = pair_hashes(packed.cells, packed.starts, packed.heights, packed.widths, packed.ex_in[:3], [-1] * 3)
    assert only_inputs.tolist() == [canonical_hash_ref(a, None) for a, _ in pairs[:3]]


def test_relation_finds_the_transform():
    rng = np.random.default_rng(1)
    a, b = random_pairs(rng, SHAPES, 1)[0]
    perm = _perm(rng)
    d, q = relation((a, b), (augment_grid_ref(a, 6, perm), augment_grid_ref(b, 6, perm)))
    assert np.array_equal(augment_grid_ref(a, d, q), augment_grid_ref(a, 6, perm))
    assert np.array_equal(augment_grid_ref(b, d, q), augment_grid_ref(b, 6, perm))
    assert relation((a, b), (a, (b + 1) % 10)) is None
    assert relation((a, b), ((a + 1) % 10, (b + 1) % 10)) is None  # a colour map, but one that moves 0


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    """A Kaggle-format evaluation set of 20 tasks and a pair-list folder of 150 random puzzles plus three that
    embed evaluation pairs: an augmented test pair, an identical test pair, an augmented demonstration."""
    root = tmp_path_factory.mktemp("overlap")
    tasks = random_tasks(20, seed=3, shapes=SHAPES, demos=3, tests=2)
    write_json_atomic(root / "ev_challenges.json", {t.id: t.to_json() for t in tasks})
    write_json_atomic(root / "ev_solutions.json", {t.id: [o.tolist() for o in t.test_outputs] for t in tasks})
    (root / "sub.json").write_text(json.dumps({}))  # an empty submission: score 0, the check is what is tested
    rng = np.random.default_rng(4)
    q = _perm(rng)
    filler = random_pairs(rng, SHAPES, 30)
    i, o = tasks[4].test_inputs[1], tasks[4].test_outputs[1]
    a, b = tasks[9].train[2]
    extra = {"nvarc_full/batch_0000/leak_test": filler[:5] + [(augment_grid_ref(i, 5, q), augment_grid_ref(o, 5, q))],
             "nvarc_full/batch_0000/leak_same": [(tasks[11].test_inputs[0], tasks[11].test_outputs[0])] + filler[5:17],
             "nvarc_full/batch_0000/leak_demo": filler[17:] + [(augment_grid_ref(a, 2, q), augment_grid_ref(b, 2, q))]}
    write_pairs(root / "nvarc", 150, "nvarc", mean_pairs=12, seed=5, shapes=SHAPES, extra=extra)
    write_pairs(root / "clean", 150, "nvarc", mean_pairs=12, seed=5, shapes=SHAPES)
    return root, tasks, q


def _overlap(*args):
    return subprocess.run([sys.executable, "-m", "stages.data", "overlap", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_overlap_finds_the_embedded_evaluation_pairs(contaminated):
    root, tasks, q = contaminated
    r = _overlap(f"pairs:{root / 'nvarc'}", "--against", str(root / "ev_challenges.json"), "--json", str(root / "r.json"))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{tasks[4].id}: test 1 = nvarc_full/batch_0000/leak_test pair 5 (dihedral 5 + colours ")
    assert lines[1] == f"{tasks[11].id}: test 0 = nvarc_full/batch_0000/leak_same pair 0 (identical)"
    assert lines[2].startswith("1 evaluation tasks have demonstrations in the training data (1 pairs;")
    assert "overlap: 2 of 20 evaluation tasks have test pairs in the training data (2 of 40 test pairs" in r.stderr
    report = json.loads((root / "r.json").read_text())
    assert report["contaminated_tasks"] == sorted([tasks[4].id, tasks[11].id])
    found = report["tasks"][tasks[4].id]["tests"][0]
    used = np.unique(np.concatenate([tasks[4].test_inputs[1].ravel(), tasks[4].test_outputs[1].ravel()]))
    assert found["dihedral"] == 5 and np.array_equal(np.array(found["colour_map"])[used], q[used])  # the map, where used
    demo = report["tasks"][tasks[9].id]["demonstrations"]
    assert [(m["index"], m["train_task"], m["train_pair"], m["dihedral"]) for m in demo] == \
        [(2, "nvarc_full/batch_0000/leak_demo", 13, 2)]


def test_overlap_clean_and_training_on_evaluation_demonstrations_only(contaminated, capsys):
    root, tasks, _ = contaminated
    ev = str(root / "ev_challenges.json")
    assert data_main(["overlap", f"pairs:{root / 'clean'}", "--against", ev]) == 0  # in-process: no 2 s start-up
    out, err = capsys.readouterr()
    assert out == "" and "overlap: 0 of 20" in err
    # the paper's recipe trains on evaluation demonstrations (#demos): found, reported, but not contamination
    assert data_main(["overlap", f"{ev}#demos", "--against", ev]) == 0
    assert "20 evaluation tasks have demonstrations" in capsys.readouterr().out
    assert data_main(["overlap", ev, "--against", ev]) == 1
    out, err = capsys.readouterr()
    assert "overlap: 20 of 20" in err and "(60 pairs;" in out  # 3 per task


def _checkpoint(folder, sources, init_from=""):
    """A weights checkpoint of the demo model whose config trained on `sources` (its task table: two ids)."""
    sets = [f"data.sources={json.dumps(sources)}"] + ([f"train.init_from={init_from}"] if init_from else [])
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", sets)
    return write_weights_checkpoint(folder, model_state=TRM(cfg.model, 3).state_dict(), config_yaml=dump_config(cfg),
                                    task_ids=["a", "b"], ids=PerTaskIds(2), meta={}).path


def _score(root, ck, capsys, challenges=True):
    """stages.score in-process (`main`, as `python -m` runs it): exit code, the JSON result, stderr."""
    sol = root / ("ev_solutions.json" if challenges else "alone/ev_solutions.json")
    sol.parent.mkdir(exist_ok=True)
    if not challenges:
        sol.write_text((root / "ev_solutions.json").read_text())
    code = score_main(["--solutions", str(sol), "--submission", str(root / "sub.json"), "--checkpoint", str(ck)])
    out, err = capsys.readouterr()
    return code, json.loads(out.splitlines()[-1]), err


def test_score_warns_when_the_checkpoint_trained_on_the_scored_test_pairs(contaminated, tmp_path, capsys):
    root, tasks, _ = contaminated
    leaked = sorted([tasks[4].id, tasks[11].id])
    dirty = _checkpoint(tmp_path / "dirty" / "step-00000001", [f"pairs:{root / 'nvarc'}"])  # no record: re-read
    r = subprocess.run([sys.executable, "-m", "stages.score", "--solutions", str(root / "ev_solutions.json"),
                        "--submission", str(root / "sub.json"), "--checkpoint", str(dirty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # the one run as a process
    assert r.returncode == 0, r.stderr
    assert "warning: 2 of the 20 scored tasks have test pairs in the checkpoint's training data" in r.stderr
    assert "re-read now" in r.stderr and r.stderr.index("score 0.0000") < r.stderr.index("warning: 2 of")  # score first
    assert json.loads(r.stdout.splitlines()[-1])["overlap"]["contaminated_tasks"] == leaked
    code, result, err = _score(root, _checkpoint(tmp_path / "clean" / "step-00000001", [f"pairs:{root / 'clean'}"]),
                               capsys)
    assert code == 0 and "overlap check: no scored test pair occurs" in err and "warning" not in err
    # sources that cannot be read here, no record: NOT checked, and task ids are no all-clear
    gone = _checkpoint(tmp_path / "gone" / "step-00000001", [f"pairs:{tmp_path / 'gone_data'}"])
    (gone / "tasks.json").write_text(json.dumps({"task_ids": [tasks[0].id, "x"], "puzzle_ids": "per_task"}))
    code, result, err = _score(root, gone, capsys)
    assert code == 0 and "warning: contamination NOT checked:" in err and "cannot be read here" in err
    assert "by task id only, 1 of the 20 scored tasks are in the checkpoint's task table" in err
    assert "no scored test pair" not in err and result["overlap"]["checked"] == "no"
    code, result, err = _score(root, _checkpoint(tmp_path / "nowhere" / "step-00000001", ["nowhere.json"]), capsys)
    assert "warning: contamination NOT checked:" in err and "0 of the 20 scored tasks" in err and "no scored" not in err
    code, result, err = _score(root, gone, capsys, challenges=False)
    assert "contamination NOT checked: the scored tasks' challenges file was not found" in err


def test_the_record_made_at_pretraining_is_checked_first_and_inherited(contaminated, tmp_path, capsys):
    """The NVARC case: a parent run pretrained on puzzles that embed evaluation pairs, whose files are gone by
    scoring time, and a child run warm-started from it on clean data. The child's record (written by
    stages.pretrain when it starts) holds the parent's pairs, so scoring the child still finds the leak."""
    root, tasks, _ = contaminated
    nvarc = tmp_path / "nvarc"
    shutil.copytree(root / "nvarc", nvarc)
    parent = tmp_path / "parent"
    _checkpoint(parent / "ckpt" / "step-00000001", [f"pairs:{nvarc}"])
    record = record_trained_pairs(parent, load_source(f"pairs:{nvarc}").pack(), [f"pairs:{nvarc}"])
    assert (parent / TRAINED_PAIRS).is_file() and len(record.tasks) == 153
    shutil.rmtree(nvarc)  # the data the parent trained on is gone (or changed) since
    child = tmp_path / "child"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert pretrain_main(["--config", str(ROOT / "configs/demo_cpu.yaml"), "--set", f"run_dir={child}",
                              f"data.sources=['pairs:{root / 'clean'}']", "data.canvas=10", "model.seq_len=100",
                              f"train.init_from={parent}", "train.steps=1", "train.progress=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    mine = TrainedPairs.load(child / TRAINED_PAIRS)
    assert "nvarc_full/batch_0000/leak_test" in mine.tasks and not mine.unknown
    assert mine.sources == [f"pairs:{root / 'clean'}", f"pairs:{nvarc}"]
    code, result, err = _score(root, child, capsys)
    assert code == 0 and "warning: 2 of the 20 scored tasks have test pairs" in err and "recorded at pretraining" in err
    assert result["overlap"]["contaminated_tasks"] == sorted([tasks[4].id, tasks[11].id])
    assert "(nvarc_full/batch_0000/leak_same)" in err
    # a warm start without a record (an import, an older run): that part is NOT checked, and it says so
    orphan = tmp_path / "orphan"
    _checkpoint(orphan / "ckpt" / "step-00000001", [f"pairs:{root / 'clean'}"], init_from=str(tmp_path / "import"))
    record_trained_pairs(orphan, load_source(f"pairs:{root / 'clean'}").pack(), [f"pairs:{root / 'clean'}"],
                         str(_checkpoint(tmp_path / "import", ["nowhere.json"])))
    code, result, err = _score(root, orphan, capsys)
    assert code == 0 and f"warning: contamination NOT checked for warm start {tmp_path / 'import'}" in err
    assert "as far as it could be checked" in err and result["overlap"]["not_checked"]


def test_a_failing_check_never_costs_the_score(contaminated, tmp_path, capsys, monkeypatch):
    root, _, _ = contaminated
    code, result, err = _score(root, tmp_path / "no_such_checkpoint", capsys)
    assert code == 0 and result["score"] == 0.0 and "score 0.0000" in err
    assert "warning: contamination check not run: CheckpointError:" in err and "Traceback" not in err
    damaged = tmp_path / "damaged"  # a damaged record: said so, and the sources are re-read instead
    _checkpoint(damaged / "ckpt" / "step-00000001", [f"pairs:{root / 'clean'}"])
    (damaged / TRAINED_PAIRS).write_bytes(b"not an npz")
    code, result, err = _score(root, damaged, capsys)
    assert code == 0 and "warning: contamination NOT checked for" in err and "damaged record of trained pairs" in err
    assert "re-read now" in err and result["overlap"]["checked"] == "hashes"
    # and pretraining on top of it (a resumed run) does not die of it: the lost part is named as unknown
    again = record_trained_pairs(damaged, load_source(f"pairs:{root / 'clean'}").pack(), [f"pairs:{root / 'clean'}"])
    assert again.unknown and "damaged record" in again.unknown[0] and TrainedPairs.load(damaged / TRAINED_PAIRS).unknown

    def out_of_memory(*args, **kwargs):
        raise MemoryError("103M puzzles")

    monkeypatch.setattr(pipeline.overlap, "load_sources", out_of_memory)
    code, result, err = _score(root, _checkpoint(tmp_path / "big" / "step-00000001", [f"pairs:{root / 'clean'}"]),
                               capsys)
    assert code == 0 and "warning: contamination check not run: MemoryError: 103M puzzles" in err
