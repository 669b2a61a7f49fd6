"""train.optimizer=muon: which parameters Muon gets (the trunk's 2-D matrices) and which AdamW keeps, the lr
schedule's ratio, that it learns, exact resume, the trainable modes, and the DeepSpeed refusal."""
import dataclasses

import pytest
import torch

from pipeline.training.build import build_run
from pipeline.config import load_config
from pipeline.nn.model import TRM
from pipeline.training.optim import OptimizerSet, muon_param_split
from pipeline.runtime import init_runtime
from pipeline.training.train import Stop

TINY = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=16",
        "train.progress=false", "train.eval_every=0", "train.log_every=1", "predict.augs=2", "train.ema_decay=0.9",
        "train.optimizer=muon", "train.lr_warmup=2"]


def tiny(tmp_path, *overrides):
    return load_config("configs/demo_cpu.yaml", [f"run_dir={tmp_path}", *TINY, *overrides])


@pytest.mark.parametrize("variant", [{}, {"mlp_t": True}, {"pos_encodings": "learned"}])
def test_muon_gets_the_trunk_matrices_and_adamw_the_embeddings_and_heads(tmp_path, variant):
    cfg = tiny(tmp_path)
    model = TRM(dataclasses.replace(cfg.model, **variant), 9)
    muon, adamw = muon_param_split(model)
    muon_names, adamw_names = [n for n, _ in muon], [n for n, _ in adamw]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(muon_names + adamw_names) == sorted(trainable)  # each trainable parameter exactly once
    assert all(p.ndim == 2 and n.startswith("blocks.") for n, p in muon)
    assert {"embed_tokens.weight", "lm_head.weight", "q_head.weight", "q_head.bias"} <= set(adamw_names)
    assert not any(n.startswith("blocks.") and p.ndim == 2 for n, p in adamw)
    kinds = ("mixer.gate_up", "mixer.down") if variant.get("mlp_t") else ("attn.qkv", "attn.out")
    for kind in (*kinds, "mlp.gate_up", "mlp.down"):
        assert any(kind in n for n in muon_names), kind
    if variant.get("pos_encodings") == "learned":
        assert "embed_pos" in adamw_names
    assert not any("puzzle_emb" in n for n in muon_names + adamw_names)  # the table is sign-SGD's


def test_muon_learns_and_its_lr_follows_the_schedule_at_its_own_ratio(tmp_path):
    cfg = tiny(tmp_path, "train.lr=1e-3", "train.muon_lr=3e-3", "train.steps=40", "train.lr_min_ratio=1.0")
    run = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None)
    trainer = run.trainer
    trainer.prepare()
    assert isinstance(trainer.opt, OptimizerSet) and set(trainer.opt.optimizers) == {"muon", "adamw"}
    assert isinstance(trainer.opt.optimizers["muon"], torch.optim.Muon)
    losses = [float(trainer.train_step()["loss_sum"]) for _ in range(40)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    muon_group, adamw_group = trainer.opt.optimizers["muon"].param_groups[0], trainer.opt.optimizers["adamw"].param_groups[0]
    assert adamw_group["lr"] == pytest.approx(1e-3) and muon_group["lr"] == pytest.approx(3e-3)
    trainer._optimizer_step(0.5e-3)  # half-way through a warm-up: both halve (no grads: nothing moves)
    assert adamw_group["lr"] == pytest.approx(0.5e-3) and muon_group["lr"] == pytest.approx(1.5e-3)


def test_a_resumed_muon_run_matches_a_straight_one_exactly(tmp_path):
    rt = init_runtime("cpu", "float32", 0)
    straight = build_run(tiny(tmp_path / "straight", "train.steps=8", "train.ckpt_every=8"), rt, eval_fn=None)
    straight.trainer.fit()
    init_runtime("cpu", "float32", 0)
    cfg = tiny(tmp_path / "resumed", "train.steps=8", "train.ckpt_every=4")
    assert build_run(cfg, rt, eval_fn=None).trainer.fit(Stop(steps=4))["step"] == 4
    init_runtime("cpu", "float32", 7)  # the resume restores the RNG it saved
    resumed = build_run(cfg, rt, eval_fn=None)
    assert resumed.trainer.fit()["step"] == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    for k in straight.trainer.ema.shadow:
        assert torch.equal(straight.trainer.ema.shadow[k], resumed.trainer.ema.shadow[k]), k


@pytest.mark.parametrize("mode", ["embeddings", "lora", "embeddings_then_all"])
def test_muon_in_every_trainable_mode(tmp_path, mode):
    cfg = tiny(tmp_path, "train.steps=4", "train.ckpt_every=2", f"train.trainable={mode}", "train.lora_rank=2",
               "train.freeze_fraction=0.5")
    run = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    assert run.trainer.fit()["step"] == 4
    opt = run.trainer.opt
    if mode == "embeddings":  # no trunk parameter trains: no optimiser at all, the table still learns
        assert opt is None
    elif mode == "lora":  # the adapters are trunk matrices: Muon's alone
        assert set(opt.optimizers) == {"muon"}
        assert all(".lora_" in n for n, _ in muon_param_split(run.model)[0])
    else:
        assert set(opt.optimizers) == {"muon", "adamw"}
    after = run.model.state_dict()
    assert not torch.equal(before["puzzle_emb"], after["puzzle_emb"])
    if mode == "lora":  # the adapters moved (B starts at zero), the base weights did not
        assert any(v.abs().sum() > 0 for k, v in after.items() if k.endswith(".lora_b"))
        assert all(torch.equal(v, before[k.replace(".base.", ".")]) for k, v in after.items() if ".base." in k)
    else:
        trunk_moved = any(not torch.equal(before[k], after[k]) for k in before if k != "puzzle_emb")
        assert trunk_moved == (mode != "embeddings")
    resumed = build_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6)),
                        init_runtime("cpu", "float32", 0), eval_fn=None)
    assert resumed.trainer.fit()["step"] == 6  # its optimiser state loads back


def test_muon_on_deepspeed_is_refused_at_config_load(tmp_path):
    with pytest.raises(ValueError, match="optimizer=muon runs on the DDP engine only"):
        tiny(tmp_path, "train.engine=deepspeed")
