"""The optional wandb sink (train.wandb_project): offline runs beside metrics.jsonl when asked, a one-line error
when the package is missing, and TTT runs starting with it off (the Kaggle machine has no wandb).

    .venv/bin/python -m pytest -q tests/test_wandb_sink.py"""
import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch

from conftest import ROOT
from pipeline.training.build import build_run
from pipeline.checkpoint import write_weights_checkpoint
from pipeline.config import ConfigError, dump_config, load_config
from pipeline.training.metrics import read_metrics
from pipeline.nn.model import TRM
from pipeline.runtime import init_runtime
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.training.ttt import ttt_config
from stages._cli import run
from stages.pretrain import main as pretrain_main

TINY = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=8", "train.log_every=1",
        "train.eval_every=0", "train.progress=false", "train.steps=3", "train.ckpt_every=100"]


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_metrics_go_to_an_offline_wandb_run_too(tmp_path, fake_wandb):
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", [f"run_dir={tmp_path}", "train.wandb_project=trm-arc", *TINY])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine
    try:
        build_run(cfg, init_runtime("cpu", "float32", 0)).trainer.fit()
    finally:
        torch.set_num_threads(threads)
    (run,) = fake_wandb
    assert run.init["mode"] == "offline" and run.init["project"] == "trm-arc" and run.init["dir"] == str(tmp_path)
    assert run.init["config"]["train"]["wandb_project"] == "trm-arc" and run.init["resume"] == "allow"
    jsonl = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [(s, m["train/loss"]) for s, m in run.logged if "train/loss" in m] == \
        [(r["step"], r["train/loss"]) for r in jsonl] and jsonl
    assert run.finished


@pytest.fixture
def no_wandb(monkeypatch):
    """wandb absent, whether or not this machine has it: find_spec answers None for it (and nothing else)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)


def test_asking_for_wandb_without_the_package_is_one_line(tmp_path, no_wandb, capsys):
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", [f"run_dir={tmp_path}", "train.wandb_project=x", *TINY])
    with pytest.raises(ConfigError, match="needs the wandb package"):
        build_run(cfg, init_runtime("cpu", "float32", 0))
    with pytest.raises(SystemExit) as end:  # the stage, in-process (as python -m runs it)
        run(pretrain_main, ["--config", str(ROOT / "configs/demo_cpu.yaml"), "--set", f"run_dir={tmp_path}",
                            "train.wandb_project=x", *TINY])
    err = capsys.readouterr().err
    assert end.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: train.wandb_project needs the wandb package")
    assert not (tmp_path / "ckpt").exists()  # refused before anything was built or trained


def test_ttt_runs_start_with_wandb_off(tmp_path):
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", ["train.wandb_project=pretraining"])
    ck = write_weights_checkpoint(tmp_path / "ck" / "step-00000001", model_state=TRM(cfg.model, 2).state_dict(),
                                  config_yaml=dump_config(cfg), task_ids=["a"], ids=PerTaskIds(1), meta={})
    assert ttt_config(ck, ROOT / "configs/demo_ttt.yaml", [], tmp_path / "ttt").train.wandb_project == ""
    again = ttt_config(ck, ROOT / "configs/demo_ttt.yaml", ["train.wandb_project=ttt"], tmp_path / "ttt")
    assert again.train.wandb_project == "ttt"
