"""A whole training run equals the official one: 40 steps of the official loop (../shared/fixtures/
trm_official_trajectory, float32 on CPU) replayed through the project's own Trainer (its AdamATan2, sparse sign-SGD,
lr schedule, ACT carry and EMA) from the same initial weights and batches: every step's loss, reduced metrics, learning
rates and carry, then the final weights, puzzle table and EMA.

Tolerances (float32, CPU; measured on dev-cpu with 1 thread): per step, loss and lm_loss agree to <= 3e-6 relative
and q_halt_loss (a float32 BCE sum of ~0.3) to <= 1.1e-5: bar 5e-5. Halting, step counts, puzzle ids of the carry and
both learning rates are exact, and so is the puzzle table after 40 sign-SGD steps (every sign agrees). Final weights:
13 of 135,810 elements differ by more than 1e-5 and one by 4e-4: AdamATan2 steps by ~lr * atan2(m, sqrt v), whatever
the gradient's scale, so an element whose gradient is float noise moves by up to lr in a noise-chosen direction. Bar:
every element within 1e-3 (lr), all but 0.05% within 1e-5. EMA: within 2e-5 (measured 1.6e-5)."""
import json

import numpy as np
import pytest
import torch

from conftest import SHARED, needs_shared
from pipeline.config import load_config
from pipeline.nn.model import TRM
from pipeline.nn.official import convert_state_dict
from pipeline.runtime import Runtime
from pipeline.training.build import TrainSetup
from pipeline.training.train import Trainer

TRAJ = SHARED / "fixtures" / "trm_official_trajectory"
pytestmark = [needs_shared(TRAJ), pytest.mark.slow]  # ~2 min on one core: 40 steps at seq_len 900


def _config(fx: dict, tmp_path):
    a, h = fx["arch"], fx["hyperparameters"]
    sets = {"run_dir": str(tmp_path), "seed": fx["seed"],
            "data.canvas": 30, "data.eval_inputs": -1,
            "model.hidden": a["hidden_size"], "model.heads": a["num_heads"], "model.layers": a["L_layers"],
            "model.expansion": a["expansion"], "model.h_cycles": a["H_cycles"], "model.l_cycles": a["L_cycles"],
            "model.halt_max_steps": a["halt_max_steps"], "model.halt_exploration_prob": a["halt_exploration_prob"],
            "model.puzzle_emb_len": a["puzzle_emb_len"], "model.puzzle_emb_ndim": a["puzzle_emb_ndim"],
            "model.rope_theta": a["rope_theta"], "model.rms_norm_eps": a["rms_norm_eps"],
            "train.steps": fx["total_steps"], "train.global_batch": fx["global_batch_size"],
            "train.lr": h["lr"], "train.lr_warmup": h["lr_warmup_steps"], "train.lr_min_ratio": h["lr_min_ratio"],
            "train.weight_decay": h["weight_decay"], "train.betas": [h["beta1"], h["beta2"]],
            "train.puzzle_emb_lr": h["puzzle_emb_lr"], "train.puzzle_emb_weight_decay": h["puzzle_emb_weight_decay"],
            "train.ema_decay": h["ema_rate"], "train.progress": False, "train.device": "cpu",
            "train.dtype": "float32"}
    return load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in sets.items()])


def _official(path) -> dict[str, torch.Tensor]:
    with np.load(path) as f:
        return {k.removeprefix("model."): torch.from_numpy(f[k]) for k in f.files}


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """The project's Trainer fed the fixture's 40 batches: (per-step records, final model, EMA shadow)."""
    fx = json.loads((TRAJ / "fixture.json").read_text())
    cfg = _config(fx, tmp_path_factory.mktemp("run"))
    rt = Runtime(torch.device("cpu"), torch.float32, 0, 1, 0)
    torch.manual_seed(0)
    model = TRM(cfg.model, fx["metadata"]["num_puzzle_identifiers"], cfg.compute)
    model.load_state_dict(convert_state_dict(_official(TRAJ / "init.npz")), strict=True)
    trainer = Trainer(cfg, rt, model, None, TrainSetup(cfg, rt, model, None, [], None, "train"))
    trainer.prepare()
    traj = np.load(TRAJ / "trajectory.npz")
    records = []
    for k in range(1, fx["steps"] + 1):
        labels = traj[f"batch{k}.labels"]
        batch = {"inputs": traj[f"batch{k}.inputs"].astype(np.uint8),
                 "labels": np.where(labels < 0, 0, labels).astype(np.uint8),  # PAD 0 is what the trainer ignores
                 "puzzle_ids": traj[f"batch{k}.puzzle_identifiers"].astype(np.int64)}
        lr = [cfg.train.puzzle_emb_lr * trainer._lr_mult(k), cfg.train.lr * trainer._lr_mult(k)]
        m = {n: float(v) for n, v in trainer.train_step(batch).items()}
        c = trainer.carry
        records.append({"m": m, "lr": lr, "halted": c.halted.numpy().copy(), "steps": c.steps.numpy().copy(),
                        "ids": c.puzzle_ids.numpy().copy()})
    return fx, traj, records, model, trainer.ema


def test_every_step_loss_metrics_lr_and_carry_equal_the_official_loop(replay):
    fx, traj, records, _, _ = replay
    B = fx["global_batch_size"]
    for k, r in enumerate(records, start=1):
        m, count = r["m"], max(r["m"]["count"], 1.0)
        got = {"loss": m["loss_sum"], "train/lm_loss": m["lm_loss"] / B, "train/q_halt_loss": m["q_halt_loss"] / B,
               "train/accuracy": m["accuracy"] / count, "train/exact_accuracy": m["exact_accuracy"] / count,
               "train/q_halt_accuracy": m["q_halt_accuracy"] / count, "train/steps": m["steps"] / count,
               "train/count": float(m["count"] > 0)}
        for name, v in got.items():
            key = f"step{k}.{name}"
            want = float(traj[key]) if key in traj.files else None
            if want is not None:
                assert v == pytest.approx(want, rel=5e-5, abs=1e-7), f"step {k} {name}: {v} != official {want}"
        np.testing.assert_allclose(r["lr"], traj[f"step{k}.lr"], rtol=1e-12, err_msg=f"step {k} lr")
        np.testing.assert_array_equal(r["halted"], traj[f"step{k}.carry_halted"], err_msg=f"step {k} halted")
        np.testing.assert_array_equal(r["steps"], traj[f"step{k}.carry_steps"], err_msg=f"step {k} steps")
        np.testing.assert_array_equal(r["ids"], traj[f"step{k}.carry_puzzle_identifiers"], err_msg=f"step {k} ids")


def test_final_weights_puzzle_table_and_ema_equal_the_official_loop(replay):
    _, _, _, model, ema = replay
    final = convert_state_dict(_official(TRAJ / "final.npz"))
    state = model.state_dict()
    off, total = 0, 0
    for name, want in final.items():
        diff = (state[name].float() - want).abs()
        assert diff.max() <= 1e-3, f"{name}: {float(diff.max())} from the official weights"
        off, total = off + int((diff > 1e-5).sum()), total + diff.numel()
    assert off <= 5e-4 * total, f"{off} of {total} weights differ from the official ones by more than 1e-5"
    torch.testing.assert_close(state["puzzle_emb"], final["puzzle_emb"], atol=0, rtol=0)
    shadow = convert_state_dict(_official(TRAJ / "ema.npz"))
    assert set(shadow) == set(ema.shadow), "the EMA averages exactly the official EMA's tensors"
    for name, want in shadow.items():
        torch.testing.assert_close(ema.shadow[name], want, atol=2e-5, rtol=0, msg=lambda s: f"EMA {name}: {s}")
