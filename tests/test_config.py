"""Config loading: defaults < YAML < overrides; unknown keys and wrong types are errors."""
from pathlib import Path

import pytest

from pipeline.config import ConfigError, RunConfig, dump_config, from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "c.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_defaults_are_the_paper_arc_setting():
    c = RunConfig()
    m, t = c.model, c.train
    assert (m.hidden, m.heads, m.layers, m.h_cycles, m.l_cycles, m.halt_max_steps) == (512, 8, 2, 3, 4, 16)
    assert (t.global_batch, t.lr, t.betas, t.weight_decay, t.puzzle_emb_lr, t.ema_decay) == (768, 1e-4, [0.9, 0.95], 0.1, 1e-2, 0.999)
    assert c.model.seq_len == 900 and c.data.canvas == 30


def test_overrides_win_and_parse_types():
    cfg = load_config("configs/demo_cpu.yaml", ["train.steps=7", "train.lr=1e-3", "model.mlp_t=true", "run_dir=x"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.model.mlp_t is True and cfg.run_dir == "x"


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "unknown config key 'train.stepz'"),
    ("model.hidden=big", "config key 'model.hidden': expected int"),
    ("model.pos_encodings=sine", "model.pos_encodings"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("model.heads=7", "not divisible"),
    ("data.canvas=31", "data.canvas=31"),
])
def test_bad_keys_and_values_are_rejected_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo_cpu.yaml", [override])


def test_seq_len_must_match_canvas():
    with pytest.raises(ConfigError, match="seq_len"):
        from_dict(RunConfig, {"data": {"canvas": 10}})


def test_bad_yaml_file_is_a_config_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
