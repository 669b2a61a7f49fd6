"""The benchmarks nothing else runs, in a smoke mode (tiny sizes, seconds), so that they cannot rot: each must run
to its JSON line with the fields BENCHMARKS.md reads. Their figures here mean nothing."""
import json
import time

import pytest
import torch

import bench.ablation
import bench.crop
import bench.memory
import bench.train
import bench.tta
from pipeline.config import load_config
from pipeline.nn.arch import build_model


@pytest.fixture
def one_thread():
    """As the benchmarks are run (OMP_NUM_THREADS=1): two threads on the loaded 2-core machine crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_crop_smoke(capsys, one_thread):
    source = "synthetic:tasks=8,seed=0,size=6,demos=3,tests=1"
    bench.crop.main(["--sources", source, "--sizes", "2", "--reps", "1", "--hidden", "32"])
    out = last_json(capsys)
    tokens = out["tokens"][source]
    assert tokens["canvas"] == 900 and 0 < tokens["grid_rect"] <= tokens["task_square"] <= 49
    assert {"ttt_batch", "view", "joint_b4", "joint_g8"} <= set(tokens)
    for step in ("train", "infer"):
        speed = out["speed"][step]
        assert speed["samples_per_s_full"] > 0 and speed["speedup"] > 0 and len(speed["sizes"]) == 2, speed


def test_bench_tta_smoke(tmp_path, capsys, one_thread):
    rows = tmp_path / "rows.json"
    bench.tta.main(["--seeds", "0", "--optimizers", "adam_atan2", "--max-steps", "2", "--eval-every", "1",
                    "--pretrain-steps", "2", "--set", "data.eval_views=1", "--work", str(tmp_path / "work"),
                    "--rows", str(rows)])
    out = last_json(capsys)
    assert set(out["summary"]) == {"scratch", "ttt"}
    for setting in out["summary"].values():
        assert set(setting["adam_atan2"]) >= {"steps", "median_steps", "speedup_vs_official"}
    curves = {r["setting"]: [c["step"] for c in r["curve"]] for r in json.loads(rows.read_text())}
    assert curves == {"scratch": [1, 2], "ttt": [1, 2]}


ABLATION_SMOKE = ["--base", "configs/demo_cpu.yaml", "--seeds", "0", "--steps", "2",
                  "--set", "data.eval_inputs=4", "data.eval_views=1", "train.log_every=1", "train.eval_every=1"]


def test_bench_ablation_smoke(tmp_path, capsys):
    """Two rows x one seed x 2 steps: the printed table (a line per row, 9 columns, the paper's task named as
    another), the JSON rows, and the runs reused by a second call."""
    argv = [*ABLATION_SMOKE, "--rows", "trm", "hrm", "--out", str(tmp_path)]
    bench.ablation.main([*argv, "--jobs", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    table = [line for line in lines if line.startswith("| ")]
    assert "Sudoku-Extreme" in lines[-6] and "different task" in lines[-6]
    assert len(table) == 4 and all(line.count("|") == 10 for line in table), table
    assert [line.split("|")[1].strip() for line in table[2:]] == ["trm", "hrm"]
    trm, hrm = out["rows"]
    assert (trm["row"], hrm["row"], hrm["ref"]) == ("trm", "hrm", "trm")
    assert hrm["changes"]["model.arch"] == "hrm" and trm["changes"] == {}
    for row in (trm, hrm):
        assert row["seeds"] == [0] and 0 <= row["pass@2_mean"] <= 1 and row["steps_per_s"] > 0
        assert row["lm_loss_mean"] == row["runs"][0]["lm_loss"] > 0 and row["act_steps_mean"] is not None
        assert 0 <= row["exact_accuracy_mean"] <= 1 and row["runs"][0]["eval_step_before"] == 1
        assert row["runs"][0]["eval_step"] == 2 and row["runs"][0]["seconds"] > 0
    assert trm["params"] == build_model(load_config("configs/demo_cpu.yaml").model, 1).num_params()
    assert hrm["params"] > 2 * trm["params"]  # L and H of 4 blocks against one network of 2
    assert "40.3 / 5.0" in hrm["paper"] and trm["paper"].startswith("87.4")
    bench.ablation.main(argv)  # finished runs are read, not trained again
    again = last_json(capsys)
    assert [r["runs"][0]["seconds"] for r in again["rows"]] == [None, None]
    assert [r["pass@2"] for r in again["rows"]] == [trm["pass@2"], hrm["pass@2"]]


def test_bench_ablation_a_failed_run_ends_the_bench_naming_it(tmp_path):
    """A run that fails (here: a data source that does not exist) ends the bench with its folder and log named,
    from the pool of --jobs 2 as from one job."""
    argv = [*ABLATION_SMOKE, 'data.sources=["folder:/nonexistent"]', "--rows", "trm", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"trm_s0_n2 failed \(exit \d+\): see .*trm_s0_n2.log"):
        bench.ablation.main([*argv, "--jobs", "2"])


def test_bench_ablation_trains_seed_major_each_shared_run_once_and_nothing_after_a_failure(tmp_path, monkeypatch):
    """train_all's order and sharing without training: seed-major, trm and self_attention (one config) trained
    once per seed; with one job, a failure cancels what has not started (at most the run the worker already took,
    held here for 0.5 s so that the cancel reaches the rest first)."""
    calls, fail = [], set()

    def fake(folder, paths, seed, steps, sets, config):
        calls.append(folder.name)
        if folder.name in fail:
            raise SystemExit(f"{folder.name} failed")
        if fail:
            time.sleep(0.5)
        return 1.0

    monkeypatch.setattr(bench.ablation, "train", fake)
    args = bench.ablation.parse_args(["--rows", "trm", "self_attention", "no_ema", "--seeds", "0", "1",
                                      "--out", str(tmp_path)])
    planned = bench.ablation.plan(args.rows, args.base, args.set, tmp_path)
    assert set(bench.ablation.train_all(planned, args, tmp_path)) == {tmp_path / c for c in calls}
    assert calls == ["trm_s0_n400", "no_ema_s0_n400", "trm_s1_n400", "no_ema_s1_n400"]
    calls.clear()
    fail.add("no_ema_s0_n400")
    args.seeds = [0, 1, 2]
    with pytest.raises(SystemExit, match="no_ema_s0_n400 failed"):
        bench.ablation.train_all(planned, args, tmp_path)
    assert calls[:2] == ["trm_s0_n400", "no_ema_s0_n400"] and len(calls) <= 3, calls
    with pytest.raises(SystemExit):
        bench.ablation.parse_args(["--jobs", "0"])


def test_bench_ablation_refuses_a_run_of_another_config_or_one_that_stopped_early(tmp_path):
    """A run folder stamped with another config (an edited preset or --set) is refused, not reused or resumed;
    an unstamped existing folder too; a run whose last evaluation is not at the asked step is not tabled."""
    folder = tmp_path / "trm_s0_n2"
    bench.ablation.stamp(folder, {"model.hidden": 64}, 0, 2)
    bench.ablation.stamp(folder, {"model.hidden": 64}, 0, 2)  # the same: fine
    for config, seed in (({"model.hidden": 32}, 0), ({"model.hidden": 64}, 1)):
        with pytest.raises(SystemExit, match="another config"):
            bench.ablation.stamp(folder, config, seed, 2)
    (tmp_path / "bare").mkdir()
    with pytest.raises(SystemExit, match="another config"):
        bench.ablation.stamp(tmp_path / "bare", {}, 0, 2)
    (folder / "metrics.jsonl").write_text('{"step": 1, "eval/pass@2": 0.5, "eval/pass@1": 0.5}\n')
    with pytest.raises(SystemExit, match="no evaluation at step 2"):
        bench.ablation.result(folder, 2, 64)


def test_bench_ablation_rows_are_the_presets_over_the_base(tmp_path):
    """Each row changes over its reference row exactly what its preset says (the base keeps the ARC command's
    layers 2, T=3, n=4, so every preset is a change); self_attention is read against the MLP mixer and, over this
    attention base, is the base itself (its runs are the base's); --set may not touch a row's settings."""
    rows = bench.ablation.plan(list(bench.ablation.ALL_ROWS), bench.ablation.BASE, [], tmp_path)
    changes = {name: p["changes"] for name, p in rows.items()}
    assert changes["trm"] == {} and changes["no_ema"] == {"train.ema": False}
    assert changes["t2_n2"] == {"model.h_cycles": 2, "model.l_cycles": 2}
    assert changes["layers4_n3"] == {"model.layers": 4, "model.l_cycles": 3}
    assert changes["separate_fh_fl"] == {"model.h_layers": 2}
    assert changes["self_attention"] == {"model.mlp_t": False, "model.pos_encodings": "rope"}
    assert changes["hrm"] == {"model.arch": "hrm", "model.layers": 4, "model.h_layers": 4, "model.h_cycles": 2,
                              "model.l_cycles": 2}
    assert {n: p["runs_of"] for n, p in rows.items() if p["runs_of"] != n} == {"self_attention": "trm"}
    with pytest.raises(SystemExit, match="model.h_cycles"):
        bench.ablation.plan(["t2_n2"], bench.ablation.BASE, ["model.h_cycles=5"], tmp_path)


@pytest.mark.parametrize("name", ["train", "memory"])
def test_bench_train_and_memory_build_any_architecture(name, capsys, one_thread):
    """bench.train and bench.memory build through the registry (pipeline/nn/arch.py): model.arch=hrm runs HRM."""
    sets = ["model.arch=hrm", "model.h_layers=2", "train.global_batch=4", "data.eval_inputs=2", "data.eval_views=1",
            "predict.max_steps=1"]
    main = bench.train.main if name == "train" else bench.memory.main
    main(["--config", "configs/demo_cpu.yaml", "--steps", "1", "--set", *sets])
    out = last_json(capsys)
    cfg = load_config("configs/demo_cpu.yaml", sets).model
    assert out["arch"] == "hrm" and out["params_m"] == build_model(cfg, 1).num_params() / 1e6


def test_bench_spread_tables_the_worst_median_and_best_of_finished_runs(tmp_path, capsys):
    """bench.spread reads finished runs (result.json of the same configs) instead of training again, and tables
    each asserted number: the demo's last evaluation, every TTT score, gain and loss ratio, and what each
    specialist solves of its own task (a: syn5, b: syn3, listed in task order syn3, syn5) and of the other's."""
    import bench.spread

    runs = {0: ({"250": 0.5, "1400": 0.9}, 0.0, 0.8, [0, 4], [4, 0]),
            1: ({"250": 0.4, "1400": 1.0}, 0.25, 1.0, [1, 3], [4, 0])}
    for seed, (demo, before, full, a, b) in runs.items():
        folder = tmp_path / f"s{seed}_t1_native"
        folder.mkdir()
        ttt = {"before": before, "all": full, "embeddings_then_all": full, "embeddings": 0.5, "lora": 0.7}
        (folder / "result.json").write_text(json.dumps({"seed": seed, "threads": 1, "kernels": "native",
                                                        "configs": bench.spread.fingerprint(),
                                                        "untrained_pass@2": 0.0, "demo_pass@1": demo, "ttt": ttt,
                                                        "specialists": {"a": a, "b": b}}))
    bench.spread.main(["--out", str(tmp_path), "--seeds", "0", "1", "--threads", "1"])
    table = last_json(capsys)["summary"]
    assert table["demo_pass@1_final"] == {"min": 0.9, "median": 0.95, "max": 1.0}
    assert table["ttt_before"]["max"] == 0.25 and table["ttt_all"]["min"] == 0.8
    assert table["ttt_all_gain"] == {"min": 0.75, "median": 0.775, "max": 0.8}
    assert table["specialists_own_solved"] == {"min": 3, "median": 3.5, "max": 4}
    assert table["specialists_other_solved"] == {"min": 0, "median": 0.5, "max": 1}
