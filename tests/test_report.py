"""The score report: summary, per-task table with pictures, comparison of two runs, training curves, safe
file names for any task id."""
import io
import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conftest import ROOT
from pipeline.data.tasks import safe_name
from submission.report import ARC_COLOURS, compare, grid_png, score_submission, summary
from test_submit import stage

HOSTILE = ["../escape", "a/b", "..", "/abs", "ok_id", "sp ace", "dots.json"]


def files_written(tmp_path, ids, sub, other=None, details=None, run=None):
    sol = {t: [[[k % 10]], [[1, 2], [3, 4]]] for k, t in enumerate(ids)}
    ch = {t: {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[0]]}, {"input": [[0]]}]} for t in ids}
    for name, obj in (("x_solutions.json", sol), ("x_challenges.json", ch), ("s.json", sub)):
        (tmp_path / name).write_text(json.dumps(obj))
    if details is not None:
        (tmp_path / "s.json.details.json").write_text(json.dumps(details))
    args = ["stages.score", "--solutions", str(tmp_path / "x_solutions.json"), "--submission", str(tmp_path / "s.json"),
            "--report", str(tmp_path / "rep" / "report")]
    if other is not None:
        (tmp_path / "other.json").write_text(json.dumps(other))
        args += ["--compare", str(tmp_path / "other.json")]
    if run is not None:
        args += ["--run", str(run)]
    r = stage(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), sol


def test_task_ids_never_write_outside_the_report_folder(tmp_path):
    """Every file the report writes is inside its folder, each task page directly in its tasks/ folder; the
    hostile ids include an absolute path inside tmp_path, so a naive join would write where this test looks."""
    ids = [*HOSTILE, str(tmp_path / "abs_escape")]
    sub = {t: [{"attempt_1": [[k % 10]], "attempt_2": [[0]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}]
           for k, t in enumerate(ids)}
    result, _ = files_written(tmp_path, ids, sub)
    assert result["tasks"] == len(ids)
    report = tmp_path / "rep" / "report"
    inputs = {tmp_path / n for n in ("x_solutions.json", "x_challenges.json", "s.json")}
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - inputs
    outside = [p for p in written if not p.resolve().is_relative_to(report.resolve())]
    assert outside == []
    pages = [p for p in written if p.suffix == ".html" and p.name != "index.html"]
    assert sorted(p.parent for p in pages) == [report / "tasks"] * len(ids)  # one page each, none in a subfolder
    assert (report / "tasks" / "ok_id.html").exists()  # a plain id keeps its name


def test_safe_name_is_plain_and_distinct():
    names = [safe_name(t) for t in HOSTILE + ["a_b", "a?b"]]
    assert len(set(names)) == len(names)
    assert all(n and "/" not in n and not n.startswith(".") and "\\" not in n for n in names)
    assert safe_name("00576224") == "00576224"


def test_grid_png_draws_every_cell_in_arc_colours():
    grid = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]]
    img = Image.open(io.BytesIO(grid_png(grid))).convert("RGB")
    assert img.size == (3, 4)
    want = [[tuple(bytes.fromhex(ARC_COLOURS[v][1:])) for v in row] for row in grid]
    assert [[img.getpixel((c, r)) for c in range(3)] for r in range(4)] == want
    assert grid_png([[1, 2], [3]]) is None and grid_png([[10]]) is None and grid_png([]) is None


def test_index_is_a_summary_with_a_sortable_table_pictures_details_and_curves(tmp_path):
    ids = ["t_solved", "t_partly", "t_unsolved"]
    sub = {"t_solved": [{"attempt_1": [[0]], "attempt_2": [[5]]}, {"attempt_1": [[9]], "attempt_2": [[1, 2], [3, 4]]}],
           "t_partly": [{"attempt_1": [[1]], "attempt_2": [[0]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}],
           "t_unsolved": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}
    details = {"t_solved/0": {"votes": [12, 3], "valid_views": 15, "views": 16, "mean_steps": 3.5, "seconds": 0.25},
               "t_solved/1": {"votes": [8, 8], "valid_views": 16, "views": 16, "mean_steps": 4.5, "seconds": 0.25}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s, "train/exact_accuracy": s / 10})
                                               + "\n" for s in range(1, 6)))
    result, _ = files_written(tmp_path, ids, sub, details=details, run=run)
    assert (result["solved_tasks"], result["partly_solved_tasks"], result["unsolved_tasks"]) == (1, 1, 1)
    rep = tmp_path / "rep" / "report"
    page = (rep / "index.html").read_text()
    assert f"{(1 + 0.5 + 0) / 3:.4f}" in page
    for text in ("solved", "unsolved", "winner votes", "valid views", "halting steps", "grid size", "chunk s / input",
                 "<script>", "curves.png"):
        assert text in page, text
    # 2 attempts + truth per test input, 2 inputs per task; t_unsolved has no attempts for its input 1
    assert page.count("data:image/png;base64,") == 3 * 2 * 3 - 2 and page.count("class=none") == 2
    assert (rep / "curves.png").stat().st_size > 1000 and (run / "curves.png").exists()
    df = pl.read_csv(rep / "tasks.csv")
    solved = df.filter(pl.col("task") == "t_solved").row(0, named=True)
    assert solved["winner_votes"] == pytest.approx(10.0) and solved["valid_views"] == pytest.approx(15.5)
    assert solved["halting_steps"] == pytest.approx(4.0) and solved["chunk_s_per_input"] == pytest.approx(0.25)
    assert solved["grid"] == "1x1 2x2" and solved["cells"] == 4
    assert "<td data-v='10.0'>10.0 / 16</td>" in page
    task_page = (rep / "tasks" / "t_solved.html").read_text()
    assert "votes of the ranked grids: 12, 3 of 16 views" in task_page and "../index.html" in task_page
    assert df.filter(pl.col("task") == "t_unsolved")["winner_votes"].is_null().all()  # no details: no number


def test_compare_lists_the_tasks_that_changed(tmp_path):
    ids = ["a", "b", "c"]
    good = [{"attempt_1": [[k]], "attempt_2": [[1, 2], [3, 4]]} for k in range(2)]
    bad = [{"attempt_1": [[7]], "attempt_2": [[7]]}] * 2
    this = {"a": [{"attempt_1": [[0]], "attempt_2": [[0]]}, good[1]], "b": bad, "c": bad}
    other = {"a": bad, "b": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3, 4]]}] * 2, "c": bad}
    result, _ = files_written(tmp_path, ids, this, other=other)
    assert result["gained"] == ["a"] and result["lost"] == ["b"]
    assert result["score"] == pytest.approx(1 / 3) and result["other_score"] == pytest.approx(1 / 3)
    page = (tmp_path / "rep" / "report" / "index.html").read_text()
    assert "1 tasks gained" in page and "1 lost" in page and "Δ score" in page
    df = pl.read_csv(tmp_path / "rep" / "report" / "tasks.csv")
    assert dict(zip(df["task"], df["delta_vs_other"])) == {"a": 1.0, "b": -1.0, "c": 0.0}


def test_scoring_rule_and_summary():
    sol = {"a": [[[1]], [[2]]], "b": [[[3]]], "c": [[[4]]]}
    sub = {"a": [{"attempt_1": [[0]], "attempt_2": [[1]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}],
           "b": [{"attempt_1": [[3]], "attempt_2": [[0]]}], "c": "not a list"}
    rows = score_submission(sol, sub)
    assert [r["score"] for r in rows] == [0.5, 1.0, 0.0] and rows[0]["hit"] == "attempt_2,-"
    s = summary(rows)
    assert s["score"] == pytest.approx(0.5) and (s["solved_tasks"], s["partly_solved_tasks"], s["unsolved_tasks"]) == (1, 1, 1)
    c = compare(rows, score_submission(sol, {}))
    assert [t for t, _, _ in c["gained"]] == ["a", "b"] and c["lost"] == [] and c["other_score"] == 0.0
    assert np.isclose(c["delta"]["a"], 0.5)
