"""Model variants, optimisers and the training step's guards (small CPU tensors)."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from pipeline.nn.act import empty_carry, predict_stream, supervision_step
from pipeline.config import RunConfig, load_config
from pipeline.nn.crop import Crop
from pipeline.nn.model import TRM, ModelConfig, swiglu_width
from pipeline.training.optim import AdamATan2, EMA, lr_at, sign_sgd_rows

SMALL = dict(hidden=32, heads=2, layers=2, h_cycles=2, l_cycles=2, halt_max_steps=3, seq_len=25, puzzle_emb_len=1,
             puzzle_emb_ndim=32)


def _batch(B=4, S=25, ids=3):
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 12, (B, S), generator=g, dtype=torch.int32)
    labels = torch.randint(1, 12, (B, S), generator=g)
    return {"inputs": inputs, "labels": labels, "puzzle_ids": torch.randint(1, ids, (B,), generator=g)}


def test_arc_config_has_the_paper_size():
    m = TRM(RunConfig().model, 2)
    assert m.num_params() == pytest.approx(6.83e6, rel=0.01)
    assert swiglu_width(512, 4) == 1536 and swiglu_width(916, 4) == 2560


@pytest.mark.parametrize("variant", [dict(), dict(mlp_t=True), dict(pos_encodings="learned"),
                                     dict(pos_encodings="none"), dict(halting=False), dict(loss="softmax"),
                                     dict(puzzle_emb_ndim=0)])
def test_variants_train_and_predict(variant):
    torch.manual_seed(0)
    m = TRM(ModelConfig(**{**SMALL, **variant}), 3)
    b = _batch()
    vecs = lambda ids: m.puzzle_emb[ids]  # noqa: E731
    carry, loss, metrics, preds = supervision_step(m, empty_carry(m, b, torch.float32), b, vecs)
    loss.backward()
    assert math.isfinite(loss.item()) and preds.shape == (4, 25)
    assert all(p.grad is not None for n, p in m.named_parameters() if not (n.startswith("q_head") and not m.cfg.halting))
    p, conf, steps = predict_stream(m.eval(), b["inputs"], m.puzzle_emb[b["puzzle_ids"]] if m.cfg.puzzle_emb_ndim else None, 3)
    assert p.shape == (4, 25) and ((0 <= conf) & (conf <= 1)).all() and (steps == m.cfg.halt_max_steps).all()


def test_only_the_last_cycle_gets_gradients():
    torch.manual_seed(0)
    m = TRM(ModelConfig(**SMALL), 3)
    calls = []
    orig = m.net

    def counting(h, inj, rope=None, mask=None):
        calls.append(torch.is_grad_enabled())
        return orig(h, inj, rope, mask)

    m.net = counting
    b = _batch()
    supervision_step(m, empty_carry(m, b, torch.float32), b, lambda ids: m.puzzle_emb[ids])
    per_cycle = SMALL["l_cycles"] + 1
    assert calls == [False] * per_cycle * (SMALL["h_cycles"] - 1) + [True] * per_cycle


def test_adaptive_halting_stops_views_early():
    torch.manual_seed(0)
    m = TRM(ModelConfig(**SMALL), 3).eval()
    with torch.no_grad():
        m.q_head.bias.fill_(5.0)  # halt immediately
    b = _batch()
    _, _, steps = predict_stream(m, b["inputs"], m.puzzle_emb[b["puzzle_ids"]], 4, adaptive=True)
    assert (steps == 1).all()
    _, _, steps = predict_stream(m, b["inputs"], m.puzzle_emb[b["puzzle_ids"]], 4, adaptive=False)
    assert (steps == SMALL["halt_max_steps"]).all()


def test_continuous_batching_matches_one_big_batch():
    """Streaming 13 views through 4 slots (refilled as views halt) gives each view exactly the result it
    gets in a batch of its own: halting is per view, and refilled slots restart from the initial state."""
    torch.manual_seed(0)
    m = TRM(ModelConfig(**SMALL), 3).eval()
    with torch.no_grad():
        m.q_head.weight.normal_(0, 2.0)  # views halt at different steps
        m.q_head.bias.fill_(0.0)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 12, (13, 25), generator=g, dtype=torch.int32)
    vecs = torch.randn(13, 32, generator=g)
    big = predict_stream(m, inputs, vecs, 13, adaptive=True)
    small = predict_stream(m, inputs, vecs, 4, adaptive=True)
    assert len(set(big[2].tolist())) > 1  # a mix of halting steps, so refills really happened
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b)


def test_adam_atan2_matches_the_official_kernel_reference_values():
    """Two parameter groups over six steps against tests/data/adam_atan2_reference.json: the official
    `adam-atan2` kernel's formula (imoneoi/adam-atan2 42a1aeb, csrc/adam_atan2.cu adam_math) in float64, written
    by scripts/adam_atan2_reference.py. Gradients span ~1e-3..1e3 (bias correction 1 outside atan2 matters
    early), weight decay is on, and one parameter has no gradient on step 3 (its step count must not advance)."""
    ref = json.loads((ROOT / "tests" / "data" / "adam_atan2_reference.json").read_text())
    params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in ref["init"]]
    groups = [{"params": [p for p, g in zip(params, ref["group_of"]) if g == k], "lr": grp["lr"],
               "betas": tuple(grp["betas"]), "weight_decay": grp["weight_decay"]} for k, grp in enumerate(ref["groups"])]
    opt = AdamATan2(groups)
    for step, (grads, after) in enumerate(zip(ref["grads"], ref["after"])):
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.tensor(g, dtype=torch.float32)
        opt.step()
        for i, (p, want) in enumerate(zip(params, after)):
            np.testing.assert_allclose(p.detach().double().numpy(), np.array(want), rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step + 1}, parameter {i}")


def test_adam_atan2_pytorch_is_nvarcs_optimiser():
    """train.optimizer=adam_atan2_pytorch: adam-atan2-pytorch 0.2.4's AdamAtan2 as NVARC built it (lr set per
    step by the schedule, betas 0.9/0.95, weight decay 0.1). The expected values were computed by that
    package's own adam_atan2.py at the 0.2.4 tag (lucidrains/adam-atan2-pytorch), run once outside this repo,
    float64, three steps with changing lr and a zero gradient. They differ from the official kernel's."""
    from pipeline.training.optim import AdamAtan2Pytorch

    grads = [[0.3, -0.2, 0.0, 1.0], [-0.1, -0.4, 0.5, 1e-8], [2.0, 0.1, -0.3, -1.0]]
    expected = [[0.4895254433248524, -0.9890254433248524, 1.998, -0.009974556675147595],
                [0.48684092469577606, -0.9836798885877316, 1.9929763330452448, -0.013755765792771638],
                [0.4709891843140326, -0.9681565180684115, 1.9848775211934422, -0.011553025333506096]]
    def run(cls):
        p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64))
        opt = cls([p], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        for g, lr in zip(grads, [1e-2, 5e-3, 2e-2]):
            opt.param_groups[0]["lr"] = lr
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
            yield p.detach().clone()

    for got, want in zip(run(AdamAtan2Pytorch), expected):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    official = list(run(AdamATan2))[0]  # the official kernel is another update (bias correction, the 1.27)
    assert not torch.allclose(official, torch.tensor(expected[0], dtype=torch.float64), atol=1e-6)


def test_the_first_optimiser_step_runs_at_lr_over_warmup(tmp_path):
    """As the official loop (which increments its step before computing the lr): optimiser step k runs at
    lr * k / warmup during warm-up, so the first step moves the weights (at lr 0 it would not)."""
    from pipeline.training.build import build_run
    from pipeline.runtime import init_runtime

    cfg = load_config("configs/demo_cpu.yaml", [f"run_dir={tmp_path}", "train.progress=false", "model.hidden=32",
                                                "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=8",
                                                "train.lr=1e-3", "train.lr_warmup=10", "train.puzzle_emb_lr=1e-2"])
    trainer = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None).trainer
    trainer.prepare()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for k in (1, 2):
        trainer.train_step()
        assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * k / 10), k
        if k == 1:
            moved = [n for n, v in trainer.model.state_dict().items() if not torch.equal(v, before[n])]
            assert "lm_head.weight" in moved and "puzzle_emb" in moved  # trunk and sign-SGD table both stepped


def test_sign_sgd_touches_only_rows_in_the_batch():
    table = torch.ones(6, 3)
    ids = torch.tensor([2, 4, 2, 0])
    grads = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 0.0, 1.0], [1.0, 3.0, -1.0], [9.0, 9.0, 9.0]])
    sign_sgd_rows(table, ids, grads, lr=0.1, weight_decay=0.5)
    decayed = 1 - 0.1 * 0.5
    torch.testing.assert_close(table[2], torch.tensor([decayed - 0.1, decayed - 0.1, decayed + 0.1]))  # summed grads
    torch.testing.assert_close(table[4], torch.tensor([decayed + 0.1, decayed, decayed - 0.1]))
    assert (table[[0, 1, 3, 5]] == 1).all()  # blank id 0 and unseen rows untouched


def test_ema_and_schedule():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, 0.5)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        lin.weight.add_(2.0)
    ema.update(lin)
    torch.testing.assert_close(ema.shadow["weight"], before + 1.0)
    assert lr_at(0, 1.0, 10, 100, 1.0) == 0 and lr_at(5, 1.0, 10, 100, 1.0) == 0.5
    assert lr_at(50, 1.0, 10, 100, 1.0) == 1.0  # min ratio 1.0: constant after warm-up (TRM)
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)


def test_non_finite_loss_skips_the_step(tmp_path):
    from pipeline.training.build import build_run
    from pipeline.runtime import init_runtime

    cfg = load_config("configs/demo_cpu.yaml", [f"run_dir={tmp_path}", "train.progress=false", "model.hidden=32",
                                                "model.heads=2", "model.puzzle_emb_ndim=32", "train.global_batch=8"])
    rt = init_runtime("cpu", "float32", 0)
    run = build_run(cfg, rt, eval_fn=None)
    model, trainer = run.model, run.trainer
    trainer.prepare()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train_step()
    assert trainer.skipped == 1 and trainer.step == 1
    for k, v in model.state_dict().items():  # nothing was updated (NaN compares equal to NaN here)
        assert torch.allclose(v, before[k], rtol=0, atol=0, equal_nan=True), k


def test_warm_start_copies_the_trunk_and_reinitialises_new_tasks_to_the_mean(tmp_path):
    from pipeline.checkpoint import Checkpointer, save_tensors
    from pipeline.config import dump_config
    from pipeline.checkpoint import warm_start
    from pipeline.layout import Checkpoint

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(**SMALL), data=load_config("configs/demo_cpu.yaml").data)
    old = TRM(cfg.model, 5)
    with torch.no_grad():
        old.puzzle_emb.copy_(torch.randn(5, 32))
    ck = Checkpointer(tmp_path, keep_last=1)
    tmp = ck.begin(10)
    save_tensors(old.state_dict(), tmp / "model.safetensors")
    (tmp / "config.yaml").write_text(dump_config(cfg))
    (tmp / "tasks.json").write_text('{"task_ids": []}')
    ck.commit(tmp, 10, {})
    new = TRM(cfg.model, 9)  # other tasks: another table size
    warm_start(new, Checkpoint.open(tmp_path))
    for k, v in old.state_dict().items():
        if k != "puzzle_emb":
            assert torch.equal(new.state_dict()[k], v), k
    # the mean of the whole stored table, blank row 0 included, as the official loader (pretrain.py L244-262)
    torch.testing.assert_close(new.puzzle_emb, old.puzzle_emb.mean(0).expand(9, 32))
    assert not torch.allclose(new.puzzle_emb[0], old.puzzle_emb[1:].mean(0))


def test_the_training_step_and_the_model_step_have_no_data_dependent_python_branch():
    """torch.compile(fullgraph=True) refuses any graph break, so a host sync or a Python branch on tensor
    values inside the ACT step (refill, recursion, loss, halting, metrics) or the model's step (cropped too:
    the positions are an index tensor; size groups and the one sync crop adds to the ACT step: test_crop.py)
    fails here; on a GPU such a sync would stall the recursion."""
    torch.manual_seed(0)
    m = TRM(ModelConfig(**SMALL), 3)
    b = _batch()
    min_steps = torch.zeros(len(b["inputs"]), dtype=torch.int32)
    step = torch.compile(lambda c, bb: supervision_step(m, c, bb, lambda ids: m.puzzle_emb[ids], True, min_steps),
                         backend="eager", fullgraph=True)
    carry, loss, _, _ = step(empty_carry(m, b, torch.float32), b)
    carry, loss, _, _ = step(carry, b)
    assert torch.isfinite(loss)
    fwd = torch.compile(m, backend="eager", fullgraph=True)
    y, z = m.initial_state(len(b["inputs"]), torch.float32)
    vecs = m.puzzle_emb[b["puzzle_ids"]]
    P = m.cfg.puzzle_emb_len
    own = torch.ones(len(b["inputs"]), P + 3 * 2, dtype=torch.bool)
    own[0, P + 2 * 2:] = False  # example 0 on its own 2 x 2 rectangle
    for crop in (Crop(m.keep_index(3, 2)), Crop(m.keep_index(3, 2), own)):
        assert fwd(b["inputs"], vecs, y, z)[2].shape == fwd(b["inputs"], vecs, y, z, crop)[2].shape
