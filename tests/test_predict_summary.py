"""stages.predict ends with one summary line (inputs predicted, fallbacks by reason) and exits 3 when the model
predicted none of the valid tasks' test inputs, while still writing the valid all-fallback submission."""
import json
import re

import numpy as np

from pipeline.prediction.challenges import MODEL_ERROR, NO_VALID_VIEW, TIME_BUDGET, TOO_LARGE, ChallengeRun, summary_line
from pipeline.prediction import infer
from submission.format import submission_problems
from test_submit import challenges, checkpoint, stage  # noqa: F401  (module fixtures: a briefly trained demo model)


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_model_failing_on_every_task_exits_3_with_a_valid_submission(checkpoint, challenges, tmp_path,  # noqa: F811
                                                                       monkeypatch, capsys):
    import pipeline.prediction.challenges
    import stages.predict as predict

    def broken(*args, **kwargs):
        raise RuntimeError("simulated CUDA error")

    monkeypatch.setattr(pipeline.prediction.challenges, "predict_tests", broken)
    ch, _ = challenges
    out = tmp_path / "s.json"
    code = predict.main(["--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out), "--augs", "2",
                         "--no-progress", "--device", "cpu"])
    assert code == 3
    raw, sub = json.loads(ch.read_text()), json.loads(out.read_text())
    assert submission_problems(raw, sub) == []  # the file is still written and valid
    last = _stderr_lines(capsys)[-1]
    assert "0 of 72 test inputs predicted by the model; fell back: 64 model error, 8 invalid task" in last
    assert "exit 3" in last


def test_predict_ends_with_a_summary_line_and_exit_0(checkpoint, challenges, tmp_path, capsys):  # noqa: F811
    import stages.predict as predict

    ch, _ = challenges
    code = predict.main(["--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(tmp_path / "s.json"),
                         "--augs", "2", "--no-progress", "--device", "cpu"])
    assert code == 0
    last = _stderr_lines(capsys)[-1]
    m = re.search(r"(\d+) of 72 test inputs predicted by the model; fell back: (.*)$", last)
    assert m and int(m.group(1)) > 0 and "8 invalid task" in m.group(2)  # a barely trained model: some views invalid


def test_exit_3_reaches_the_shell_when_no_task_fits_the_model(checkpoint, tmp_path):  # noqa: F811
    big = {"train": [{"input": [[1] * 6] * 6, "output": [[2] * 6] * 6}], "test": [{"input": [[3] * 6] * 6}]}
    ch = tmp_path / "big_challenges.json"
    ch.write_text(json.dumps({"big1": big, "big2": big}))  # 6x6 grids, the demo model's canvas is 5x5
    out = tmp_path / "s.json"
    r = stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out),
              "--no-progress")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "0 of 2 test inputs predicted by the model; fell back: 2 larger than the canvas" in r.stderr.splitlines()[-1]
    assert submission_problems(json.loads(ch.read_text()), json.loads(out.read_text())) == []
    assert "Exit status" in stage("stages.predict", "--help").stdout


def test_only_a_model_that_ran_and_predicted_nothing_counts_as_broken():
    ok = infer.TestPrediction("a", 0, [np.zeros((1, 1), np.uint8)])
    empty = infer.TestPrediction("b", 0, [])
    assert not ChallengeRun([ok], {("c", 0): MODEL_ERROR}).model_predicted_nothing()
    assert not ChallengeRun([], {("a", 0): TIME_BUDGET}).model_predicted_nothing()  # a budget, not a broken model
    assert not ChallengeRun([], {}).model_predicted_nothing()  # no valid task at all
    assert ChallengeRun([], {("a", 0): MODEL_ERROR, ("b", 0): TIME_BUDGET}).model_predicted_nothing()
    assert ChallengeRun([], {("a", 0): TOO_LARGE}).model_predicted_nothing()
    run = ChallengeRun([empty], {("b", 0): NO_VALID_VIEW})
    assert run.model_predicted_nothing()
    sub = {"a": [{}], "b": [{}], "x": [{}, {}], "none": []}
    assert summary_line(sub, run) == "0 of 4 test inputs predicted by the model; fell back: 3 invalid task, 1 no valid view"
