"""The official TRM build folder as a source (`official:DIR`): the original tasks come back from a real official
build (../shared/fixtures/official_build_mini) and from generated ones, also where a task's original puzzle is
missing (an augmented one is inverted); bad builds are one-line errors.

    .venv/bin/python -m pytest -q tests/test_official_build.py"""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED, needs_shared
from pipeline.data.official_build import official_id_table, read_identifiers
from pipeline.data.sources import load_source
from scripts.make_fixtures import random_tasks, write_official_build
from stages._cli import run
from stages.data import main as data_main

BUILD = SHARED / "fixtures" / "official_build_mini"
SHAPES = np.array([[3, 3, 3, 3], [2, 5, 5, 2], [1, 1, 4, 4], [30, 30, 30, 30], [7, 4, 9, 1]])


def _pairs(pairs):
    return sorted((np.asarray(i).tolist(), np.asarray(o).tolist()) for i, o in pairs)


@needs_shared(BUILD)
def test_real_official_build_gives_back_its_source_tasks():
    res = load_source(f"official:{BUILD}")
    assert not res.problems
    assert [t.id for t in res.tasks] == official_id_table(read_identifiers(BUILD)).task_ids  # the build's order
    mini = json.loads((BUILD / "source/arc-agi_mini_challenges.json").read_text())
    mini_sol = json.loads((BUILD / "source/arc-agi_mini_solutions.json").read_text())
    ev = json.loads((BUILD / "source/arc-agi_minieval_challenges.json").read_text())
    ev_sol = json.loads((BUILD / "source/arc-agi_minieval_solutions.json").read_text())
    got = {t.id: t for t in res.tasks}
    for tid, task in mini.items():  # a training subset: its test pairs were trained on, as demonstrations
        pairs = [(p["input"], p["output"]) for p in task["train"]]
        pairs += [(p["input"], s) for p, s in zip(task["test"], mini_sol[tid])]
        assert _pairs(got[tid].train) == _pairs(pairs) and not got[tid].test_inputs
    for tid, task in ev.items():  # the test set: demonstrations train, test pairs are held out with their outputs
        assert _pairs(got[tid].train) == _pairs([(p["input"], p["output"]) for p in task["train"]])
        assert _pairs(zip(got[tid].test_inputs, got[tid].test_outputs)) == _pairs(
            [(p["input"], s) for p, s in zip(task["test"], ev_sol[tid])])
        assert got[tid].train_on_test is False
    packed = res.pack()  # and training on it: the evaluation tests are held-out rows, never examples
    trained = sum(len(t["train"]) + len(t["test"]) for t in mini.values()) + sum(len(t["train"]) for t in ev.values())
    assert (~packed.test_trainable).sum() == 2 and len(packed.ex_in) == trained == 23


def test_generated_build_recovers_every_task_even_without_its_original(tmp_path):
    tasks = random_tasks(300, seed=0, shapes=SHAPES)
    eval_ids = {t.id for t in tasks[-40:]}
    missing = {tasks[3].id, tasks[-1].id}  # the original filtered out: an augmented puzzle is inverted
    write_official_build(tmp_path, tasks, eval_ids, augs=4, seed=1, without_original=missing)
    res = load_source(f"official:{tmp_path}#demos")
    assert not res.problems and [t.id for t in res.tasks] == [t.id for t in tasks]
    for want, got in zip(tasks, res.tasks):
        if want.id in eval_ids:
            assert _pairs(got.train) == _pairs(want.train)
            assert _pairs(zip(got.test_inputs, got.test_outputs)) == _pairs(zip(want.test_inputs, want.test_outputs))
        else:
            assert _pairs(got.train) == _pairs(want.train + list(zip(want.test_inputs, want.test_outputs)))
            assert not got.test_inputs
    names = read_identifiers(tmp_path)
    assert tasks[3].id not in names and any(n.startswith(tasks[3].id + "|||") for n in names)


def _check(folder):
    return subprocess.run([sys.executable, "-m", "stages.data", "check", f"official:{folder}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_broken_builds_are_one_line_errors(tmp_path, capsys):
    tasks = random_tasks(6, seed=1, shapes=SHAPES)
    write_official_build(tmp_path, tasks, {tasks[-1].id}, augs=2, seed=2)
    inputs = np.load(tmp_path / "train/all__inputs.npy")
    starts = np.load(tmp_path / "train/all__puzzle_indices.npy")
    inputs[starts[3], :] = 0  # the first puzzle of task 1 (original + 2 augmentations per task): an empty input row
    np.save(tmp_path / "train/all__inputs.npy", inputs)
    r = _check(tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stdout.strip().splitlines() == [f"official:{tmp_path}: {tasks[1].id} (official:{tmp_path}): "
                                             f"{tmp_path}/train/all puzzle 3 example 0: the input row holds no grid"]
    assert "5 of 6 tasks valid" in r.stderr
    (tmp_path / "train/all__labels.npy").unlink()  # the other cases in-process (stages.data through stages._cli.run)
    for folder, line in ((tmp_path, "all__labels.npy: cannot read"), (tmp_path / "train", "identifiers.json: not found")):
        with pytest.raises(SystemExit) as end:
            run(data_main, ["check", f"official:{folder}"])
        err = capsys.readouterr().err
        assert end.value.code == 2 and line in err and err.startswith("error: ") and "Traceback" not in err
