"""Config loading: defaults < YAML < overrides; unknown keys and wrong types are errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_a_partial_trainable_set_on_deepspeed_is_one_line_at_load(tmp_path):
    """train.trainable other than all runs on DDP only: refused when the config loads (exit 2, one line), not by a
    traceback from the run's builder."""
    r = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
                        f"run_dir={tmp_path}", "train.engine=deepspeed", "train.trainable=lora"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "train.trainable=lora runs on the DDP engine only" in r.stderr


def test_seq_len_must_match_canvas():
    with pytest.raises(ConfigError, match="seq_len"):
        from_dict(RunConfig, {"data": {"canvas": 10}})


def test_bad_yaml_file_is_a_config_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_a_checkpoint_config_of_the_old_shape_still_loads(tmp_path):
    """config.yaml written before the compute: section (crop under model:, compile under train: and predict:,
    predict.seed / predict.max_offset, model.seq_len) loads into today's shape; a preset may not use the old keys."""
    from pipeline.layout import Checkpoint

    old = yaml.safe_load(dump_config(load_config("configs/demo_cpu.yaml")))
    old.pop("compute")
    old["model"].update(crop=True, crop_groups=4, seq_len=25)
    old["train"]["compile"] = False
    old["predict"].update(compile=False, seed=3, max_offset=2)
    folder = tmp_path / "ckpt" / "step-00000001"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(old))
    (folder / "tasks.json").write_text('{"task_ids": ["a"], "puzzle_ids": "per_task"}')
    (folder / "meta.json").write_text('{"step": 1}')
    cfg = Checkpoint.open(tmp_path).config
    assert (cfg.compute.crop, cfg.compute.crop_groups, cfg.compute.compile) == (True, 4, False)
    assert cfg.model.seq_len == 25 and cfg.data.max_offset == 0 and cfg.seed == 0
    with pytest.raises(ConfigError, match=r"unknown config key 'model.crop' \(it is now compute.crop\)"):
        load_config("configs/demo_cpu.yaml", ["model.crop=true"])  # an old override says where the setting went
    with pytest.raises(ConfigError, match=r"'predict.max_offset' \(it is one setting now: data.max_offset\)"):
        load_config("configs/demo_cpu.yaml", ["predict.max_offset=1"])


def test_seq_len_is_derived_from_the_canvas():
    assert load_config("configs/demo_cpu.yaml", ["data.canvas=8"]).model.seq_len == 64
    assert load_config("configs/demo_cpu.yaml", ["data.canvas=8", "model.seq_len=64"]).model.seq_len == 64
    with pytest.raises(ConfigError, match="derived from data.canvas"):
        load_config("configs/demo_cpu.yaml", ["model.seq_len=36"])
