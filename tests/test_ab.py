"""The A/B harness (bench.ab): it answers --help, B differs from A by the departure alone in every stage of the
flow, and its finer first-attempt measure counts shapes and cells.  pytest tests/test_ab.py"""
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from bench.ab import changed_inputs, first_attempts, flow_commands, main
from conftest import ROOT


def test_the_harness_answers_help():
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout.lower() and "--b" in r.stdout


def test_b_adds_its_departure_to_every_stage_and_nothing_else(capsys):
    args = Namespace(checkpoint="CK", challenges="F", ttt_config=["configs/demo_ttt.yaml"])
    a = flow_commands(args, ["train.steps=5"], [], [], Path("A"))
    b = flow_commands(args, ["train.steps=5", "compute.crop=true"], ["--per-task"], ["--crop"], Path("B"))
    assert [c[0] for c in a] == ["stages.ttt", "stages.predict"]
    assert a[1][2] == "A/ttt" and b[1][2] == "B/ttt"  # each side predicts with its own TTT run
    for ca, cb in zip(a, b):
        extra = [x for x in cb if x not in ca and not x.startswith("B")]
        assert "compute.crop=true" in extra and set(extra) <= {"compute.crop=true", "--per-task", "--crop"}
    assert "--per-task" in b[0] and "--crop" in b[1] and "--crop" not in b[0]
    only_predict = flow_commands(Namespace(checkpoint="CK", challenges="F", ttt_config=None), [], [], [], Path("A"))
    assert [c[0] for c in only_predict] == ["stages.predict"] and "--set" not in only_predict[0]
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", "CK", "--challenges", "F", "--solutions", "S"])
    assert e.value.code == 2 and "give the departure" in capsys.readouterr().err


def test_a_missing_input_is_one_line_and_exit_2_before_any_side_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path), "--challenges", str(tmp_path / "nope.json"), "--solutions", "S",
              "--b", "seed=1", "--out", str(tmp_path / "sides")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == f"error: {tmp_path / 'nope.json'} does not exist"
    assert not (tmp_path / "sides").exists()


def test_first_attempts_count_right_shapes_and_their_cells():
    truth = {"t": [[[1, 2], [3, 4]], [[5]]], "u": [[[0, 0, 0]]]}
    sub = {"t": [{"attempt_1": [[1, 2], [3, 0]], "attempt_2": [[1, 2], [3, 4]]}, {"attempt_1": [[5], [5]]}],
           "u": [{"attempt_1": [[0, 1, 0]]}]}
    assert first_attempts(truth, sub) == {"inputs": 3, "right_shape": 2, "cells_right": round(5 / 7, 4)}
    assert first_attempts(truth, {}) == {"inputs": 3, "right_shape": 0, "cells_right": None}


def test_changed_inputs_count_first_attempts_and_pairs():
    a = {"t": [{"attempt_1": [[1]], "attempt_2": [[2]]}, {"attempt_1": [[3]], "attempt_2": [[3]]}]}
    b = {"t": [{"attempt_1": [[1]], "attempt_2": [[0]]}, {"attempt_1": [[4]], "attempt_2": [[3]]}]}
    assert changed_inputs(a, b) == (1, 2) and changed_inputs(a, a) == (0, 0)
