"""The checkpoint decides the computation (issue 18): ttt, predict and submit compute as the checkpoint was
trained with the official evaluation unless asked otherwise, list every departure, and the published-recipe
presets hold recipes only.  pytest tests/test_computation.py"""
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from pipeline.checkpoint import load_for_prediction, write_weights_checkpoint
from pipeline.computation import departures, describe
from pipeline.config import dump_config, load_config, to_dict, upgrade_saved
from pipeline.layout import Checkpoint
from pipeline.nn.model import TRM
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.training.ttt import ttt_config, ttt_departures

TINY = ["model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32"]
RECIPES = ["ttt_full.yaml", "ttt_mcgovern.yaml", "ttt_nvarc.yaml"]
SPEED_UPS = {("compute", "crop"), ("compute", "crop_groups"), ("data", "max_offset"), ("data", "bucket_steps"),
             ("predict", "adaptive_halting"), ("predict", "translate"), ("predict", "max_offset"),
             ("predict", "max_steps")}


def checkpoint(folder: Path, *sets: str) -> Checkpoint:
    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", [*TINY, *sets])
    model = TRM(cfg.model, 3, cfg.compute)
    return write_weights_checkpoint(folder, model_state=model.state_dict(), config_yaml=dump_config(cfg),
                                    task_ids=["a", "b"], ids=PerTaskIds(2), meta={"test": True})


def test_an_old_checkpoints_saved_evaluation_settings_are_not_inherited(tmp_path):
    """A checkpoint saved by an older version holds adaptive halting and translated views as its predict
    settings: predict, ttt and submit (ttt_config) still evaluate officially, and say so."""
    ck = checkpoint(tmp_path / "old", "predict.adaptive_halting=true", "predict.translate=true")
    saved = ck.file("config.yaml")  # older versions also saved predict.max_offset (now data.max_offset's)
    saved.write_text(saved.read_text().replace("predict:\n", "predict:\n  max_offset: 2\n"))
    ck = Checkpoint.open(ck.path)
    loaded = load_for_prediction(ck)
    p = loaded.config.predict
    assert (p.adaptive_halting, p.translate, p.max_steps, loaded.config.compute.crop) == (False, False, 0, False)
    assert loaded.departures == [] and "no departure" in describe(loaded.departures)
    asked = load_for_prediction(ck, overrides=["predict.adaptive_halting=true", "compute.crop=true"])
    assert asked.departures == ["compute.crop: false -> true", "predict.adaptive_halting: false -> true"]
    for preset in ["demo_ttt.yaml", *RECIPES[:2]]:
        cfg = ttt_config(ck, ROOT / "configs" / preset, [], tmp_path / "ttt")
        assert (cfg.predict.adaptive_halting, cfg.predict.translate, cfg.compute.crop) == (False, False, False), preset
        assert ttt_departures(cfg, ck, ROOT / "configs" / preset) == [], preset


def test_ttt_follows_the_checkpoints_crop_and_translation_range(tmp_path):
    """A checkpoint pretrained under crop with translation bounded to 1 cell: TTT and predict keep both (no
    departure); a full-canvas checkpoint keeps the full canvas and translation anywhere."""
    cropped = checkpoint(tmp_path / "cropped", "compute.crop=true", "data.max_offset=1")
    cfg = ttt_config(cropped, ROOT / "configs" / "ttt_full.yaml", [], tmp_path / "ttt")
    assert cfg.compute.crop and cfg.data.max_offset == 1 and ttt_departures(cfg, cropped, ROOT / "configs" / "ttt_full.yaml") == []
    assert load_for_prediction(cropped).config.compute.crop and load_for_prediction(cropped).departures == []
    full = checkpoint(tmp_path / "full")
    cfg = ttt_config(full, ROOT / "configs" / "ttt_full.yaml", [], tmp_path / "ttt2")
    assert not cfg.compute.crop and cfg.data.translate and cfg.data.max_offset == 0


def test_predicting_from_a_ttt_run_keeps_and_lists_its_departures(tmp_path):
    """A TTT run with crop, bounded translation and adaptive halting (ttt_fast.yaml) from a full-canvas
    checkpoint: loading the run to predict (stages.predict, make score TTT=1) computes as the run was trained
    and with its adaptive halting, and lists all three against the pretrained checkpoint, not 'no departure'
    against the run's own config."""
    full = checkpoint(tmp_path / "full")
    cfg = ttt_config(full, [ROOT / "configs" / "ttt_full.yaml", ROOT / "configs" / "ttt_fast.yaml"], [],
                     tmp_path / "ttt")
    model = TRM(cfg.model, 3, cfg.compute)
    run = write_weights_checkpoint(tmp_path / "ttt" / "ckpt" / "step-00000001", model_state=model.state_dict(),
                                   config_yaml=dump_config(cfg), task_ids=["a", "b"], ids=PerTaskIds(2), meta={})
    loaded = load_for_prediction(Checkpoint.open(tmp_path / "ttt"))
    assert loaded.config.compute.crop and loaded.config.predict.adaptive_halting and run.trained_config() == full.config
    expected = ["compute.crop: false -> true", "data.translate/max_offset: anywhere -> up to 1 cell",
                "predict.adaptive_halting: false -> true"]
    assert loaded.departures == expected and describe(loaded.departures).startswith("computation: 3 departure(s)")
    asked = load_for_prediction(run, overrides=["predict.adaptive_halting=false"])  # the user can still turn one off
    assert asked.departures == expected[:2] and not asked.config.predict.adaptive_halting


def test_departures_name_each_setting_that_changes_the_computation(tmp_path):
    ck = checkpoint(tmp_path / "ck")
    nvarc = ttt_config(ck, ROOT / "configs" / "ttt_nvarc.yaml", [], tmp_path / "a")
    assert ttt_departures(nvarc, ck, ROOT / "configs" / "ttt_nvarc.yaml") == ["model.h_cycles: 2 -> 4", "model.halt_max_steps: 4 -> 10"]  # NVARC's recipe
    fast = ttt_config(ck, [ROOT / "configs" / "ttt_full.yaml", ROOT / "configs" / "ttt_fast.yaml"], [], tmp_path / "b")
    assert ttt_departures(fast, ck, [ROOT / "configs" / "ttt_full.yaml", ROOT / "configs" / "ttt_fast.yaml"]) == ["compute.crop: false -> true", "data.translate/max_offset: anywhere -> up to 1 cell",
                                    "predict.adaptive_halting: false -> true"]
    sets = ["predict.translate=true", "predict.max_steps=2", "data.sampler=independent", "data.bucket_steps=10",
            "compute.crop_groups=4"]
    other = ttt_config(ck, ROOT / "configs" / "ttt_full.yaml", sets, tmp_path / "c")
    # crop_groups changes the speed only (each example computes on its own rectangle): not a departure
    assert ttt_departures(other, ck, ROOT / "configs" / "ttt_full.yaml") == [  # ck: demo_cpu.yaml (independent)
        "data.bucket_steps: 0 -> 10", "predict.max_steps: N_sup -> 2",
                                     "predict.translate/max_offset: none -> anywhere"]
    assert departures(other, other) == ["predict.max_steps: N_sup -> 2", "predict.translate/max_offset: none -> anywhere"]


def test_another_optimiser_or_lora_than_the_recipe_is_a_departure_and_the_recipes_own_is_not(tmp_path):
    """Muon and LoRA (README's departures table) are listed when --set asks for them, against what the
    presets give without --set: NVARC's adam_atan2_pytorch and McGovern's trainable schedule are their
    recipes', not departures."""
    ck = checkpoint(tmp_path / "ck")
    full = ROOT / "configs" / "ttt_full.yaml"
    muon = ttt_config(ck, full, ["train.optimizer=muon", "train.trainable=lora"], tmp_path / "a")
    assert ttt_departures(muon, ck, full) == ["train.optimizer: adam_atan2 -> muon", "train.trainable: all -> lora"]
    for name in ("ttt_nvarc.yaml", "ttt_mcgovern.yaml"):
        recipe = ROOT / "configs" / name
        assert not any(d.startswith("train.") for d in ttt_departures(ttt_config(ck, recipe, [], tmp_path / name),
                                                                       ck, recipe)), name


def test_known_tasks_keeping_their_rows_is_a_departure_that_resolved_configs_show(tmp_path):
    """TTT starts every row at the table's mean as the references do; train.keep_known_rows=true (README's
    departures table) is listed by ttt (ttt.json, plan.json) and by predict from that run, is never inherited
    from the run a TTT run starts from, and the resolved config shows it either way."""
    ck = checkpoint(tmp_path / "ck")
    full = ROOT / "configs" / "ttt_full.yaml"
    default = ttt_config(ck, full, [], tmp_path / "a")
    assert not default.train.keep_known_rows and "keep_known_rows: false" in dump_config(default)
    assert ttt_departures(default, ck, full) == []
    keep = ttt_config(ck, full, ["train.keep_known_rows=true"], tmp_path / "b")
    assert "keep_known_rows: true" in dump_config(keep)
    assert ttt_departures(keep, ck, full) == ["train.keep_known_rows: false -> true"]
    model = TRM(keep.model, 3, keep.compute)
    run = write_weights_checkpoint(tmp_path / "b" / "ckpt" / "step-00000001", model_state=model.state_dict(),
                                   config_yaml=dump_config(keep), task_ids=["a", "b"], ids=PerTaskIds(2), meta={})
    assert load_for_prediction(Checkpoint.open(tmp_path / "b")).departures == ["train.keep_known_rows: false -> true"]
    again = ttt_config(run, full, [], tmp_path / "c")  # TTT from that run asks again
    assert not again.train.keep_known_rows and ttt_departures(again, run, full) == []


def test_the_planners_time_the_ttt_runs_cycles_and_n_sup(tmp_path, capsys):
    """stages.submit times the pretrained model with the TTT run's computation (model_overrides), and
    bench.budget projects it: a preset raising N_sup raises the seconds per view."""
    import bench.budget
    from pipeline.submit.calibration import calibrate_predict
    from pipeline.computation import model_overrides
    from pipeline.prediction.infer import PredictOptions
    from pipeline.runtime import init_runtime
    from pipeline.data.synthetic import synthetic_tasks

    ck = checkpoint(tmp_path / "ck")  # N_sup 4
    longer = tmp_path / "longer.yaml"
    longer.write_text("model:\n  halt_max_steps: 32\n")
    demo = ROOT / "configs" / "demo_ttt.yaml"
    rt = init_runtime("cpu", "float32", 0)
    tasks = synthetic_tasks("tasks=2,seed=7,size=4,demos=2,tests=2,fixed=1,families=colour_map")
    view_s = []
    for presets in ([demo], [demo, longer]):
        cfg = ttt_config(ck, presets, ["predict.batch_size=8"], tmp_path / "ttt")
        loaded = load_for_prediction(ck, overrides=model_overrides(cfg))
        assert loaded.model.cfg.halt_max_steps == cfg.model.halt_max_steps
        view_s.append(calibrate_predict(loaded, tasks, PredictOptions.of(cfg, rt), rt)[1])
    assert view_s[1] > 3 * view_s[0]  # 32 steps vs 4, each timed at 2 and scaled: ~8x
    per_view = []
    for presets in (["configs/ttt_full.yaml"], ["configs/ttt_full.yaml", str(longer)]):
        bench.budget.main(["--ttt-config", *presets, "--no-measure", "--no-crop"])
        per_view.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["flow"]["view_s_per_gpu"])
    assert per_view[1] == pytest.approx(2 * per_view[0])  # N_sup 32 vs the ARC config's 16


@pytest.mark.parametrize("name", RECIPES + ["demo_ttt.yaml"])
def test_recipe_presets_hold_no_speed_up(name):
    """The published recipes (and the demo's) compute as the checkpoint was trained: no crop, no bounded
    translation, no adaptive halting, no translated views; the speed-ups live in configs/ttt_fast.yaml."""
    data = yaml.safe_load((ROOT / "configs" / name).read_text())
    found = {(section, key) for section, values in data.items() if isinstance(values, dict) for key in values}
    assert not found & SPEED_UPS, found & SPEED_UPS
    fast = yaml.safe_load((ROOT / "configs" / "ttt_fast.yaml").read_text())
    assert {(s, k) for s, v in fast.items() for k in v} <= SPEED_UPS  # ... and only speed-ups live there


def test_recipe_presets_match_their_sources():
    """ttt-reference.md sections 2-4: the optimiser, lrs, decays, warm-up, batch and augmentations of each."""
    full, mcgovern, nvarc = (load_config(ROOT / "configs" / n).train for n in RECIPES)
    for t in (full, mcgovern):
        assert (t.optimizer, t.global_batch, t.lr, t.puzzle_emb_lr, t.lr_warmup, t.lr_min_ratio, t.weight_decay,
                t.puzzle_emb_weight_decay, t.ema_decay, t.betas) == ("adam_atan2", 384, 1e-4, 1e-2, 2000, 1.0, 0.1,
                                                                      0.1, 0.999, [0.9, 0.95])
    assert (mcgovern.trainable, mcgovern.freeze_fraction) == ("embeddings_then_all", 0.2083)
    assert (nvarc.optimizer, nvarc.global_batch, nvarc.lr, nvarc.puzzle_emb_lr, nvarc.lr_warmup, nvarc.lr_min_ratio,
            nvarc.weight_decay, nvarc.puzzle_emb_weight_decay, nvarc.ema_decay) == (
        "adam_atan2_pytorch", 128, 1e-4, 1e-2, 200, 1.0, 0.1, 0.1, 0.999)
    m = load_config(ROOT / "configs" / "ttt_nvarc.yaml")
    assert (m.model.h_cycles, m.model.halt_max_steps, m.data.augs_per_task, m.predict.augs) == (4, 10, 128, 128)


def test_the_arc_configs_evaluate_with_all_16_steps():
    """What stages.import_official writes from the ARC configs (and what pretraining saves) resolves, once
    loaded by a stage, to N_sup = 16 steps for every view, untranslated, on the full canvas."""
    from pipeline.computation import computation, with_official_evaluation
    from pipeline.config import to_dict

    for name in ("arc2_4xh100.yaml", "arc1_1gpu.yaml"):
        saved = to_dict(load_config(ROOT / "configs" / name, ["predict.adaptive_halting=true"]))  # an old save
        cfg = load_config(None, [], base=with_official_evaluation(saved))
        assert cfg.model.halt_max_steps == 16 and cfg.predict.max_steps == 0 and not cfg.predict.adaptive_halting
        assert computation(cfg) == {  # the official ARC recipe (trm-reference.md), evaluated officially
            "compute.crop": "false", "compute.carry": "forward", "model.one_step_grad": "false",
            "model.act_continue": "null", "model.h_cycles": "3", "model.l_cycles": "4", "model.halt_max_steps": "16",
            "data.translate/max_offset": "anywhere", "data.sampler": "official", "data.offsets": "fixed per version",
            "data.bucket_steps": "0", "predict.adaptive_halting": "false",
            "predict.max_steps": "N_sup", "predict.translate/max_offset": "none", "train.keep_known_rows": "false"}


def test_the_sampler_and_fresh_offsets_are_departures_from_an_officially_sampled_checkpoint(tmp_path):
    ck = checkpoint(tmp_path / "ck", "data.sampler=official")
    assert ck.config.data.sampler == "official" and not ck.config.data.fresh_offsets
    full = ROOT / "configs" / "ttt_full.yaml"
    assert departures(ttt_config(ck, full, [], tmp_path / "a"), ck.config) == []
    independent = ttt_config(ck, full, ["data.sampler=independent"], tmp_path / "b")
    assert departures(independent, ck.config) == ["data.sampler: official -> independent",
                                                  "data.offsets: fixed per version -> fresh per draw"]
    fresh = ttt_config(ck, full, ["data.fresh_offsets=true"], tmp_path / "c")
    assert departures(fresh, ck.config) == ["data.offsets: fixed per version -> fresh per draw"]


def test_a_checkpoint_saved_before_the_sampler_setting_keeps_its_independent_draws():
    saved = to_dict(load_config(ROOT / "configs" / "arc2_4xh100.yaml"))
    del saved["data"]["sampler"], saved["data"]["fresh_offsets"]
    old = load_config(None, [], base=saved)
    assert old.data.sampler == "independent" and old.data.fresh_offsets
    assert upgrade_saved(to_dict(load_config(ROOT / "configs" / "arc2_4xh100.yaml")))["data"]["sampler"] == "official"


def test_the_trm_ablation_switches_are_departures(tmp_path):
    ck = checkpoint(tmp_path / "ck")
    full = ROOT / "configs" / "ttt_full.yaml"
    one = ttt_config(ck, full, ["model.one_step_grad=true", "model.act_continue=true"], tmp_path / "a")
    assert departures(one, ck.config) == ["model.one_step_grad: false -> true", "model.act_continue: null -> true"]
