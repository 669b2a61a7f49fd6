"""The contamination check: canonical pair hashes (kernel against reference, invariant under the 8 dihedral
transforms and colour permutations), `stages.data overlap` finding augmented evaluation pairs embedded in a
pair-list folder (as NVARC's nvarc_full embeds ARC-AGI-2 evaluation puzzles), and `stages.score --checkpoint`'s
warning.

    .venv/bin/python -m pytest -q tests/test_overlap.py"""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from kernels.canonical import canonical_hash_ref, pair_hashes
from kernels.reference import augment_grid_ref
from pipeline.checkpoint import write_weights_checkpoint
from pipeline.config import dump_config, load_config
from pipeline.model import TRM
from pipeline.overlap import relation
from pipeline.sampler import PerTaskIds, pack_tasks
from pipeline.tasks import Task, write_json_atomic
from scripts.make_fixtures import random_pairs, random_tasks, write_pairs

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


def test_overlap_clean_and_training_on_evaluation_demonstrations_only(contaminated):
    root, tasks, _ = contaminated
    r = _overlap(f"pairs:{root / 'clean'}", "--against", str(root / "ev_challenges.json"))
    assert r.returncode == 0 and r.stdout == "" and "overlap: 0 of 20" in r.stderr
    # the paper's recipe trains on evaluation demonstrations (#demos): found, reported, but not contamination
    r = _overlap(f"{root / 'ev_challenges.json'}#demos", "--against", str(root / "ev_challenges.json"))
    assert r.returncode == 0 and "20 evaluation tasks have demonstrations" in r.stdout
    r = _overlap(str(root / "ev_challenges.json"), "--against", str(root / "ev_challenges.json"))
    assert r.returncode == 1 and "overlap: 20 of 20" in r.stderr and "(60 pairs;" in r.stdout  # 3 per task


def _checkpoint(root, sources):
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", [f"data.sources={json.dumps(sources)}"])
    model = TRM(cfg.model, 3)
    return write_weights_checkpoint(root / "ck" / "step-00000001", model_state=model.state_dict(),
                                    config_yaml=dump_config(cfg), task_ids=["a", "b"], ids=PerTaskIds(2), meta={})


def _score(root, ck, challenges=True):
    sol = root / ("ev_solutions.json" if challenges else "alone/ev_solutions.json")
    sol.parent.mkdir(exist_ok=True)
    if not challenges:
        sol.write_text((root / "ev_solutions.json").read_text())
    (root / "sub.json").write_text(json.dumps({}))
    return subprocess.run([sys.executable, "-m", "stages.score", "--solutions", str(sol), "--submission",
                           str(root / "sub.json"), "--checkpoint", str(ck)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_score_warns_when_the_checkpoint_trained_on_the_scored_test_pairs(contaminated, tmp_path):
    root, tasks, _ = contaminated
    r = _score(root, _checkpoint(tmp_path / "dirty", [f"pairs:{root / 'nvarc'}"]))
    assert r.returncode == 0, r.stderr
    assert "warning: 2 of the 20 scored tasks have test pairs in the checkpoint's training data" in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["overlap"]["contaminated_tasks"] == sorted([tasks[4].id, tasks[11].id])
    r = _score(root, _checkpoint(tmp_path / "clean", [f"pairs:{root / 'clean'}"]))
    assert "overlap check: no scored test pair occurs" in r.stderr and "warning" not in r.stderr
    # sources that cannot be read here: ids only, and it says so
    ck = _checkpoint(tmp_path / "gone", [f"pairs:{tmp_path / 'gone_data'}"])
    (tmp_path / "gone" / "ck" / "step-00000001" / "tasks.json").write_text(
        json.dumps({"task_ids": [tasks[0].id, "x"], "puzzle_ids": "per_task"}))
    r = _score(root, ck)
    assert "warning: the checkpoint's task table holds 1 of the 20 scored tasks" in r.stderr
    assert "ids only, its training sources cannot be read here" in r.stderr
    r = _score(root, ck, challenges=False)
    assert "ids only, the scored tasks' challenges file was not found" in r.stderr
