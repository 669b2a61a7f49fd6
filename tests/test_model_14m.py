"""The 14M preset (configs/arc2_14m.yaml): the issue's configuration, its size, and one real training step on
CPU at that width and depth (a 6x6 canvas keeps the step to seconds; the trunk does not depend on the canvas).

    .venv/bin/python -m pytest -q tests/test_model_14m.py"""
import math

import torch

from bench.budget import flop_model
from conftest import ROOT
from pipeline.training.build import build_run
from pipeline.config import load_config
from pipeline.runtime import init_runtime


def test_the_14m_preset_has_the_issue_configuration_and_trains_one_step_on_cpu(tmp_path):
    m, t = (cfg := load_config(ROOT / "configs/arc2_14m.yaml")).model, cfg.train
    assert (m.hidden, m.heads, m.layers, m.h_cycles, m.l_cycles, m.halt_max_steps, m.puzzle_emb_len) == \
        (768, 12, 2, 3, 6, 16, 16)
    assert (t.global_batch, t.lr, t.lr_warmup, t.weight_decay, t.puzzle_emb_lr) == (768, 1e-4, 2000, 0.1, 1e-2)
    small = load_config(ROOT / "configs/arc2_4xh100.yaml").model
    ratio = flop_model(m).flops_per_step(1) / flop_model(small).flops_per_step(1)
    assert math.isclose(ratio, 2.73, rel_tol=0.01)  # FLOPs per training sample-step against the 7M model

    cfg = load_config(ROOT / "configs/arc2_14m.yaml", [
        f"run_dir={tmp_path}", "data.sources=['synthetic:tasks=4,seed=0,size=4,demos=4,tests=1']", "data.canvas=6",
        "model.seq_len=36", "data.puzzle_ids=per_task", "train.global_batch=2", "train.lr_warmup=0",
        "train.device=cpu", "train.progress=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine ran this step 5-10x slower
    try:
        run = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None)
        assert 14.0e6 < run.model.num_params() < 14.3e6  # 14.18M; the 7M preset's trunk: 6.83M
        run.trainer.prepare()
        before = {k: v.detach().clone() for k, v in run.model.named_parameters()}
        metrics = run.trainer.train_step()
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(metrics["loss_sum"]) and metrics["loss_sum"] > 0
    changed = [k for k, v in run.model.named_parameters() if not torch.equal(v, before[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "blocks.1.mlp.down.weight" in changed
    assert run.model.blocks[0].attn.qkv.weight.shape == (3 * 768, 768)
