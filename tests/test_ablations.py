"""The TRM paper's ablations (Table 1, Sudoku-Extreme) as presets in configs/ablations/, each a delta applied after a
base preset: each changes exactly its row's settings (and its own run folder, so that it never resumes the base
run), runs a training step, and `stages.pretrain --config BASE ABLATION` trains with it. That each row computes
as the official code: the 1-step gradient, separate f_H/f_L and the ACT continue loss together reproduce the
official HRM (tests/test_official_arch.py, TRM_AS_HRM); attention is trm_official_tiny's (tests/test_official.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from pipeline.config import load_config, to_dict
from pipeline.nn.act import empty_carry, supervision_step
from pipeline.nn.arch import build_model

ABLATIONS = ROOT / "configs" / "ablations"
ROWS = {  # the paper's row -> what it changes
    "one_step_grad": {"model.one_step_grad": True},
    "separate_fh_fl": {"model.h_layers": 2},
    "no_ema": {"train.ema": False},
    "t2_n2": {"model.h_cycles": 2, "model.l_cycles": 2},
    "layers4_n3": {"model.layers": 4, "model.l_cycles": 3},
    "self_attention": {"model.mlp_t": False, "model.pos_encodings": "rope"},
    "act_continue": {"model.act_continue": True},
}
MLP_T = {"model": {"mlp_t": True, "pos_encodings": "none"}}
"""The paper's Sudoku network (the official Sudoku command's arch.mlp_t=True arch.pos_encodings=none): the base
of the self-attention row, a preset layered between the base and the ablation."""


def _presets(base, row, tmp_path) -> list:
    if row != "self_attention":
        return [base, ABLATIONS / f"{row}.yaml"]
    mlp_t = tmp_path / "mlp_t.yaml"
    mlp_t.write_text(yaml.safe_dump(MLP_T))
    return [base, mlp_t, ABLATIONS / f"{row}.yaml"]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_there_is_one_preset_per_row_of_the_papers_table():
    assert {p.stem for p in ABLATIONS.glob("*.yaml")} == set(ROWS)


@pytest.mark.parametrize("base", ["configs/arc2_4xh100.yaml", "configs/demo_cpu.yaml"])
@pytest.mark.parametrize("row", list(ROWS))
def test_each_ablation_changes_its_rows_settings_only(base, row, tmp_path):
    presets = _presets(base, row, tmp_path)
    before = _flat(to_dict(load_config(presets[:-1])))
    after = _flat(to_dict(load_config(presets)))
    changed = {k: after[k] for k in after if after[k] != before[k]}
    assert changed.pop("run_dir") == f"runs/ablations/{row}"
    expected = {k: v for k, v in ROWS[row].items() if before[k] != v}  # t2_n2 over the demo's T=n=2: nothing
    assert changed == expected


@pytest.mark.parametrize("row", list(ROWS))
def test_each_ablation_trains_a_step(row, tmp_path):
    cfg = load_config(_presets("configs/demo_cpu.yaml", row, tmp_path))
    torch.manual_seed(0)
    m = build_model(cfg.model, 3).train()
    n = cfg.model.seq_len
    b = {"inputs": torch.randint(2, 12, (4, n), dtype=torch.int32), "labels": torch.randint(2, 12, (4, n)),
         "puzzle_ids": torch.tensor([1, 2, 1, 2])}
    _, loss, metrics, _ = supervision_step(m, empty_carry(m, b, torch.float32), b, lambda ids: m.puzzle_emb[ids])
    loss.backward()
    assert torch.isfinite(loss) and ("q_continue_loss" in metrics) == (row == "act_continue")
    if row == "separate_fh_fl":
        assert m.h_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    graded = [p.grad is not None and p.grad.abs().sum() > 0 for p in m.blocks.parameters()]
    assert all(graded)


def test_one_step_grad_backpropagates_through_the_last_z_and_y_update_only():
    """With n = 2, the first z update of the last cycle runs without gradients: the loss's gradient is that of
    the last z and y update from the state before them, held constant."""
    cfg = load_config("configs/demo_cpu.yaml", ["model.one_step_grad=true"]).model
    torch.manual_seed(0)
    m = build_model(cfg, 3)
    inputs = torch.randint(2, 12, (2, cfg.seq_len), dtype=torch.int32)
    vecs = m.puzzle_emb[[1, 2]]
    y, z = m.initial_state(2, torch.float32)
    _, _, logits, _, _ = m(inputs, vecs, y, z)
    logits.square().sum().backward()
    got = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    x = m.embed(inputs, vecs)
    with torch.no_grad():  # T - 1 = 1 cycle, then n - 1 = 1 z update
        y1, z1 = m._cycle(x, y, z, (m.rope_cos, m.rope_sin))
        z1 = m.net(z1, y1 + x, (m.rope_cos, m.rope_sin))
    z2 = m.net(z1, y1 + x, (m.rope_cos, m.rope_sin))
    y2 = m.net(y1, z2, (m.rope_cos, m.rope_sin))
    m.lm_head(y2)[:, cfg.puzzle_emb_len:].square().sum().backward()
    for g, p in zip(got, m.parameters()):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(g))


def test_pretrain_applies_a_base_then_an_ablation(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml",
                        "configs/ablations/layers4_n3.yaml", "--set", f"run_dir={tmp_path}", "train.steps=2",
                        "train.progress=false", "train.eval_every=0", "data.eval_inputs=-1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    saved = yaml.safe_load(next(Path(tmp_path).rglob("config.yaml")).read_text())
    assert (saved["model"]["layers"], saved["model"]["l_cycles"], saved["data"]["canvas"]) == (4, 3, 5)
