"""Test-time training: ids and warm start in the checkpoint's scheme, demonstrations only, the modes, the
stop condition, and (slow) that TTT makes a pretrained model solve task families it never saw."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.spread import score, stage, ttt_and_score, write_challenges
from conftest import ROOT
from pipeline.data.synthetic import synthetic_tasks
from pipeline.layout import Checkpoint

SEEN = "tasks=8,seed=0,size=4,demos=2000,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"
UNSEEN = "tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=rot180+transpose"
TINY = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=16",
        "train.progress=false", "train.eval_every=0", "predict.augs=2"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A few steps of the demo config, per-augmentation ids (so the id mapping is exercised)."""
    run_dir = tmp_path_factory.mktemp("pre")
    stage("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set", f"run_dir={run_dir}", "train.steps=4",
          "data.puzzle_ids=per_augmentation", "data.augs_per_task=3", "data.colour_perm=true", *TINY)
    return run_dir


def test_every_row_starts_at_the_mean_and_keeping_known_rows_is_asked_for(tiny_checkpoint, tmp_path):
    """By default every row of the TTT table, known tasks' and the blank row included, starts exactly at the
    mean of the whole stored table (blank row 0 included), as the official loader, NVARC and McGovern reset a
    resized table; train.keep_known_rows=true (a departure) keeps a known task's rows, augmentation for
    augmentation, and starts the others at that mean."""
    from pipeline.training.build import build_run
    from pipeline.checkpoint import load_for_prediction
    from pipeline.runtime import init_runtime
    from pipeline.training.ttt import ttt_config, ttt_dataset

    pre = load_for_prediction(Checkpoint.open(tiny_checkpoint), use_ema=False)
    table = pre.model.puzzle_emb
    mean = table.mean(0)  # of the whole table, blank row 0 included (the official re-init)
    assert not torch.equal(mean, table[1:].mean(0))  # so an exact comparison tells the two apart
    known = synthetic_tasks(SEEN)[:2]  # in the checkpoint
    new = synthetic_tasks(UNSEEN)[:2]

    def warm_rows(*sets):
        cfg = ttt_config(pre.checkpoint, None, ["train.steps=1", *TINY, *sets], tmp_path / "ttt")
        data, init_rows = ttt_dataset(cfg, known + new, pre.checkpoint)
        assert data.packed.task_ids == [t.id for t in known + new]
        run = build_run(cfg, init_runtime("cpu", "float32", 0), data, init_rows, eval_fn=None)
        run.trainer.prepare()
        return run.model, data.ids

    model, _ = warm_rows()
    rows = model.puzzle_emb
    assert torch.equal(rows, mean.expand_as(rows))
    for name, v in pre.model.state_dict().items():  # the trunk is the checkpoint's (EMA) weights
        if name != "puzzle_emb":
            ema = load_for_prediction(Checkpoint.open(tiny_checkpoint)).model.state_dict()[name]
            assert torch.equal(model.state_dict()[name], ema), name

    model, ids = warm_rows("train.keep_known_rows=true")
    rows = model.puzzle_emb
    for k, t in enumerate(known):  # the checkpoint's rows for this task, augmentation for augmentation
        src = pre.task_ids.index(t.id)
        lo, hi = pre.ids.offsets[src], pre.ids.offsets[src + 1]
        mine = slice(1 + ids.offsets[k], 1 + ids.offsets[k + 1])
        assert torch.equal(rows[mine], table[1 + lo:1 + hi])
        assert (ids.dihedral[mine.start - 1:mine.stop - 1] == pre.ids.dihedral[lo:hi]).all()
    new_rows = [0, *range(1 + ids.offsets[2], 1 + ids.offsets[4])]  # the blank row and the new tasks'
    assert torch.equal(rows[new_rows], mean.expand(len(new_rows), -1))


def test_ttt_trains_on_demonstrations_only(tiny_checkpoint, tmp_path):
    """Test outputs present in the challenges file are never trained on; --holdout-demos holds one demo out."""
    from pipeline.prediction.challenges import load_challenges
    from pipeline.training.ttt import ttt_config, ttt_dataset

    ch, _ = write_challenges(tmp_path, UNSEEN, with_test_outputs=True)
    _, result = load_challenges(ch)
    assert result.tasks[0].test_outputs is not None  # the file does carry them
    warm = Checkpoint.open(tiny_checkpoint)
    cfg = ttt_config(warm, None, [*TINY], tmp_path / "ttt")
    data, _ = ttt_dataset(cfg, result.tasks, warm)
    p = data.packed
    assert (p.test_out < 0).all() and not p.test_trainable.any()
    assert int(p.task_ex_count.sum()) == sum(len(t.train) for t in result.tasks)
    held, _ = ttt_dataset(cfg, result.tasks, warm, holdout=True)
    assert int(held.packed.task_ex_count.sum()) == sum(len(t.train) - 1 for t in result.tasks)
    last_in = result.tasks[0].train[-1][0]
    assert (held.packed.grid(held.packed.test_in[0]) == last_in).all()


@pytest.mark.parametrize("mode", ["embeddings", "lora", "embeddings_then_all"])
def test_each_mode_runs_resumes_and_predicts(tiny_checkpoint, tmp_path, mode):
    """Every mode trains, leaves a checkpoint that stages.predict reads as a plain TRM, and the trunk moves
    only where it should."""
    from pipeline.checkpoint import load_for_prediction

    ch, _ = write_challenges(tmp_path, UNSEEN)
    out = tmp_path / "ttt"
    for steps in (6, 8):  # the second call resumes the first run (LoRA: from its unmerged adapters)
        r = stage("stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges", str(ch), "--out", str(out),
                  "--config", "configs/demo_ttt.yaml", "--set", f"train.steps={steps}", f"train.trainable={mode}",
                  "train.freeze_fraction=0.5", "train.ckpt_every=3", "train.lora_rank=2", *TINY)
    assert "resumed from" in r.stderr and "step 6" in r.stderr
    assert json.loads((out / "ttt.json").read_text())["result"]["step"] == 8
    pre = load_for_prediction(Checkpoint.open(tiny_checkpoint))  # TTT starts from EMA
    post = load_for_prediction(Checkpoint.open(out), use_ema=False)
    assert post.task_ids == sorted(post.task_ids) and len(post.task_ids) == 4
    moved = {k for k, v in post.model.state_dict().items() if k != "puzzle_emb" and not torch.equal(v, pre.model.state_dict()[k])}
    if mode == "embeddings":
        assert not moved
    else:
        assert moved
    # every row started at exactly the row the warm start wrote (the mean of the whole table, blank row
    # included); sign-SGD moves only the rows a batch touched, so a table TTT never updated equals it exactly.
    # In every mode the table trains: each task has rows that moved away from that row.
    start, table, offsets = pre.model.puzzle_emb.mean(0), post.model.puzzle_emb, post.ids.offsets
    rows_moved = [int((table[1 + offsets[k]:1 + offsets[k + 1]] != start).any(1).sum()) for k in range(4)]
    assert all(n > 0 for n in rows_moved), rows_moved
    sub = tmp_path / "sub.json"
    stage("stages.predict", "--checkpoint", str(out), "--challenges", str(ch), "--out", str(sub), "--no-progress")
    assert len(json.loads(sub.read_text())) == 4


def test_per_task_runs_each_get_their_own_model_and_predict_uses_them(tiny_checkpoint, tmp_path):
    from pipeline.training.ttt import per_task_dir, ttt_index

    ch, _ = write_challenges(tmp_path, "tasks=2,seed=7,size=4,demos=8,tests=2,fixed=1,families=colour_map")
    raw = json.loads(ch.read_text())
    raw["../escape"] = raw.pop(sorted(raw)[0])  # a hostile id stays inside the run folder
    ch.write_text(json.dumps(raw))
    out = tmp_path / "ttt"
    stage("stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges", str(ch), "--out", str(out),
          "--config", "configs/demo_ttt.yaml", "--per-task", "--set", "train.steps=2", *TINY)
    runs = ttt_index(out)["per_task"]
    assert set(runs) == set(raw) and all(Path(f).resolve().is_relative_to(out.resolve()) for f in runs.values())
    assert per_task_dir(out, "../escape").parent == out / "tasks"
    sub = tmp_path / "sub.json"
    r = stage("stages.predict", "--checkpoint", str(out), "--challenges", str(ch), "--out", str(sub), "--no-progress")
    assert "per-task TTT runs for 2 tasks" in r.stderr
    assert set(json.loads(sub.read_text())) == set(raw)
    said = [line for line in r.stderr.splitlines() if "): computation: " in line]  # one line per run
    assert len(said) == 2 and all("(no departure)" in line for line in said), said


def test_a_ttt_folder_resumes_only_its_own_run(tiny_checkpoint, tmp_path):
    """Reusing a TTT folder for other tasks (or another mode) is a clear error, not a silent resume that
    would hand the new tasks another task's trained rows."""
    out = tmp_path / "ttt"
    a, _ = write_challenges(tmp_path / "a", "tasks=2,seed=7,size=4,demos=4,tests=1,fixed=1,families=colour_map")
    b, _ = write_challenges(tmp_path / "b", "tasks=2,seed=8,size=4,demos=4,tests=1,fixed=1,families=colour_map")
    args = ["--out", str(out), "--config", "configs/demo_ttt.yaml", "--set", "train.steps=2", *TINY]
    stage("stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges", str(a), *args)
    for challenges, extra in ((b, []), (a, ["train.trainable=embeddings"])):
        r = subprocess.run([sys.executable, "-m", "stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges",
                            str(challenges), *args, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "holds a run of" in r.stderr.strip().splitlines()[-1]


def test_the_recipe_freezes_the_trunk_for_its_first_steps_and_lora_only_trains_adapters(tiny_checkpoint, tmp_path):
    """embeddings_then_all: the trunk is the warm start's after freeze_fraction x steps and moves after;
    lora: the saved base weights stay the pretrained ones and only the adapters train."""
    from safetensors.torch import load_file

    from pipeline.checkpoint import load_for_prediction
    from pipeline.layout import list_checkpoints

    ch, _ = write_challenges(tmp_path, UNSEEN)
    warm = load_for_prediction(Checkpoint.open(tiny_checkpoint)).model.state_dict()  # TTT starts from the EMA weights
    out = tmp_path / "recipe"
    stage("stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges", str(ch), "--out", str(out), "--config",
          "configs/demo_ttt.yaml", "--set", "train.steps=4", "train.trainable=embeddings_then_all",
          "train.freeze_fraction=0.5", "train.ckpt_every=1", "train.keep_last=10", *TINY)
    ckpts = {int(c.name.split("-")[1]): c for c in list_checkpoints(out / "ckpt")}
    trunk = lambda c: {k: v for k, v in load_file(str(c / "model.safetensors")).items() if k != "puzzle_emb"}  # noqa: E731
    assert all(torch.equal(v, warm[k]) for k, v in trunk(ckpts[2]).items())
    assert not all(torch.equal(v, warm[k]) for k, v in trunk(ckpts[3]).items())
    out = tmp_path / "lora"
    stage("stages.ttt", "--checkpoint", str(tiny_checkpoint), "--challenges", str(ch), "--out", str(out), "--config",
          "configs/demo_ttt.yaml", "--set", "train.steps=3", "train.trainable=lora", "train.lora_rank=2", *TINY)
    lora = load_file(str(list_checkpoints(out / "ckpt")[-1] / "lora.safetensors"))
    for k, v in lora.items():
        if ".base." in k and not k.startswith("ema."):
            assert torch.equal(v, warm[k.replace(".base.", ".")]), k
    assert any(k.endswith("lora_b") and v.abs().sum() > 0 for k, v in lora.items())


def test_lora_merged_weights_compute_the_adapted_model():
    from pipeline.training.lora import add_lora, lora_scales, merged_state
    from pipeline.nn.model import TRM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, seq_len=9, h_cycles=1, l_cycles=1)
    model = TRM(cfg, 3)
    plain = TRM(cfg, 3)
    assert add_lora(model, 2, 4.0) == 4 * cfg.layers
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_b" in n:
                p.normal_()
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    plain.load_state_dict(merged_state(model.state_dict(), lora_scales(model)))
    x = torch.randint(0, 12, (2, 9))
    y, z = model.initial_state(2, torch.float32)
    a = model(x, model.puzzle_emb[[1, 2]], y, z)[2]
    b = plain(x, plain.puzzle_emb[[1, 2]], y, z)[2]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_lora_runs_ema_is_the_average_of_its_merged_weights():
    """A LoRA run's EMA weights are the EMA of W + s B A over the steps (what prediction computes with), not
    W + s EMA(B) EMA(A); evaluation during the run swaps exactly those weights in."""
    from pipeline.training.lora import MergedEMA, add_lora, lora_scales, merged_state
    from pipeline.nn.model import TRM, ModelConfig
    from pipeline.training.train import ema_weights

    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, seq_len=9, h_cycles=1, l_cycles=1)
    model = TRM(cfg, 3)
    add_lora(model, 2, 4.0)
    ema = MergedEMA(model, 0.5)
    layer = model.blocks[0].attn.qkv
    expected = layer.base.weight.detach().clone()  # B = 0: the merged weight is W
    a_avg, b_avg = layer.lora_a.detach().clone(), layer.lora_b.detach().clone()
    for _ in range(3):  # three "optimiser steps" on the adapters
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(torch.randn_like(p))
        ema.update(model)
        expected = 0.5 * expected + 0.5 * (layer.base.weight + layer.scale * layer.lora_b @ layer.lora_a).detach()
        a_avg, b_avg = 0.5 * a_avg + 0.5 * layer.lora_a.detach(), 0.5 * b_avg + 0.5 * layer.lora_b.detach()
    saved = merged_state(ema.weights_for(model), lora_scales(model))
    torch.testing.assert_close(saved["blocks.0.attn.qkv.weight"], expected)
    product = layer.base.weight + layer.scale * b_avg @ a_avg  # what the run saved before
    assert not torch.allclose(saved["blocks.0.attn.qkv.weight"], product, atol=1e-3)
    plain = TRM(cfg, 3)
    plain.load_state_dict(saved)
    x = torch.randint(0, 12, (2, 9))
    y, z = model.initial_state(2, torch.float32)
    raw_out = model(x, model.puzzle_emb[[1, 2]], y, z)[2]
    with ema_weights(model, ema):
        torch.testing.assert_close(model(x, model.puzzle_emb[[1, 2]], y, z)[2],
                                   plain(x, plain.puzzle_emb[[1, 2]], y, z)[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(x, model.puzzle_emb[[1, 2]], y, z)[2], raw_out)  # swapped back


def test_fit_stops_at_a_step_boundary_with_a_complete_checkpoint(tiny_checkpoint, tmp_path):
    import time

    from pipeline.training.build import build_run
    from pipeline.layout import resolve_checkpoint
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime
    from pipeline.training.train import Stop

    cfg = load_config("configs/demo_cpu.yaml", [f"run_dir={tmp_path}", "train.steps=50", *TINY])
    rt = init_runtime("cpu", "float32", 0)
    out = build_run(cfg, rt, eval_fn=None).trainer.fit(Stop(when=lambda step: step >= 3))
    assert out["step"] == 3 and out["stopped"] == "condition"
    assert json.loads((resolve_checkpoint(tmp_path) / "meta.json").read_text())["step"] == 3
    out = build_run(cfg, rt, eval_fn=None).trainer.fit(Stop(steps=5))  # resumes at 3
    assert out["step"] == 5 and out["stopped"] == "steps"
    out = build_run(cfg, rt, eval_fn=None).trainer.fit(Stop(deadline=time.time() - 1))
    assert out["step"] == 5 and out["stopped"] == "deadline"  # past the deadline: not one more step


@pytest.mark.slow
def test_ttt_makes_a_pretrained_model_solve_tasks_it_never_saw(demo_pretrained, tmp_path):
    """The pretrained demo model gets the held-out tasks wrong (it has no embedding for them: the mean row);
    TTT on their demonstrations alone makes them solvable, in full fine-tuning and in McGovern's recipe."""
    before = score(demo_pretrained, tmp_path, "pretrained")
    # bench.spread over seeds and CPU kernels (BENCHMARKS.md, "The same results on every machine"): before 0.0 in
    # every run, after 0.88-1.0 in both modes; the bars sit 0.125 below the worst and 0.5 above the control
    assert before <= 0.25
    full, _ = ttt_and_score(demo_pretrained, tmp_path, "all", 200)
    recipe, _ = ttt_and_score(demo_pretrained, tmp_path, "embeddings_then_all", 200)
    assert full >= 0.75 and full >= before + 0.5, (before, full)
    assert recipe >= 0.75 and recipe >= before + 0.5, (before, recipe)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["embeddings", "lora"])
def test_embeddings_and_lora_ttt_lower_the_loss(demo_pretrained, tmp_path, mode):
    _, losses = ttt_and_score(demo_pretrained, tmp_path, mode, 100)
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses  # measured 0.24-0.54 (bench.spread)
