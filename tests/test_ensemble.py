"""Checkpoint ensembles: the pooled vote, the views split, the members named on the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.spread import solved, specialists_alone, train_specialists
from conftest import built_once
from pipeline.prediction.ensemble import members, pool, split_views
from pipeline.prediction.challenges import MODEL_ERROR, TIME_BUDGET, ChallengeRun
from pipeline.prediction.infer import TestPrediction as Prediction


def g(v):
    return np.full((2, 2), v, dtype=np.uint8)


def tp(task, attempts, votes, valid=None, conf=None):
    return Prediction(task, 0, [g(a) for a in attempts], votes, conf or [0.5] * len(votes),
                          valid or sum(votes), valid or sum(votes), 4.0, 1.0)


def firsts(run):
    return {r.task_id: [int(a[0, 0]) for a in r.attempts] for r in run.results}


def test_two_members_that_solve_different_tasks_pool_to_both():
    # Member A is sure of task a's answer 1 and unsure on b; member B the other way round.
    a = ChallengeRun([tp("a", [1, 7], [9, 1]), tp("b", [5, 6, 2], [4, 3, 3])], {})
    b = ChallengeRun([tp("a", [8, 9, 1], [4, 3, 3]), tp("b", [2, 5], [9, 1])], {})
    out = firsts(pool([a, b], [1.0, 1.0], k=2))
    assert out["a"][0] == 1 and out["b"][0] == 2
    # Each member alone misses the other's task at rank 1.
    assert firsts(pool([a], [1.0], 2))["b"][0] != 2 and firsts(pool([b], [1.0], 2))["a"][0] != 1


def test_pool_ranks_by_weighted_vote_share_not_raw_count():
    # A: 100 views, grid 1 gets 40 (share 0.4); B: 8 views, grid 2 gets 8 (share 1.0).
    a = ChallengeRun([tp("t", [1, 3], [40, 30], valid=100)], {})
    b = ChallengeRun([tp("t", [2], [8], valid=8)], {})
    assert firsts(pool([a, b], [1.0, 1.0], 2))["t"] == [2, 1]
    assert firsts(pool([a, b], [5.0, 1.0], 2))["t"] == [1, 3]  # 5*0.4 + 0 > 1.0; then 5*0.3 > 1.0
    assert pool([a, b], [1.0, 1.0], 2).results[0].votes == [8, 40]


def test_ties_go_to_confidence_then_to_the_earlier_member():
    a = ChallengeRun([tp("t", [1], [5], valid=10, conf=[0.2])], {})
    b = ChallengeRun([tp("t", [2], [5], valid=10, conf=[0.9])], {})
    assert firsts(pool([a, b], [1.0, 1.0], 2))["t"] == [2, 1]
    c = ChallengeRun([tp("t", [3], [5], valid=10, conf=[0.2])], {})
    assert firsts(pool([a, c], [1.0, 1.0], 2))["t"] == [1, 3]
    assert firsts(pool([c, a], [1.0, 1.0], 2))["t"] == [3, 1]


def test_a_failed_member_costs_only_its_share():
    a = ChallengeRun([tp("a", [1], [9])], {("c", 0): TIME_BUDGET})
    b = ChallengeRun([tp("c", [4], [3])], {("a", 0): MODEL_ERROR, ("d", 0): MODEL_ERROR})
    out = pool([a, None, b], [1.0, 1.0, 1.0], 2)
    assert firsts(out) == {"a": [1], "c": [4]}
    assert out.fallbacks == {("d", 0): MODEL_ERROR}  # predicted by some member: no fallback recorded
    assert pool([None, None], [1.0, 1.0], 2).results == []


def test_split_views_follows_weights_and_quantum():
    assert split_views(256, [1, 1]) == [128, 128]
    assert split_views(256, [3, 1], quantum=8) == [192, 64]
    assert split_views(10, [1, 1, 1], quantum=8) == [8, 8, 8]  # each member at least one quantum
    assert sum(split_views(1000, [1, 2, 3], quantum=8)) == 1000
    assert split_views(16, [2, 1]) == [11, 5]  # a pinned --views 16 loses no view to rounding


def test_members_checks_weights():
    assert [m.weight for m in members(["x", "y"], None)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="one per checkpoint"):
        members(["x", "y"], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        members(["x"], [0.0])


ROOT = Path(__file__).resolve().parents[1]
SRC = "synthetic:tasks=2,seed=3,size=4,demos=16,tests=2,fixed=1,families=colour_map"


def _stage(*args):
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    r = _stage("stages.data", "export", SRC, "--out", str(d / "t"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _stage("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set", f"run_dir={d / 'ck'}",
               f'data.sources=["{SRC}#demos"]', "train.steps=10", "train.eval_every=0", "train.ckpt_every=10",
               "train.progress=false")
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def test_a_member_that_fails_to_load_costs_only_its_share(tiny):
    """Three members, one missing: the submission is what the live members' shares of the views give (here
    the one live member alone with its 4 of 12 views), not a fallback and not an error."""
    ch, ck = tiny / "t_challenges.json", tiny / "ck"
    r = _stage("stages.predict", "--checkpoint", str(ck), str(tiny / "missing"), str(tiny / "missing2"),
               "--augs", "12", "--challenges", str(ch), "--out", str(tiny / "ens.json"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cannot be loaded" in r.stderr and "4 views per test input" in r.stderr
    r = _stage("stages.predict", "--checkpoint", str(ck), "--augs", "4", "--challenges", str(ch),
               "--out", str(tiny / "one.json"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tiny / "ens.json").read_text()) == json.loads((tiny / "one.json").read_text())


def test_an_ensemble_of_one_checkpoint_twice_votes_as_its_views_pooled(tiny):
    """The same checkpoint twice at 4 views each pools to the first two attempts of its votes, the second
    member's votes and views in the pool beside the first's (details.json: each doubled, which one member
    alone would not give); every member missing is bad input (exit 2, one line)."""
    ch, ck = tiny / "t_challenges.json", tiny / "ck"
    r = _stage("stages.predict", "--checkpoint", str(ck), str(ck), "--weights", "1", "1", "--augs", "8",
               "--challenges", str(ch), "--out", str(tiny / "twice.json"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _stage("stages.predict", "--checkpoint", str(ck), "--augs", "4", "--challenges", str(ch),
               "--out", str(tiny / "one4.json"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    # same seed, so both members draw the same 4 views: votes double, attempts stay
    assert json.loads((tiny / "twice.json").read_text()) == json.loads((tiny / "one4.json").read_text())
    twice, one = (json.loads((tiny / f"{name}.json.details.json").read_text()) for name in ("twice", "one4"))
    assert twice.keys() == one.keys() and any(mine["votes"] for mine in one.values()), one  # some views valid
    for key, mine in one.items():
        assert twice[key]["votes"] == [2 * v for v in mine["votes"]], (key, twice[key], mine)
        assert (twice[key]["views"], twice[key]["valid_views"]) == (2 * mine["views"], 2 * mine["valid_views"])
    r = _stage("stages.predict", "--checkpoint", str(tiny / "missing"), str(tiny / "missing2"), "--challenges",
               str(ch), "--out", str(tiny / "none.json"), "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _stage("stages.predict", "--checkpoint", str(ck), str(ck), "--weights", "1", "--challenges", str(ch),
               "--out", str(tiny / "bad.json"), "--no-progress")
    assert r.returncode == 2 and "one per checkpoint" in r.stderr


@pytest.mark.slow
def test_two_models_that_solve_different_tasks_give_a_submission_that_solves_both(tmp_path_factory):
    """End to end: A alone solves only its task, B alone only its; stages.submit with both (no TTT, 8 views per
    input) solves both tasks' inputs, and a member missing beside them costs nothing but its share. The two are
    demo-sized models, each pretrained 250 steps on one colour_map task the other never sees (bench/spread.py
    measures the spread of what they solve)."""
    d = built_once(tmp_path_factory, "two_specialists", train_specialists)
    out = tmp_path_factory.mktemp("pooled")
    ch, truth = str(d / "both_challenges.json"), d / "both_solutions.json"
    alone = specialists_alone(d)
    # bench.spread, every seed and CPU kernel measured: each solves 4 of its own 4 and 0 of the other's (BENCHMARKS.md,
    # "The same results on every machine"); the bars leave one input of margin each way
    task_a, task_b = "syn5_000_colour_map", "syn3_000_colour_map"  # the task each specialist was trained on
    assert alone["a"][task_a] >= 3 and alone["b"][task_b] >= 3, alone
    assert alone["a"][task_b] <= 1 and alone["b"][task_a] <= 1, alone
    r = _stage("stages.submit", "--checkpoint", str(d / "a"), str(d / "missing"), str(d / "b"), "--challenges", ch,
               "--out", str(out / "pooled.json"), "--work-dir", str(out / "work"), "--ttt-config",
               "configs/demo_ttt.yaml", "--ttt-steps", "0", "--views", "12", "--budget-s", "600", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    pooled = solved(truth, out / "pooled.json")
    assert pooled[task_a] >= 3 and pooled[task_b] >= 3, pooled  # each task solved as by its specialist alone
    plan = json.loads((out / "pooled.json.plan.json").read_text())
    assert [m["views"] if "views" in m else "error" for m in plan["members"]] == [4, "error", 4], plan["members"]
