"""model.arch beyond the official fixtures (tests/test_official_arch.py): what each architecture's config refuses,
compute.crop on every architecture (a cropped step is the full step with the padding masked out), and the
Q-continue path (HRM's rule, TRM's act_continue ablation) in training and in adaptive prediction."""
import pytest
import torch
import torch.nn.functional as F

import pipeline.nn.model as model_mod
from pipeline.config import ComputeConfig, ConfigError, ModelConfig, load_config
from pipeline.nn.act import empty_carry, predict_stream, supervision_step, token_ce
from pipeline.nn.arch import ARCHS, build_model
from pipeline.nn.crop import Crop

CANVAS = 6
SMALL = dict(hidden=32, heads=2, layers=2, h_cycles=2, l_cycles=2, halt_max_steps=3, seq_len=CANVAS ** 2,
             puzzle_emb_len=2, puzzle_emb_ndim=48)
PER_ARCH = {"trm": {}, "trm_singlez": {}, "trm_hier6": {}, "hrm": dict(layers=1, h_layers=1),
            "transformers_baseline": dict(h_cycles=1, l_cycles=1)}


def _model(arch, crop=False, **kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig(**{**SMALL, "arch": arch, **PER_ARCH[arch], **kw}), 3, ComputeConfig(crop=crop))
    with torch.no_grad():
        m.puzzle_emb.normal_()
        m.q_head.weight.normal_(0, 0.1)
    return m


def test_every_architecture_is_registered():
    assert set(ARCHS) == set(PER_ARCH)
    for arch in ARCHS:
        assert type(_model(arch)) is ARCHS[arch]


@pytest.mark.parametrize("sets, why", [
    (["model.arch=hrm", "model.h_layers=0"], "h_layers"),
    (["model.arch=trm_singlez", "model.h_layers=2"], "h_layers"),
    (["model.arch=trm_hier6", "model.one_step_grad=true"], "one_step_grad"),
    (["model.arch=hrm", "model.h_layers=2", "model.act_continue=false"], "always trains"),
    (["model.arch=hrm", "model.h_layers=2"], "puzzle_emb_len"),
    (["model.arch=transformers_baseline", "model.puzzle_emb_len=1"], "no cycles"),
    (["model.arch=trm_hier6", "model.l_cycles=7"], "<= 6"),
])
def test_an_architecture_refuses_settings_its_official_class_has_no_place_for(sets, why):
    with pytest.raises(ConfigError, match=why):
        load_config(None, sets)


@pytest.mark.parametrize("arch", list(PER_ARCH))
def test_a_cropped_step_of_every_architecture_is_its_full_step_with_the_padding_masked(arch, monkeypatch):
    m = _model(arch)
    B = 2
    inputs = torch.randint(2, 12, (B, CANVAS ** 2), dtype=torch.int32)
    vecs = m.puzzle_emb[[1, 2]]
    y, z = m.initial_state(B, torch.float32)
    y, z = y + 0.1 * torch.randn_like(y), z + 0.1 * torch.randn_like(z)
    keep = m.keep_index(4, 3)
    yc, zc, lc, qc, cc = m(inputs, vecs, y, z, Crop(keep))
    allowed = torch.zeros(m.cfg.total_len, dtype=torch.bool)
    allowed[keep] = True
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(model_mod.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: real(q, k, v, attn_mask=allowed.expand(q.shape[-2], -1)))
    yf, zf, lf, qf, cf = m(inputs, vecs, y, z)
    cells = keep[2:] - 2
    for got, want in ((yc[:, keep], yf[:, keep]), (zc[:, keep], zf[:, keep]), (lc[:, cells], lf[:, cells]),
                      (qc, qf), (cc, cf)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    outside = ~allowed
    assert torch.equal(yc[:, outside], y[:, outside]) and torch.equal(zc[:, outside], z[:, outside])


def _batch(m, B=4):
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(2, 12, (B, CANVAS ** 2), generator=g, dtype=torch.int32)
    labels = torch.randint(2, 12, (B, CANVAS ** 2), generator=g)
    return {"inputs": inputs, "labels": labels, "puzzle_ids": torch.tensor([1, 2, 1, 2][:B])}


@pytest.mark.parametrize("arch, kw", [("trm", dict(act_continue=True)), ("hrm", {})])
def test_the_continue_loss_takes_its_target_from_a_second_forward(arch, kw):
    """As the official ACT wrappers: halt where q_halt > q_continue; target sigmoid(q_halt') at the last step,
    else sigmoid(max(q_halt', q_continue')) of a forward from the new state; loss lm + 0.5 (halt + continue)."""
    m = _model(arch, **kw).train()
    b = _batch(m)
    vecs = m.puzzle_emb[b["puzzle_ids"]]
    carry = empty_carry(m, b, torch.float32)
    carry.halted[:] = torch.tensor([True, True, False, False])  # slots 2, 3 carried on: they reach N_sup = 3 now
    carry.inputs[2:], carry.labels[2:], carry.puzzle_ids[2:] = b["inputs"][2:], b["labels"][2:], b["puzzle_ids"][2:]
    carry.steps[2:] = 2
    min_steps = torch.zeros(4, dtype=torch.int32)
    new, loss, metrics, _ = supervision_step(m, carry, b, lambda ids: m.puzzle_emb[ids], True, min_steps)
    y0, z0 = m.reset_state(carry.y, carry.z, carry.halted)
    y, z, logits, q_halt, q_cont = m(b["inputs"], vecs, y0, z0)
    _, _, _, nh, nc = m(b["inputs"], vecs, y, z)
    last = torch.tensor([False, False, True, True])
    target = torch.sigmoid(torch.where(last, nh, torch.maximum(nh, nc)))
    counts = (b["labels"] != -100).sum(-1)
    seq_correct = ((logits.argmax(-1) == b["labels"]).sum(-1) == counts).float()
    lm = (token_ce(logits, b["labels"], "stablemax") / counts.unsqueeze(-1)).sum()
    want = lm + 0.5 * (F.binary_cross_entropy_with_logits(q_halt, seq_correct, reduction="sum")
                       + F.binary_cross_entropy_with_logits(q_cont, target, reduction="sum"))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(metrics["q_continue_loss"],
                               F.binary_cross_entropy_with_logits(q_cont, target, reduction="sum"))
    assert new.halted.tolist() == ((q_halt > q_cont) | last).tolist()


def test_without_act_continue_trm_halts_on_a_positive_halting_logit_and_has_no_continue_loss():
    m = _model("trm").train()
    b = _batch(m)
    new, loss, metrics, _ = supervision_step(m, empty_carry(m, b, torch.float32), b, lambda ids: m.puzzle_emb[ids],
                                             True, torch.zeros(4, dtype=torch.int32))
    y, z = m.initial_state(4, torch.float32)
    _, _, _, q_halt, _ = m(b["inputs"], m.puzzle_emb[b["puzzle_ids"]], y, z)
    assert "q_continue_loss" not in metrics and new.halted.tolist() == (q_halt > 0).tolist()


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_adaptive_prediction_halts_as_the_architecture_halts_in_training(arch):
    m = _model(arch).eval()
    with torch.no_grad():
        m.q_head.bias.copy_(torch.tensor([-1.0, -2.0]))  # q_halt < 0 but > q_continue: HRM halts, TRM does not
        m.q_head.weight.zero_()
    inputs = torch.randint(2, 12, (3, CANVAS ** 2), dtype=torch.int32)
    _, _, steps = predict_stream(m, inputs, m.puzzle_emb[[1, 2, 1]], 3, adaptive=True)
    assert steps.tolist() == ([1, 1, 1] if arch == "hrm" else [3, 3, 3])


def test_the_baseline_takes_heads_that_do_not_divide_the_width_as_its_official_class_and_trm_refuses_them():
    """transformers_baseline.yaml has 12 heads on 512: head dim 42, q/k/v 12 x 42 = 504 wide, out 504 -> 512."""
    m = _model("transformers_baseline", hidden=44, heads=3)  # head dim 14, attention 42 wide
    attn = m.blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 42, 44) and attn.out.weight.shape == (44, 42)
    y, z = m.initial_state(2, torch.float32)
    _, _, logits, _, _ = m(torch.randint(2, 12, (2, CANVAS ** 2), dtype=torch.int32), m.puzzle_emb[[1, 2]], y, z)
    assert logits.shape == (2, CANVAS ** 2, 12) and torch.isfinite(logits).all()
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, ["model.heads=12"])
