"""Training loop: atomic checkpoints, exact resume after SIGKILL, DDP and DeepSpeed on CPU.

    pytest tests/test_train.py            (the DDP/DeepSpeed tests launch torchrun with 2 CPU processes)
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from pipeline.checkpoint import CheckpointError, Checkpointer
from pipeline.layout import list_checkpoints, resolve_checkpoint
from pipeline.training.metrics import read_metrics

TINY = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=16", "train.log_every=1",
        "train.eval_every=0", "train.progress=false", "predict.augs=2", "train.ema_decay=0.9"]


def pretrain_cmd(run_dir: Path, *overrides: str, nproc: int = 1) -> list[str]:
    args = ["-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set", f"run_dir={run_dir}", *TINY, *overrides]
    if nproc == 1:
        return [sys.executable, *args]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc-per-node={nproc}", *args]


def run(cmd, timeout=600, env=None):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def weights(run_dir: Path, name="model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(resolve_checkpoint(run_dir) / name))


def _commit(ck: Checkpointer, step: int, metric=None):
    tmp = ck.begin(step)
    (tmp / "x").write_text("1")
    return ck.commit(tmp, step, {}, metric)


def test_torn_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=2)
    _commit(ck, 10, metric=0.9)
    _commit(ck, 20, metric=0.1)
    _commit(ck, 30, metric=0.2)
    torn = tmp_path / "ckpt" / "step-00000040.tmp"
    torn.mkdir()
    (torn / "model.safetensors").write_text("half")
    no_meta = tmp_path / "ckpt" / "step-00000050"
    no_meta.mkdir()
    names = [p.name for p in list_checkpoints(tmp_path / "ckpt")]
    assert names == ["step-00000010", "step-00000020", "step-00000030"]  # 10 kept as the best
    assert resolve_checkpoint(tmp_path).name == "step-00000030"  # run folder -> latest complete
    assert resolve_checkpoint(tmp_path / "ckpt" / "step-00000010").name == "step-00000010"
    assert ck.best() == {"step": 10, "metric": 0.9}  # the best one survives pruning
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_killed_run_resumes_bit_exactly(tmp_path):
    steps = ["train.steps=60", "train.ckpt_every=10", "train.keep_last=2"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run(pretrain_cmd(ref, *steps))
    proc = subprocess.Popen(pretrain_cmd(killed, *steps), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (killed / "ckpt" / "step-00000020" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in list_checkpoints(killed / "ckpt"))
    assert done and done[-1] < "step-00000060"
    run(pretrain_cmd(killed, *steps))  # same command: resumes from the latest checkpoint
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(ref, name), weights(killed, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    ref_rows = [r for r in read_metrics(ref / "metrics.jsonl") if "train/loss" in r]
    killed_rows = {r["step"]: r["train/loss"] for r in read_metrics(killed / "metrics.jsonl") if "train/loss" in r}
    assert all(killed_rows[r["step"]] == r["train/loss"] for r in ref_rows if r["step"] > 30)
    assert (killed / "curves.png").exists()


def test_ddp_two_processes_match_one_process(tmp_path):
    common = ["train.steps=4", "train.ckpt_every=4"]
    run(pretrain_cmd(tmp_path / "one", *common))
    run(pretrain_cmd(tmp_path / "two", *common, nproc=2))
    one = [r["train/loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "train/loss" in r]
    two = [r["train/loss"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "train/loss" in r]
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, rel=1e-4, abs=1e-5)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_deepspeed_zero_engine_runs_on_cpu_and_resumes(tmp_path):
    common = ["train.engine=deepspeed", "train.zero_stage=1", "train.ckpt_every=2"]
    env = {"DS_ACCELERATOR": "cpu"}
    run(pretrain_cmd(tmp_path / "ds", "train.steps=2", *common, nproc=2), env=env)
    assert (resolve_checkpoint(tmp_path / "ds") / "deepspeed").is_dir()
    run(pretrain_cmd(tmp_path / "ds", "train.steps=4", *common, nproc=2), env=env)
    rows = [r for r in read_metrics(tmp_path / "ds" / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["train/loss"] == r["train/loss"] for r in rows)  # finite, not NaN
    run(pretrain_cmd(tmp_path / "ref", "train.steps=4", "train.ckpt_every=2", nproc=2))
    ref = [r["train/loss"] for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if "train/loss" in r]
    assert [r["train/loss"] for r in rows] == pytest.approx(ref, rel=1e-3)  # same maths as the DDP path
    run(pretrain_cmd(tmp_path / "single", "train.steps=2", *common), env=env)  # one process, no torchrun
    assert (resolve_checkpoint(tmp_path / "single") / "deepspeed").is_dir()


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """The torch.compile path (on by default on GPU) computes the same steps as eager mode."""
    common = ["train.steps=3", "train.ckpt_every=3"]
    run(pretrain_cmd(tmp_path / "eager", *common, "compute.compile=false"))
    run(pretrain_cmd(tmp_path / "compiled", *common, "compute.compile=true"))
    eager = [r["train/loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if "train/loss" in r]
    compiled = [r["train/loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if "train/loss" in r]
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=1e-4)


def test_warm_start_only_when_the_run_has_no_checkpoint_of_its_own(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    run(pretrain_cmd(src, "train.steps=2", "train.ckpt_every=2"))
    run(pretrain_cmd(dst, "train.steps=2", "train.ckpt_every=2", f"train.init_from={src}"))
    assert (dst / "log.txt").read_text().count("warm start from") == 1
    # a restart resumes its own checkpoint; init_from is not read again (here it no longer exists)
    run(pretrain_cmd(dst, "train.steps=4", "train.ckpt_every=2", f"train.init_from={tmp_path / 'gone'}"))
    assert (dst / "log.txt").read_text().count("warm start from") == 1
    assert resolve_checkpoint(dst).name == "step-00000004"


def test_prepare_builds_the_parts_once(tmp_path):
    """The submit calibration and the benches prepare a trainer before they step it, and fit() prepares it too:
    the warm start, trainable set and parallel wrapping are built once."""
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime
    from pipeline.training.build import build_run

    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path}", *TINY, "train.steps=1"])
    trainer = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None).trainer
    built, setup = [], trainer.setup
    trainer.setup = lambda: built.append(setup()) or built[-1]
    trainer.prepare()
    assert trainer.fit()["step"] == 1 and len(built) == 1


def test_the_end_of_run_evaluation_shows_its_progress_and_can_be_switched_off(tmp_path, capsys):
    """The held-out evaluation at the end of a run (ARC config on CPU: minutes per input) shows a bar of inputs
    done with a time estimate when train.progress is on; data.eval_inputs=-1 removes it, end of run included."""
    from pipeline.training.build import build_run
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime

    rt = init_runtime("cpu", "float32", 0)
    common = [*TINY, "train.steps=1", "train.progress=true", "data.eval_inputs=3"]
    out = build_run(load_config("configs/demo_cpu.yaml", [*common, f"run_dir={tmp_path / 'on'}"]), rt).trainer.fit()
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert out["eval/inputs"] == 3 and "eval: 100%" in bar and "3/3" in bar and "input/s" in bar, bar[-2000:]
    off = load_config("configs/demo_cpu.yaml", [*common, "data.eval_inputs=-1", f"run_dir={tmp_path / 'off'}"])
    run_off = build_run(off, rt)
    assert run_off.trainer.eval_fn is None
    out = run_off.trainer.fit()
    assert not any(k.startswith("eval/") for k in out) and "eval:" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="eval_inputs"):
        load_config("configs/demo_cpu.yaml", ["data.eval_inputs=-2"])
