"""Each architecture (model.arch) through the whole flow at demo size: pretrain, stages.submit (TTT, predict,
vote, write) to a valid submission, stages.score, and the Kaggle build of its checkpoint. Slow: about a
minute per architecture on 2 cores."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipeline.config import load_config
from pipeline.data.synthetic import synthetic_tasks

SYN = "tasks=4,seed=0,size=4,demos=32,tests=2,fixed=1,families=flip_lr+colour_map"
DEMO_SETS = {"hrm": ["model.h_layers=2"], "trm_singlez": [], "trm_hier6": [],
             "transformers_baseline": ["model.h_cycles=1", "model.l_cycles=1"]}
"""The demo config (configs/demo_cpu.yaml: hidden 64, a 1-position prefix, 2 layers, T = n = 2) as each takes it."""
PRESETS = {arch: f"configs/{arch}_arc2.yaml" for arch in DEMO_SETS}


def stage(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"{args[0]}: {r.stderr[-3000:]}"
    return r


@pytest.mark.parametrize("arch", list(PRESETS))
def test_each_preset_is_its_architecture_at_the_arc_settings(arch):
    cfg, trm = load_config(PRESETS[arch]), load_config("configs/arc2_4xh100.yaml")
    assert cfg.model.arch == arch and cfg.data == trm.data and cfg.train == trm.train
    assert (cfg.model.hidden, cfg.model.puzzle_emb_ndim, cfg.model.halt_max_steps) == (512, 512, 16)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(DEMO_SETS))
def test_a_demo_sized_run_of_each_architecture_goes_through_submit_to_a_scored_submission(arch, tmp_path):
    tasks = synthetic_tasks(SYN)
    ch, sol = tmp_path / "x_challenges.json", tmp_path / "x_solutions.json"
    ch.write_text(json.dumps({t.id: t.to_json() for t in tasks}))
    sol.write_text(json.dumps({t.id: [o.tolist() for o in t.test_outputs] for t in tasks}))
    run = tmp_path / "pretrain"
    stage("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set", f"run_dir={run}", f"model.arch={arch}",
          *DEMO_SETS[arch], "train.steps=20", "train.progress=false", "train.eval_every=0", "data.eval_inputs=-1")
    out = tmp_path / "out" / "submission.json"
    r = stage("stages.submit", "--checkpoint", run, "--challenges", ch, "--out", out, "--work-dir", tmp_path / "work",
              "--ttt-config", "configs/demo_ttt.yaml", "--ttt-steps", 2, "--views", 4, "--budget-s", 600)
    summary = json.loads(r.stdout.strip().splitlines()[-1].removeprefix("summary: "))
    assert summary["ttt_steps"] == 2 and summary["views"] == 4, summary
    # the model ran every view of every input (20 steps of training: some answers may decode to no valid grid yet)
    assert re.search(r"\d+ of 8 test inputs predicted by the model; fell back: (none|\d+ no valid view)\n", r.stderr)
    assert "(no departure)" in r.stderr
    stage("stages.validate", "--challenges", ch, "--submission", out)
    score = json.loads(stage("stages.score", "--solutions", sol, "--submission", out).stdout.strip().splitlines()[-1])
    assert 0.0 <= score["score"] <= 1.0 and score["tasks"] == 4, score
    if arch == "hrm":  # TTT trained HRM's Q-continue head (its second forward), as pretraining did
        rows = [json.loads(line) for p in (tmp_path / "work").rglob("metrics.jsonl") for line in p.open()]
        assert any("ttt/q_continue_loss" in row for row in rows)
    kaggle = tmp_path / "kaggle"
    stage("stages.kaggle", "build", "--checkpoint", run, "--out", kaggle, "--no-wheels", "--owner", "tester")
    (packed,) = (kaggle / "datasets" / "weights").rglob("config.yaml")  # the checkpoint the notebook submits with
    assert load_config(None, base=yaml.safe_load(packed.read_text())).model.arch == arch
