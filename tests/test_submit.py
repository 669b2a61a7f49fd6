"""Predict -> submission -> validate -> score, including broken hidden tasks and the report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import ARC, ROOT, built_once, needs_shared_arc, pretrain_20_steps
from pipeline.data.synthetic import synthetic_tasks
from submission.format import FALLBACK_GRID, build_submission, submission_problems
from test_data import broken_tasks

SYN = "tasks=8,seed=0,size=4,demos=400,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"


def stage(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A briefly trained demo model (it need not be good: these tests check plumbing, not accuracy), built once
    for every module and worker that uses it (tests/test_submit_flow.py, tests/test_kaggle.py)."""
    return built_once(tmp_path_factory, "pretrain_20_steps", pretrain_20_steps)


@pytest.fixture(scope="module")
def challenges(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's held-out tasks as Kaggle files, plus every kind of broken task."""
    d = tmp_path_factory.mktemp("kaggle")
    tasks = synthetic_tasks(SYN)
    ch = {t.id: t.to_json() for t in tasks}
    broken = {f"broken_{k}": v for k, v in broken_tasks().items() if k != "good"}
    broken["broken_badtestinput"] = {"train": broken_tasks()["good"]["train"], "test": [{"input": [[1, 2], [3]]}]}
    ch.update(broken)
    sol = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks}
    (d / "x_challenges.json").write_text(json.dumps(ch))
    (d / "x_solutions.json").write_text(json.dumps(sol))
    return d / "x_challenges.json", d / "x_solutions.json"


def test_predict_writes_a_valid_submission_despite_broken_tasks(checkpoint, challenges, tmp_path):
    ch, sol = challenges
    out = tmp_path / "submission.json"
    r = stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out),
              "--augs", "4", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    sub = json.loads(out.read_text())
    raw = json.loads(ch.read_text())
    assert submission_problems(raw, sub) == []
    assert set(sub) == set(raw)
    # broken tasks: a fallback wherever the test input can be represented
    assert sub["broken_emptytrain"][0]["attempt_1"] == raw["broken_emptytrain"]["test"][0]["input"]
    assert sub["broken_ragged"][0]["attempt_1"] == [[1]]  # its test input is valid: identity fallback
    assert sub["broken_badtestinput"][0]["attempt_1"] == FALLBACK_GRID
    assert sub["broken_notest"] == []
    assert "broken_ragged" in r.stderr  # the problem is logged with the task id
    assert "computation: as the checkpoint was trained, official evaluation (no departure)" in r.stderr
    details = json.loads(Path(str(out) + ".details.json").read_text())
    assert len(details) == 8 * 8 and all(d["views"] == 4 for d in details.values())
    # the official evaluation by default: every view runs all N_sup = halt_max_steps steps (demo_cpu.yaml: 4)
    assert {d["mean_steps"] for d in details.values()} == {4.0}
    v = stage("stages.validate", "--challenges", str(ch), "--submission", str(out))
    assert v.returncode == 0, v.stderr


def test_predict_in_two_processes_gives_the_same_submission(checkpoint, challenges, tmp_path):
    ch, _ = challenges
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(one),
                 "--augs", "4", "--no-progress").returncode == 0
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "stages.predict", "--checkpoint",
                        str(checkpoint), "--challenges", str(ch), "--out", str(two), "--augs", "4", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(one.read_text()) == json.loads(two.read_text())


def test_predict_bad_inputs_exit_2_without_traceback(checkpoint, tmp_path):
    trunc = tmp_path / "t_challenges.json"
    trunc.write_text('{"a": {"train"')
    r = stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(trunc), "--out", str(tmp_path / "s.json"))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    good = tmp_path / "g_challenges.json"
    good.write_text(json.dumps({"good": broken_tasks()["good"]}))
    r = stage("stages.predict", "--checkpoint", str(tmp_path), "--challenges", str(good), "--out", str(tmp_path / "s.json"))
    assert r.returncode == 2 and "no complete checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_time_budget_gives_fallbacks_not_failure(checkpoint, challenges, tmp_path):
    ch, _ = challenges
    out = tmp_path / "s.json"
    r = stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out),
              "--augs", "2", "--time-budget", "0.0001", "--no-progress")
    assert r.returncode == 0 and "time budget" in r.stderr
    assert submission_problems(json.loads(ch.read_text()), json.loads(out.read_text())) == []


def test_writer_fills_missing_and_invalid_attempts():
    ch = {"a": {"train": [], "test": [{"input": [[1, 1]]}, {"input": [[2]]}]}, "b": "garbage"}
    sub, notes = build_submission(ch, {("a", 0): [np.array([[3]]), [[11]]], ("a", 1): []})
    assert sub["a"][0] == {"attempt_1": [[3]], "attempt_2": [[1, 1]]}  # invalid [[11]] dropped; identity second
    assert sub["a"][1] == {"attempt_1": [[2]], "attempt_2": FALLBACK_GRID}
    assert sub["b"] == [] and any("a test 1" in n for n in notes)
    assert submission_problems(ch, sub) == []


def test_validate_lists_every_problem(tmp_path):
    ch = {"a": {"test": [{"input": [[1]]}, {"input": [[1]]}]}, "b": {"test": [{"input": [[1]]}]}}
    sub = {"a": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3]]}], "c": []}
    probs = submission_problems(ch, sub)
    assert any("a: 1 entries for 2" in p for p in probs) and any("b: missing" in p for p in probs)
    assert any("c: not a task" in p for p in probs)
    sub = {"a": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3]]}, {"attempt_1": [[10]]}], "b": [{"attempt_1": [[1]], "attempt_2": [[1]]}]}
    (tmp_path / "c.json").write_text(json.dumps(ch))
    (tmp_path / "s.json").write_text(json.dumps(sub))
    r = stage("stages.validate", "--challenges", str(tmp_path / "c.json"), "--submission", str(tmp_path / "s.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert any("a test 0: attempt_2: ragged" in line for line in lines) and any("a test 1: needs exactly" in line for line in lines)


def test_score_is_arc_prize_pass_at_2_and_writes_a_report(tmp_path):
    sol = {"a": [[[1]], [[2]]], "b": [[[3]]], "c": [[[4]]]}
    sub = {"a": [{"attempt_1": [[0]], "attempt_2": [[1]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}],
           "b": [{"attempt_1": [[3]], "attempt_2": [[0]]}]}
    ch = {k: {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[0]]}] * len(v)} for k, v in sol.items()}
    for name, obj in (("x_solutions.json", sol), ("x_challenges.json", ch), ("s.json", sub)):
        (tmp_path / name).write_text(json.dumps(obj))
    r = stage("stages.score", "--solutions", str(tmp_path / "x_solutions.json"), "--submission", str(tmp_path / "s.json"),
              "--report", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["score"] == pytest.approx((0.5 + 1 + 0) / 3) and result["tasks"] == 3 and result["solved_tasks"] == 1
    df = pl.read_parquet(tmp_path / "rep" / "tasks.parquet")
    assert set(df.columns) >= {"task", "tests", "correct", "winner_votes", "valid_views", "halting_steps",
                               "chunk_s_per_input", "grid"}
    assert (tmp_path / "rep" / "tasks.csv").exists() and (tmp_path / "rep" / "tasks" / "a.html").exists()
    assert "attempt 2 ✓" in (tmp_path / "rep" / "tasks" / "a.html").read_text()


def test_a_model_error_costs_only_its_tasks(checkpoint, challenges, tmp_path, monkeypatch, capsys):
    import pipeline.prediction.challenges
    import stages.predict as predict

    real = pipeline.prediction.challenges.predict_tests
    ch, _ = challenges
    raw = json.loads(ch.read_text())
    doomed = sorted(k for k in raw if k.startswith("syn"))[0]

    def flaky(model, tasks, rows, *args, **kwargs):
        packed = tasks.packed
        if any(packed.task_ids[packed.test_task[t]] == doomed for t in rows):
            raise RuntimeError("simulated CUDA error")
        return real(model, tasks, rows, *args, **kwargs)

    monkeypatch.setattr(pipeline.prediction.challenges, "predict_tests", flaky)
    out = tmp_path / "s.json"
    assert predict.main(["--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out), "--augs", "2",
                         "--no-progress", "--device", "cpu"]) == 0
    sub = json.loads(out.read_text())
    assert submission_problems(raw, sub) == []
    details = json.loads(Path(str(out) + ".details.json").read_text())
    assert not any(k.startswith(doomed + "/") for k in details)  # the failed task fell back ...
    assert sub[doomed][0]["attempt_1"] == raw[doomed]["test"][0]["input"]
    assert len(details) > 0  # ... and the others were still predicted


@needs_shared_arc
@pytest.mark.slow
def test_make_score_runs_the_hidden_test_flow_on_arc_agi_2_evaluation(tmp_path):
    """`make score` on real data: a tiny model briefly trained on the 1280-task mix, predict on the ARC-AGI-2
    evaluation challenges (the solutions file is read only by the scorer), then the score and report."""
    tiny = ["train.progress=false", "train.steps=2", "train.global_batch=8", "train.ckpt_every=2", "train.eval_every=0",
            "model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "model.puzzle_emb_len=1", "model.h_cycles=1",
            "model.l_cycles=1", "model.halt_max_steps=2", "data.augs_per_task=8", "data.eval_inputs=4", "data.eval_views=2",
            f"data.arc_root={ARC}"]
    r = stage("stages.pretrain", "--config", "configs/arc2_4xh100.yaml", "--set", f"run_dir={tmp_path / 'run'}", *tiny)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "score"
    r = subprocess.run(["make", "-s", "score", f"CHECKPOINT={tmp_path / 'run'}", f"OUT={out}", "AUGS=2",
                        f"CHALLENGES={ARC / 'arc-agi_evaluation2_challenges.json'}",
                        f"SOLUTIONS={ARC / 'arc-agi_evaluation2_solutions.json'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["tasks"] == 120 and result["test_inputs"] == 172 and 0.0 <= result["score"] <= 1.0
    # the contamination check, against the pairs pretraining recorded: mix:arc2-1280 trains on the evaluation
    # demonstrations, never on their test pairs
    overlap = result["overlap"]
    assert (overlap["checked"], overlap["contaminated_tasks"], overlap["tasks_with_demonstrations_trained"],
            overlap["not_checked"]) == ("hashes", [], 120, [])
    assert "recorded at pretraining" in overlap["training_data"][0] and (tmp_path / "run" / "trained_pairs.npz").is_file()
    assert "overlap check: no scored test pair occurs" in r.stderr and "warning" not in r.stderr
    challenges = json.loads((ARC / "arc-agi_evaluation2_challenges.json").read_text())
    assert submission_problems(challenges, json.loads((out / "submission.json").read_text())) == []
    assert len(pl.read_csv(out / "report" / "tasks.csv")) == 120


@pytest.mark.slow
def test_compiled_prediction_matches_eager(checkpoint, challenges, tmp_path):
    """The torch.compile path (on by default on GPU) predicts exactly what eager mode predicts."""
    ch, _ = challenges
    outs = []
    for flag in ("false", "true"):
        run_dir = tmp_path / flag
        import shutil

        shutil.copytree(checkpoint, run_dir)
        ck = sorted((run_dir / "ckpt").glob("step-*"))[-1]
        cfg = (ck / "config.yaml").read_text().replace("compile: auto", f"compile: {flag}")
        assert f"compile: {flag}" in cfg
        (ck / "config.yaml").write_text(cfg)
        out = tmp_path / f"{flag}.json"
        r = stage("stages.predict", "--checkpoint", str(run_dir), "--challenges", str(ch), "--out", str(out),
                  "--augs", "2", "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("torch.compile'd" in r.stderr) == (flag == "true")
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1]
