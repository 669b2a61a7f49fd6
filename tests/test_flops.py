"""The FLOP count behind BENCHMARKS' projections: TRM.flops_per_step against torch's own FlopCounterMode for the 7M
and the 14M preset, the 14M/7M step-time ratio bench.budget projects, and bench.cost's JSON rows.

    .venv/bin/python -m pytest -q tests/test_flops.py"""
import dataclasses
import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench.cost
from bench.budget import flop_model, forward_flops, parse_args, project
from conftest import ROOT
from pipeline.config import load_config
from pipeline.nn.model import TRM

PRESETS = {"7M": ROOT / "configs/arc2_4xh100.yaml", "14M": ROOT / "configs/arc2_14m.yaml"}


@pytest.mark.parametrize("name", PRESETS)
def test_flops_per_step_is_what_torch_counts(name):
    """One training supervision step (forward of all cycles, backward of the last) and one prediction step,
    counted by torch. The count is per token plus one attention term quadratic in the sequence, so an 8x8
    canvas (80 positions with the prefix) checks both: attention is 1.7-2.4% of the total there, 17-24x the
    tolerance. Attention runs on the math backend, which FlopCounterMode sees as matmuls (the fused CPU kernel
    it does not count)."""
    cfg = dataclasses.replace(load_config(PRESETS[name]).model, seq_len=64)
    torch.manual_seed(0)
    model = TRM(cfg, 2)
    inputs, vecs = torch.randint(0, cfg.vocab_size, (1, 64)), torch.randn(1, cfg.puzzle_emb_ndim)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as train:
                y, z, logits, q_halt, _ = model(inputs, vecs, *model.initial_state(1, torch.float32))
                (logits.square().mean() + q_halt.mean()).backward()
            with FlopCounterMode(display=False) as predict, torch.no_grad():
                model(inputs, vecs, *model.initial_state(1, torch.float32))
    finally:
        torch.set_num_threads(threads)
    assert math.isclose(train.get_total_flops(), model.flops_per_step(1), rel_tol=1e-3)
    assert math.isclose(predict.get_total_flops(), forward_flops(model), rel_tol=1e-3)


def test_the_14m_model_is_projected_273x_slower_per_step_than_the_7m():
    """bench.budget projects every model size at the MFU of the 7M model the official anchors ran, so step time
    follows FLOPs: 2.73x at 14M for a TTT step and for a view (BENCHMARKS.md, "The 14M model"). Taking each
    model's MFU from the anchors' samples/s on its own FLOP count would give 1.0x."""
    args = parse_args(["--no-measure"])
    flows = {name: project(args, flop_model(load_config(path).model), 384, 15_000, 768)["flow"]
             for name, path in PRESETS.items()}
    for key in ("ttt_s_per_step", "view_s_per_gpu"):
        assert math.isclose(flows["14M"][key] / flows["7M"][key], 2.73, rel_tol=0.01), key


def test_cost_rows_are_json_and_prediction_runs_each_model_s_n_sup(tmp_path, monkeypatch, capsys):
    short = tmp_path / "nsup8.yaml"
    short.write_text("model:\n  halt_max_steps: 8\n")
    monkeypatch.setattr(bench.cost, "MODELS", {**bench.cost.MODELS, "7M-nsup8": str(short)})
    bench.cost.main([])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines[:-1]]
    summary = json.loads(lines[-1])
    assert len(rows) == len(summary["rows"]) == 3 * 8
    predict = {r["model"]: r["samples"] for r in rows if r["step"] == "predict"}
    assert predict == {"7M": 340 * 1000 * 16, "14M": 340 * 1000 * 16, "7M-nsup8": 340 * 1000 * 8}
    assert summary["assumptions"]["predict_view_steps"] == predict
    first = {(r["model"], r["hardware"]): r["wall_h"] for r in rows if r["data"] == "1280 tasks"}
    assert round(first["7M", "4xH100"], 1) == 48.2 and round(first["14M", "4xH100"], 1) == 131.9  # BENCHMARKS' table


@pytest.mark.parametrize("arch", ["hrm", "trm_singlez", "trm_hier6", "transformers_baseline"])
def test_the_budget_counts_and_projects_every_architecture(arch, capsys):
    """bench.budget's weightless stand-in counts what the architecture's own model counts (HRM's L and H blocks,
    the baseline's single pass: not TRM's), and the budget projects its ARC preset."""
    import bench.budget
    from pipeline.nn.arch import build_model

    preset = ROOT / f"configs/{arch}_arc2.yaml"
    cfg = dataclasses.replace(load_config(preset).model, hidden=64, heads=2, puzzle_emb_ndim=64)
    built = build_model(cfg, 2)
    assert flop_model(cfg).flops_per_step(3) == built.flops_per_step(3)
    if arch in ("hrm", "transformers_baseline"):  # the TRM variants compute TRM's block calls
        assert flop_model(cfg).flops_per_step(3) != TRM.flops_per_step(built, 3)
    bench.budget.main(["--config", str(preset), "--no-measure", "--no-crop"])
    flow = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["flow"]
    assert flow["view_s_per_gpu"] > 0


@pytest.mark.parametrize("arch, sets", [("hrm", {}), ("transformers_baseline", {}), ("trm_singlez", {}),
                                        ("trm_hier6", {}), ("trm", {"act_continue": True})])
def test_a_training_step_counts_what_torch_counts_with_the_continue_targets_second_forward(arch, sets):
    """A whole training supervision step (supervision_step, as the Trainer runs it: HRM and the ACT-continue
    ablation add a second forward for the Q-continue target) and a prediction step, counted by torch."""
    from pipeline.nn.act import empty_carry, supervision_step
    from pipeline.nn.arch import build_model

    base = load_config(PRESETS["7M"] if arch == "trm" else ROOT / f"configs/{arch}_arc2.yaml").model
    cfg = dataclasses.replace(base, seq_len=64, hidden=64, heads=2, puzzle_emb_ndim=64, **sets)
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    batch = {"inputs": torch.randint(2, cfg.vocab_size, (1, 64)), "labels": torch.randint(2, cfg.vocab_size, (1, 64)),
             "puzzle_ids": torch.ones(1, dtype=torch.long)}
    vecs = lambda ids: torch.randn(len(ids), cfg.puzzle_emb_ndim)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as train:
                _, loss, _, _ = supervision_step(model.train(), empty_carry(model, batch, torch.float32), batch, vecs)
                loss.backward()
            with FlopCounterMode(display=False) as predict, torch.no_grad():
                model(batch["inputs"], vecs(batch["puzzle_ids"]), *model.initial_state(1, torch.float32))
    finally:
        torch.set_num_threads(threads)
    assert math.isclose(train.get_total_flops(), model.flops_per_step(1), rel_tol=1e-3)
    assert math.isclose(predict.get_total_flops(), model.flops_per_step(1, train=False), rel_tol=1e-3)
