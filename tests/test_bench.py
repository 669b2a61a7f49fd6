"""The benchmarks nothing else runs, in a smoke mode (tiny sizes, seconds), so that they cannot rot: each must run
to its JSON line with the fields BENCHMARKS.md reads. Their figures here mean nothing."""
import json

import pytest
import torch

import bench.crop
import bench.tta


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
