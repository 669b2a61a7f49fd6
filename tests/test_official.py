"""Our TRM reproduces the official implementation: the fixture's weights, loaded through the importer,
give the official logits, halting logits, carried states, loss, metrics and every gradient."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURE, ROOT, assert_step_grads, fixture_eval_steps, fixture_train_step, needs_fixture
from pipeline.nn.model import ModelConfig, TRM
from pipeline.nn.official import (OfficialImportError, config_overrides, convert_state_dict, load_official_into,
                                  read_official)

pytestmark = needs_fixture
TOL = dict(atol=1e-4, rtol=1e-4)


def _model():
    fx = json.loads((FIXTURE / "fixture.json").read_text())["config"]
    official = read_official(FIXTURE / "weights.safetensors")
    cfg = ModelConfig(**config_overrides(official), heads=fx["num_heads"], h_cycles=fx["H_cycles"],
                      l_cycles=fx["L_cycles"], halt_max_steps=fx["halt_max_steps"],
                      halt_exploration_prob=fx["halt_exploration_prob"], puzzle_emb_len=fx["puzzle_emb_len"],
                      seq_len=fx["seq_len"], rope_theta=fx["rope_theta"], rms_norm_eps=fx["rms_norm_eps"],
                      expansion=fx["expansion"])
    model = TRM(cfg, official["inner.puzzle_emb.weights"].shape[0])
    load_official_into(model, official)
    return model, official


@pytest.fixture(scope="module")
def fixture():
    return load_file(str(FIXTURE / "batch.safetensors")), load_file(str(FIXTURE / "expected.safetensors"))


def test_official_eval_steps_match(fixture):
    batch, expected = fixture
    model, _ = _model()
    for k, y, z, logits, q_halt, _ in fixture_eval_steps(model, batch):
        if k == 1:
            torch.testing.assert_close(y, expected["eval.step1.z_H"], **TOL)
            torch.testing.assert_close(z, expected["eval.step1.z_L"], **TOL)
        torch.testing.assert_close(logits, expected[f"eval.step{k}.logits"], **TOL)
        torch.testing.assert_close(q_halt, expected[f"eval.step{k}.q_halt_logits"], **TOL)


def test_a_puzzle_table_of_another_size_starts_every_row_at_the_mean_of_the_whole_official_table():
    """As the official loader (pretrain.py L244-262): the mean over every row, the blank row 0 included."""
    model, official = _model()
    table = official["inner.puzzle_emb.weights"].float()
    bigger = TRM(model.cfg, table.shape[0] + 3)
    load_official_into(bigger, official)
    expected = table.sum(0) / table.shape[0]
    torch.testing.assert_close(bigger.puzzle_emb.detach().float(), expected.expand(table.shape[0] + 3, -1))


def test_official_train_step_loss_metrics_and_every_gradient(fixture):
    batch, expected = fixture
    model, official = _model()
    carry, loss, metrics, rows = fixture_train_step(model, batch)
    got = {"loss": loss, **metrics}
    for name in ("loss", "lm_loss", "q_halt_loss", "exact_accuracy", "count", "steps"):
        torch.testing.assert_close(got[name].double().reshape(-1), expected[f"train.step1.{name}"].double().reshape(-1),
                                   **TOL, msg=lambda m, name=name: f"{name}: {m}")
    assert carry.halted.tolist() == expected["train.step1.halted"].bool().tolist()
    assert_step_grads(model, rows, expected, lambda name: convert_state_dict({name: official[name]}).keys(), TOL)


def test_official_import_rejects_mismatched_shapes():
    _, official = _model()
    wrong = TRM(ModelConfig(hidden=64, heads=4, layers=3, puzzle_emb_len=2, puzzle_emb_ndim=64), 9)
    with pytest.raises(OfficialImportError, match="lacks tensors"):
        load_official_into(wrong, official)


def test_official_import_stage_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ckpt" / "step-00000000"
    cmd = [sys.executable, "-m", "stages.import_official", "--official", str(FIXTURE / "weights.safetensors"),
           "--config", "configs/demo_cpu.yaml", "--out", str(out), "--set", "model.heads=4", "model.h_cycles=2",
           "model.l_cycles=3", "model.halt_max_steps=4", "model.puzzle_emb_len=2", "model.seq_len=900", "data.canvas=30"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from pipeline.checkpoint import load_for_prediction
    from pipeline.layout import Checkpoint

    loaded = load_for_prediction(Checkpoint.open(tmp_path))  # a run folder resolves to its latest checkpoint
    model, _ = _model()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)
    r = subprocess.run([sys.executable, "-m", "stages.import_official", "--official", str(tmp_path / "nope.pt"),
                        "--config", "configs/demo_cpu.yaml", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "file not found" in r.stderr and "Traceback" not in r.stderr
