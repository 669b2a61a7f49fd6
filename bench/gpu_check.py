"""One command for a lent GPU: the environment, throughput at the ARC config against the official anchors,
host syncs in the compiled steps, stages.submit under torchrun inside a 2-minute budget (the planner's
calibration), a real-ARC learning curve, and the demo flow on CUDA.

    python3 -m bench.gpu_check --prepare                  # here, once: ../shared/arc -> .gpu_data/arc (11 MB)
    bash scripts/gpu_check.sh --device cuda --out $OUT    # on the GPU machine (carry .gpu_data): 8 minutes
    bash scripts/gpu_check.sh --quick --device cpu        # every part at toy size (tests/test_gpu_check.py)
    bash scripts/gpu_check.sh --parts demo --budget-s 200 --out D   # some parts only, in a given time

First, always, a tiny CUDA probe (bench/gpu_env.py probe): the full run, and --device cuda, refuse to go on
without CUDA (one line, exit 2), so nothing ARC-sized ever runs on a CPU. Then the parts, in this order (their
priority), with the seconds each may use in the full run (CAPS):
  env         45 s  GPU, memory, torch/CUDA/cuDNN/NCCL versions, bf16, a bf16 matmul's TFLOP/s, which
                    modules are missing, whether every module the check runs imports, numba's JIT; then
                    torch.compile and a one-rank NCCL all-reduce, each in its own process
  throughput 180 s  bench.train at batch 192 on the full canvas (the 1280-task mix) and under crop
                    (ARC-AGI-2 evaluation demonstrations, 8 size groups); bench.infer at batch 768, 16 fixed
                    steps and adaptive; ratios to the official one-H100 anchors (887 samples/s, 44% MFU in
                    its FLOP count, 95 puzzles/s)
  sync        (0 s) host syncs counted inside the train_full and infer processes above, which already built
                    and compiled the ARC model (bench/syncs.py): the compiled ACT step and recursion must
                    have none and must not recompile; an optimiser step and predict_stream are reported
  e2e       160 s  stages.submit under torchrun on the ARC-AGI-2 evaluation challenges with a random-init
                    ARC-config checkpoint, a 120 s budget and 50 TTT steps pinned: valid, scored per task,
                    and its plan against the seconds each stage took (the planner's calibration)
  curve      95 s  configs/arc1_small_cpu.yaml's model on real ARC-AGI-1 (tasks that fit 12x12) for about
                    50 s: its loss/accuracy curve, and held-out pass@2 and token accuracy
  demo      (0 s) the demo config pretrained (its held-out score), test-time trained on held-out tasks,
                    predicted, validated and scored per task: runs on what the parts before it left
A part may use its cap plus whatever the parts before it left unused; the caps of the parts after it are
never touched, so a slow or hanging part cannot starve them. A step is killed at its own time limit
(failed: timed out) or where its part's time runs out (clipped: clipped_by_budget); a step that no longer
fits is skipped (out of time). The summary prints the command for the parts cut short, to run in the
device's time left (--budget-s).
Every compute setting is passed explicitly (the official full canvas, translation anywhere, fixed N_sup
steps and untranslated views in prediction, bf16 and torch.compile on CUDA; crop only where named), so
the figures mean what they say whatever the presets' defaults become.

This driver imports only the standard library: each step is its own process (a benchmark, a stage or
bench/gpu_env.py, bench/gpu_steps.py) in its own process group, killed with everything it started when it
runs over. Writes OUT/PART.json per part (status ok|failed|clipped|skipped, reason, seconds, figures, and per
step: command, exit code, seconds, result, log tail), OUT/gpu_check.json (everything) and OUT/summary.txt
(the table printed last): 8 files, also when the driver is stopped by a signal. Full logs go to WORK/logs.
Exit 0 unless a part failed (1), or bad usage / no CUDA where it is needed (2, one line).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "throughput", "sync", "e2e", "curve", "demo")
# Seconds each part may use; each mode's caps add up to its default budget (README, "GPU check"). Full: one
# H100 in 8 minutes, priorities env > throughput (and the syncs counted inside it) > submit's calibration >
# curve > the demo flow, which runs on the slack. Quick: a loaded 2-core CPU, where the parts take about
# half of this.
CAPS = {"full": {"env": 45, "throughput": 180, "sync": 0, "e2e": 160, "curve": 95, "demo": 0},
        "quick": {"env": 60, "throughput": 150, "sync": 0, "e2e": 150, "curve": 120, "demo": 150}}
# Official TRM on one H100 (BENCHMARKS.md): training at the ARC config, batch 192, bf16, compiled; prediction at
# 16 steps, batch 768. Its 44% MFU counts FLOPs its own way: bench.train --anchor prints what 887 samples/s is
# in ours (TRM.flops_per_step: 35.7% of an H100's peak), and MFU is compared in our count.
ANCHORS = {"train_samples_per_s": 887.0, "train_mfu_official_count": 0.44, "infer_puzzles_per_s": 95.0}
# The demo's tasks and the tasks held out of its pretraining, as scripts/demo.sh makes them.
DEMO = "synthetic:tasks=8,seed=0,size=4,demos=2000,tests=8,fixed=1,families=flip_lr+flip_ud+colour_map+recolour"
HELD = "synthetic:tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=colour_map+recolour"
# The official computation, spelled out: presets may change their defaults, the check must not.
OFFICIAL_TRAIN = ["compute.crop=false", "compute.crop_groups=1", "data.translate=true", "data.max_offset=0"]
OFFICIAL_PREDICT = ["predict.adaptive_halting=false", "predict.translate=false"]
# stages.submit's budget and pinned TTT steps (TTT's plan against its actual seconds is measured on every run);
# quick pins its views too, so that a loaded CPU's slow calibration still leaves TTT its time.
SUBMIT = {"full": {"budget": 120.0, "pin": ["--ttt-steps", 50]},
          "quick": {"budget": 75.0, "pin": ["--ttt-steps", 10, "--views", 8]}}
CURVE_AROUND_S = 45.0  # the curve part's seconds outside its training clock: start-up, build, held-out evaluation


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout_s: float
    needs: tuple[str, ...] = ()
    min_s: float = 20.0
    """Seconds of its part's time this step needs left to start at all."""
    cuda_only: bool = False


@dataclass
class Ctx:
    py: str
    quick: bool
    device: str
    arc: Path
    work: Path
    gpu: str | None = None
    part_s: float = 0.0
    """Seconds the part being planned may use (curve sizes its training from it)."""

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def compute(self, device: bool = True) -> list[str]:
        """bf16 and torch.compile on CUDA, float32 and eager on CPU (what `auto` means today, said aloud);
        `device=False` leaves train.device to a stage that takes --device."""
        on = str(self.cuda).lower()
        return [f"train.device={self.device}"] * device + [f"train.dtype={'bfloat16' if self.cuda else 'float32'}",
                                                           f"compute.compile={on}"]

    def m(self, module: str, *args) -> list[str]:
        return [self.py, "-m", module, *map(str, args)]


# -- the parts' steps ---------------------------------------------------------------------------------------------
def probe_step(ctx: Ctx) -> Step:
    return Step("probe", ctx.m("bench.gpu_env", "probe"), 60, min_s=5)


def env_steps(ctx: Ctx) -> list[Step]:
    return [Step("env", ctx.m("bench.gpu_env", "env", "--arc-root", ctx.arc), 60, min_s=10),
            Step("compile", ctx.m("bench.gpu_env", "compile"), 60, min_s=10, cuda_only=True),
            Step("nccl", ctx.m("bench.gpu_env", "nccl"), 30, min_s=5, cuda_only=True)]


def throughput_steps(ctx: Ctx) -> list[Step]:
    arc = f"data.arc_root={ctx.arc}"
    crop_sources = "data.sources=[arc:evaluation2#demos]"
    if ctx.quick:  # the 4 ARC-AGI-2 evaluation tasks that fit 12x12 are 10-12 cells wide: small ARC-AGI-1 ones too
        config, batch, views, crop_groups = "configs/arc1_small_cpu.yaml", 8, 16, 2
        full_runs, crop_runs, syncs = ["--warmup", 1, "--steps", 2], ["--warmup", 1, "--steps", 2], 1
        crop_sources = "data.sources=[arc:evaluation2#demos,arc:evaluation#demos]"
    else:  # compile dominates: enough warm-up for every graph (crop: the first shapes), a few timed seconds
        config, batch, views, crop_groups = "configs/arc2_4xh100.yaml", 192, 768, 8
        full_runs, crop_runs, syncs = ["--warmup", 2, "--steps", 10], ["--warmup", 3, "--steps", 10], 2
    sets = [f"train.global_batch={batch}", *ctx.compute(), arc]
    anchor = [] if ctx.quick else ["--anchor", ANCHORS["train_samples_per_s"]]
    infer = ctx.m("bench.infer", "--config", config, "--tasks", ctx.arc / "arc-agi_evaluation2_challenges.json",
                  "--batch", views, "--batches", 1, "--modes", "fixed,adaptive", "--no-crop", "--device", ctx.device,
                  "--count-syncs") + (["--compile"] if ctx.cuda else [])
    return [Step("train_full", ctx.m("bench.train", "--config", config, *full_runs, *anchor, "--count-syncs", syncs,
                                     "--set", *sets, *OFFICIAL_TRAIN), 150, min_s=45),
            Step("infer", infer, 120, min_s=40),
            Step("train_crop", ctx.m("bench.train", "--config", config, *crop_runs, "--set", *sets, "compute.crop=true",
                                     f"compute.crop_groups={crop_groups}", "data.translate=true", "data.max_offset=1",
                                     crop_sources), 150, min_s=45)]


def e2e_steps(ctx: Ctx) -> list[Step]:
    """stages.submit as Kaggle runs it, on a random-init checkpoint of the run's config: ARC size in full,
    the small ARC config in quick (the evaluation tasks that fit its 12x12 canvas; the rest fall back)."""
    w, mode = ctx.work / "e2e", "quick" if ctx.quick else "full"
    config = "configs/arc1_small_cpu.yaml" if ctx.quick else "configs/arc2_4xh100.yaml"
    sets = [*ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT, "train.progress=false"]
    challenges = ctx.arc / "arc-agi_evaluation2_challenges.json"
    solutions = ctx.arc / "arc-agi_evaluation2_solutions.json"
    budget = SUBMIT[mode]["budget"]
    # the preset's batch of 384 is GPU-sized; a CPU batch of 16 views, as many as a test input has here, keeps
    # the planner's seconds for prediction (whole batches) from taking TTT's share of the budget
    small = ["train.global_batch=32", "predict.batch_size=16"] if ctx.quick else []
    sub = w / "submit" / "submission.json"
    return [
        Step("arc_checkpoint", ctx.m("bench.gpu_steps", "checkpoint", "--config", config, "--out", w / "random",
                                     "--set", f"data.arc_root={ctx.arc}", *sets), 60, min_s=10),
        Step("submit", ctx.m("torch.distributed.run", "--standalone", "--nproc-per-node", 1, "-m", "stages.submit",
                             "--checkpoint", w / "random", "--challenges", challenges, "--out", sub, "--work-dir",
                             w / "submit" / "work", "--budget-s", budget, "--device", ctx.device, "--ttt-config",
                             "configs/ttt_full.yaml", *SUBMIT[mode]["pin"], "--set", *OFFICIAL_TRAIN,
                             *OFFICIAL_PREDICT, *ctx.compute(device=False), *small),
             budget + 30, ("arc_checkpoint",), budget + 15),
        Step("validate_submit", ctx.m("stages.validate", "--challenges", challenges, "--submission", sub), 30,
             ("submit",), 5),
        Step("score_submit", ctx.m("stages.score", "--solutions", solutions, "--submission", sub), 30, ("submit",), 5),
    ]


def curve_steps(ctx: Ctx) -> list[Step]:
    w = ctx.work / "curve"
    if ctx.quick:  # a few held-out inputs: a CPU evaluates ~10 views/s of this model
        minutes, run = 3.0, ["train.global_batch=16", "train.steps=20", "train.log_every=5", "train.ckpt_every=20",
                             "data.eval_inputs=8", "data.eval_views=4"]
        timeout, min_s = 240.0, 30.0
    else:  # a fixed length (its cap, not the slack), keeping CURVE_AROUND_S for start-up and the evaluation after it
        train_s = min(ctx.part_s, CAPS["full"]["curve"]) - CURVE_AROUND_S
        minutes, run = max(train_s, 0) / 60, ["train.global_batch=256", "train.steps=1000000", "train.log_every=100",
                                              "train.ckpt_every=1000000", "data.eval_inputs=0", "data.eval_views=8"]
        timeout, min_s = train_s + 30, 20 + CURVE_AROUND_S  # a curve shorter than 20 s says little
    return [Step("pretrain", ctx.m("stages.pretrain", "--config", "configs/arc1_small_cpu.yaml", "--max-minutes",
                                   f"{minutes:.2f}", "--set", f"run_dir={w / 'pretrain'}", f"data.arc_root={ctx.arc}",
                                   "data.sources=[arc:training,arc:evaluation#demos]", *run, "train.eval_every=0",
                                   "train.progress=false", *ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT),
                 timeout, min_s=min_s),
            Step("heldout", ctx.m("bench.gpu_steps", "heldout", "--run", w / "pretrain", "--device", ctx.device), 60,
                 ("pretrain",), 10)]


def demo_steps(ctx: Ctx) -> list[Step]:
    """The demo flow on this device: pretrain (its last held-out evaluation is the demo score), TTT on tasks
    held out of pretraining, predict, validate, score."""
    w, q = ctx.work / "demo", ctx.quick
    sets = [*ctx.compute(), *OFFICIAL_TRAIN, *OFFICIAL_PREDICT, "train.progress=false"]
    views = ["--device", ctx.device, "--augs", 8, "--no-translate", "--no-crop", "--no-progress"]
    steps_pre, steps_ttt = (20, 10) if q else (200, 100)
    return [
        Step("demo_data", ctx.m("stages.data", "export", DEMO, "--out", w / "demo"), 30, min_s=5),
        Step("held_data", ctx.m("stages.data", "export", HELD, "--out", w / "held"), 30, min_s=5),
        Step("pretrain", ctx.m("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
                               f"run_dir={w / 'pretrain'}", f"train.steps={steps_pre}", f"train.eval_every={steps_pre}",
                               f"train.ckpt_every={steps_pre}", f"data.eval_inputs={16 if q else 0}", *sets), 120,
             ("demo_data",), 30),
        Step("ttt", ctx.m("stages.ttt", "--checkpoint", w / "pretrain", "--challenges", w / "held_challenges.json",
                          "--out", w / "ttt", "--config", "configs/demo_ttt.yaml", "--set", f"train.steps={steps_ttt}",
                          f"train.eval_every={steps_ttt}", f"train.ckpt_every={steps_ttt}", *sets), 90,
             ("pretrain", "held_data"), 20),
        Step("predict", ctx.m("stages.predict", "--checkpoint", w / "ttt", "--challenges", w / "held_challenges.json",
                              "--out", w / "held_submission.json", *views), 60, ("ttt",), 15),
        Step("validate", ctx.m("stages.validate", "--challenges", w / "held_challenges.json", "--submission",
                               w / "held_submission.json"), 30, ("predict",), 5),
        Step("score", ctx.m("stages.score", "--solutions", w / "held_solutions.json", "--submission",
                            w / "held_submission.json"), 30, ("predict",), 5),
    ]


STEPS = {"env": env_steps, "throughput": throughput_steps, "sync": lambda ctx: [], "e2e": e2e_steps,
         "curve": curve_steps, "demo": demo_steps}


# -- running a step ---------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """The driver was sent a signal (a device call's time limit): `row` is the step it stopped, if any."""

    def __init__(self, signum: int, row: dict | None = None, part: dict | None = None):
        super().__init__(f"signal {signum}")
        self.signum, self.row, self.part = signum, row, part


def _on_signal(signum, frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the files get written whatever comes next
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


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


def _why(stderr: str) -> str:
    """The line of a failed step's stderr that says why: the last exception or `error:` line (torchrun ends
    with its own exception and a framed report after its worker's), else the last line that is not a frame."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip(" =-\t")]
    said = [ln for ln in lines if re.match(r"^([\w.]*(Error|Exception|Interrupt)\b.*|error: .*)", ln)
            and "ChildFailedError" not in ln]  # torchrun's own, after its worker's
    return (said or lines or ["no stderr"])[-1]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): torchrun starts its workers in sessions of their own, which the
    step's process group does not reach."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal_all(groups: set[int], pids: list[int], sig: int) -> None:
    for g in groups:
        try:
            os.killpg(g, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End the step and everything it started, in its process group or in sessions of their own: TERM, then KILL
    after `grace_s`."""
    kids = _descendants(proc.pid)
    groups = {proc.pid}
    for k in kids:
        try:
            groups.add(os.getpgid(k))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never the driver's own
    _signal_all(groups, kids, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    kids += _descendants(proc.pid)
    _signal_all(groups, kids, signal.SIGKILL)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(50):  # the next step starts once they are gone (their GPU memory with them)
        if not any(_alive(k) for k in kids):
            break
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """A process that still runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:4]
    except (OSError, IndexError):
        return False


def run_step(step: Step, logs: Path, left: float, env: dict, done: dict, cuda: bool) -> dict:
    """Run one step in its own process group with its time limit, at most `left` (its part's time); never
    raises but Interrupted (with the stopped step's row)."""
    row = {"name": step.name, "cmd": " ".join(step.cmd), "status": "skipped", "reason": None, "rc": None,
           "seconds": 0.0, "timeout_s": None, "result": None, "for_time": False}
    missing = [n for n in step.needs if done.get(n, {}).get("status") != "ok"]
    if missing:
        row["reason"] = "needs " + ", ".join(f"{n} ({done[n]['status'] if n in done else 'not run'})"
                                             for n in missing)
        row["for_time"] = any(done.get(n, {}).get("for_time") for n in missing)
        return row
    if step.cuda_only and not cuda:
        row["reason"] = "no CUDA"
        return row
    if left < step.min_s:
        row.update(reason=f"out of time: {max(left, 0):.0f} s left of its part's time, it needs {step.min_s:.0f} s",
                   for_time=True)
        return row
    timeout = min(step.timeout_s, left)
    out_path, err_path = logs / f"{step.name}.out", logs / f"{step.name}.err"
    t0, rc = time.time(), None
    with out_path.open("w") as out, err_path.open("w") as err:
        try:
            proc = subprocess.Popen(step.cmd, cwd=ROOT, stdout=out, stderr=err, env=env, process_group=0)
        except OSError as e:
            row.update(status="failed", reason=f"cannot start: {e}")
            return row
        try:
            try:
                rc = proc.wait(timeout)
                _signal_all({proc.pid}, [], signal.SIGKILL)  # what it left behind (compile workers) lets the GPU go
            except subprocess.TimeoutExpired:
                _stop(proc)
        except Interrupted as e:  # signals are ignored from here on: this _stop completes
            _stop(proc, grace_s=3)
            _finish(row, step, t0, timeout, None, out_path, err_path)
            row.update(status="failed", reason=f"interrupted: the driver got signal {e.signum}", for_time=True)
            raise Interrupted(e.signum, row) from None
    return _finish(row, step, t0, timeout, rc, out_path, err_path)


def _finish(row: dict, step: Step, t0: float, timeout: float, rc, out_path: Path, err_path: Path) -> dict:
    row["seconds"], row["timeout_s"], row["rc"] = time.time() - t0, timeout, rc
    stdout = out_path.read_text(errors="replace")
    row["result"] = _result(stdout)
    r = row["result"] if isinstance(row["result"], dict) else {}
    if rc is None and timeout < step.timeout_s:
        row.update(status="clipped", for_time=True,
                   reason=f"clipped_by_budget: killed after {timeout:.0f} s, where its part's time ran out (its own "
                          f"limit {step.timeout_s:.0f} s)")
    elif rc is None:
        row.update(status="failed", reason=f"timed out after {timeout:.0f} s (killed)")
    elif rc != 0:
        row.update(status="failed", reason=f"exit {rc}: {r.get('error') or _why(_tail(err_path, 20000))}"[:300])
    else:
        row.update(status=r.get("status", "ok") if r.get("status") in ("ok", "failed", "skipped") else "ok",
                   reason=r.get("reason") or r.get("error"))
    keep = 600 if row["status"] == "ok" else 3000
    row["stdout_tail"], row["stderr_tail"] = stdout[-keep // 3:], _tail(err_path, keep)
    return row


# -- figures ------------------------------------------------------------------------------------------------------
def _res(steps: list[dict], name: str) -> dict:
    r = next((s["result"] for s in steps if s["name"] == name and s["status"] in ("ok", "skipped")), None)
    return r if isinstance(r, dict) else {}


def _ratio(x, anchor, ctx: Ctx):
    """x against an H100 anchor: only on CUDA and at the ARC config (not --quick)."""
    return x / anchor if ctx.cuda and not ctx.quick and isinstance(x, (int, float)) and anchor else None


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


def _score(steps: list[dict], name: str) -> dict:
    """stages.score's result, with its per-task rows (task, tests, correct, score, hit)."""
    r = _res(steps, name)
    return {k: r.get(k) for k in ("score", "tasks", "solved_tasks", "correct_inputs", "test_inputs", "per_task")}


def env_figures(ctx: Ctx, steps: list[dict]) -> dict:
    probe, env = _res(steps, "probe"), _res(steps, "env")
    out = {**probe, **env, "compile": _res(steps, "compile") or None, "nccl_one_rank": _res(steps, "nccl") or None}
    out.pop("step", None)
    return out


def throughput_figures(ctx: Ctx, steps: list[dict]) -> dict:
    full, crop, infer = (_res(steps, n) for n in ("train_full", "train_crop", "infer"))
    keys = ("samples_per_s", "tokens_per_s", "mean_tokens", "tflops_per_s", "mfu", "ms_per_step", "peak_mem_gb",
            "warmup_s")
    out = {"gpu": ctx.gpu or "cpu", "anchors": {**ANCHORS, "measured_on": "one H100, official TRM"},
           "train_full": {k: full.get(k) for k in keys}, "train_crop": {k: crop.get(k) for k in keys},
           "infer": {k: infer.get(k) for k in ("puzzles_per_s_fixed", "puzzles_per_s_adaptive", "mean_steps_fixed",
                                               "mean_steps_adaptive", "n_sup", "batch", "views", "random_init")}}
    out["train_full"]["vs_anchor_samples"] = _ratio(full.get("samples_per_s"), ANCHORS["train_samples_per_s"], ctx)
    if not ctx.quick and full.get("anchor_mfu"):  # the anchor's MFU in our FLOP count
        out["anchors"]["train_mfu"] = full["anchor_mfu"]
        out["train_full"]["vs_anchor_mfu"] = _ratio(full.get("mfu"), full["anchor_mfu"], ctx)
    out["infer"]["vs_anchor"] = _ratio(infer.get("puzzles_per_s_fixed"), ANCHORS["infer_puzzles_per_s"], ctx)
    if infer.get("random_init") and infer.get("mean_steps_adaptive") is not None:
        # halting bias -5: a random-init model runs every view N_sup steps, so adaptive times the fixed loop
        out["infer"]["adaptive_halts_early"] = infer["mean_steps_adaptive"] < infer.get("n_sup", 0)
        out["infer"]["adaptive_note"] = "random init: never halts early, adaptive = fixed steps"
    if full.get("samples_per_s") and crop.get("samples_per_s"):
        out["train_crop"]["samples_vs_full"] = crop["samples_per_s"] / full["samples_per_s"]
    if full.get("mfu") and crop.get("mfu"):  # the 4.4 h crop plan assumes 1.0
        out["train_crop"]["mfu_vs_full"] = crop["mfu"] / full["mfu"]
    if not ctx.cuda or ctx.quick:
        out["anchors"]["note"] = "ratios to the H100 anchors only on CUDA at the ARC config (not --quick)"
    return out


def sync_part(ctx: Ctx, throughput: dict | None) -> dict:
    """The host-sync checks counted inside throughput's train_full and infer processes (bench/syncs.py)."""
    part = {"part": "sync", "status": "skipped", "reason": None, "seconds": 0.0, "device": ctx.device,
            "gpu": ctx.gpu, "figures": {}, "steps": []}
    steps = (throughput or {}).get("steps", [])
    checks, missing = {}, []
    for name in ("train_full", "infer"):
        row = next((s for s in steps if s["name"] == name), None)
        found = (row or {}).get("result") or {}
        if row is None or row["status"] != "ok" or not isinstance(found.get("syncs"), dict):
            missing.append(f"{name} ({row['status'] if row else 'not run'})")
            continue
        checks.update(found["syncs"])
    part["figures"] = {"checks": checks, "counted_in": "throughput: train_full, infer"}
    recompiled = [k for k, c in checks.items() if c.get("recompiles")]
    synced = [k for k, c in checks.items() if c.get("expected") == 0 and c.get("syncs")]
    if recompiled:
        part.update(status="failed", reason="recompiled inside a counted block (its syncs are the compiler's): " +
                    ", ".join(f"{k} {checks[k]['recompiles']} frames" for k in recompiled))
    elif synced:
        part.update(status="failed", reason="host syncs inside a compiled step: " + ", ".join(
            f"{k} {checks[k]['syncs']} at {' '.join(checks[k]['where'])}" for k in synced))
    elif missing:
        short = any(s.get("for_time") for s in steps if s["name"] in ("train_full", "infer"))
        part.update(status="clipped" if short else "failed", reason="not counted: needs " + ", ".join(missing))
    elif not ctx.cuda:
        part["reason"] = "no CUDA: the counted steps ran on CPU, sync counts need a GPU"
    else:
        part["status"] = "ok"
    return part


def e2e_figures(ctx: Ctx, steps: list[dict]) -> dict:
    w = ctx.work / "e2e"
    status = {s["name"]: s["status"] for s in steps}
    plan_path = w / "submit" / "submission.json.plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    planned, actual = plan.get("plan", {}).get("seconds", {}), plan.get("actual_seconds", {})
    summary = _res(steps, "submit") or None
    return {"valid": status.get("validate_submit") == "ok", "score": _score(steps, "score_submit"),
            "summary": summary, "budget_s": (summary or {}).get("budget_s"), "plan": plan.get("plan"),
            "calibration": plan.get("calibration"), "planned_s": planned, "actual_s": actual,
            "actual_over_planned": {k: actual[k] / planned[k] for k in ("ttt", "predict", "write")
                                    if actual.get(k) is not None and planned.get(k)}}


def curve_figures(ctx: Ctx, steps: list[dict]) -> dict:
    rows = _metrics(ctx.work / "curve" / "pretrain" / "metrics.jsonl")
    train = [r for r in rows if "train/loss" in r]
    every = max(1, -(-len(train) // 20))  # at most ~20 points
    points = [[r["step"], r["train/loss"], r.get("train/accuracy"), r.get("train/exact_accuracy")]
              for r in train[::every] + train[-1:]]
    held = _res(steps, "heldout")
    return {"final": _train_summary(ctx.work / "curve" / "pretrain", "train"),
            "curve": {"columns": ["step", "loss", "token_accuracy", "exact_accuracy"], "points": points},
            "heldout": {k: held.get(k) for k in ("pass@1", "pass@2", "token_accuracy", "inputs", "views",
                                                   "mean_steps")}}


def demo_figures(ctx: Ctx, steps: list[dict]) -> dict:
    w = ctx.work / "demo"
    pre = _train_summary(w / "pretrain", "train")
    return {"pretrain": pre, "demo_pass@2": (pre.get("eval") or {}).get("pass@2"),
            "ttt": _train_summary(w / "ttt", "ttt"), "valid": any(s["name"] == "validate" and s["status"] == "ok"
                                                                  for s in steps),
            "held_score": _score(steps, "score")}


FIGURES = {"env": env_figures, "throughput": throughput_figures, "e2e": e2e_figures, "curve": curve_figures,
           "demo": demo_figures}


# -- the summary ----------------------------------------------------------------------------------------------------
def _f(x, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def headline(name: str, fig: dict) -> str:
    """One line of what a part found (the figures' JSON has the rest)."""
    if name == "env":
        comp = fig.get("compile") or {}
        cuda = (f"{fig['gpu']} ({fig['gpu_memory_gb']:.0f} GiB), CUDA {fig.get('cuda_build')}, bf16 {fig.get('bf16')}, "
                f"compile {comp.get('status')} ({_f(comp.get('seconds'))} s), NCCL "
                f"{(fig.get('nccl_one_rank') or {}).get('status')}") if fig.get("gpu") else "no CUDA"
        if "modules" not in fig:  # --parts without env: the probe alone
            return f"{cuda}, torch {fig.get('torch')} (the CUDA probe only)"
        return (f"{cuda}, torch {fig.get('torch')}, matmul {_f(fig.get('matmul_tflops'), '.1f')} TFLOP/s; missing: "
                f"{' '.join(fig.get('missing') or []) or 'none'}")
    if name == "throughput":
        full, crop, inf = fig["train_full"], fig["train_crop"], fig["infer"]
        vs = lambda r, a: "" if r is None else f" = x{r:.2f} the anchor {a}"  # noqa: E731
        mfu = lambda d, rest: "" if d.get("mfu") is None else f", MFU {100 * d['mfu']:.1f}%{rest}"  # noqa: E731
        kept = f" (x{_f(crop.get('mfu_vs_full'), '.2f')} the full canvas's)"
        anchor_mfu = f"{_f(100 * (fig['anchors'].get('train_mfu') or 0), '.1f')}% in our FLOP count"
        halts = " (random init: never halts early)" if inf.get("adaptive_halts_early") is False else ""
        return (f"on {fig['gpu']}: train {_f(full['samples_per_s'])} samples/s{vs(full['vs_anchor_samples'], 887)}"
                f"{mfu(full, vs(full.get('vs_anchor_mfu'), anchor_mfu))}; crop {_f(crop['samples_per_s'])} samples/s "
                f"on {_f(crop['mean_tokens'])} of {_f(full['mean_tokens'])} cells{mfu(crop, kept)}; infer "
                f"{_f(inf['puzzles_per_s_fixed'])} puzzles/s at {_f(inf['mean_steps_fixed'])} fixed steps"
                f"{vs(inf['vs_anchor'], 95)}, {_f(inf['puzzles_per_s_adaptive'])} adaptive at "
                f"{_f(inf['mean_steps_adaptive'], '.1f')} mean steps{halts}")
    if name == "sync":
        checks = fig.get("checks") or {}
        return ", ".join(f"{k} {_f(c.get('per_call'), '.2f')}/call" for k, c in checks.items()) + " host syncs" \
            if checks else ""
    if name == "e2e":
        ratio = ", ".join(f"{k} x{v:.2f}" for k, v in fig["actual_over_planned"].items())
        summ = fig.get("summary") or {}
        return (f"submit valid {fig['valid']}, score {_f(fig['score']['score'], '.3f')}, "
                f"{_f((summ.get('seconds') or {}).get('total'))} of {_f(fig['budget_s'])} s, TTT "
                f"{summ.get('ttt_steps')} steps, {summ.get('views')} views, actual/planned: {ratio or '-'}")
    if name == "curve":
        fin, held = fig["final"], fig["heldout"]
        return (f"{fin.get('step')} steps: loss {_f(fin.get('loss'), '.3f')}, token acc "
                f"{_f(fin.get('accuracy'), '.3f')}, exact {_f(fin.get('exact_accuracy'), '.3f')}; held-out pass@2 "
                f"{_f(held.get('pass@2'), '.3f')}, token acc {_f(held.get('token_accuracy'), '.3f')} on "
                f"{held.get('inputs')} inputs")
    if name == "demo":
        return (f"pretrain {fig['pretrain'].get('step')} steps, held-out pass@2 {_f(fig['demo_pass@2'], '.3f')}; "
                f"TTT {fig['ttt'].get('step')} steps, held-out tasks scored {_f(fig['held_score']['score'], '.3f')}, "
                f"valid {fig['valid']}")
    return ""


def summary_lines(parts: dict, mode: str, device: str, total_s: float) -> list[str]:
    lines = [f"GPU check ({mode}, {device}), {total_s:.0f} s",
             f"{'part':<11}{'status':<9}{'seconds':>8}  what it found"]
    for name, p in parts.items():
        try:
            head = headline(name, p["figures"]) if p["status"] in ("ok", "failed", "clipped") else ""
        except (KeyError, TypeError, ValueError) as e:  # a summary must never cost the JSON files
            head = f"(no headline: {type(e).__name__} {e})"
        lines.append(f"{name:<11}{p['status']:<9}{p['seconds']:>8.1f}  {head or p.get('reason') or ''}")
        if head and p["status"] != "ok" and p.get("reason"):
            lines.append(f"{'':<28}{p['reason']}"[:400])
        for s in p["steps"]:
            why = f"  {s['reason']}" if s.get("reason") and s["status"] != "ok" else ""
            lines.append(f"  {s['name']:<16}{s['status']:<9}{s['seconds']:>6.1f}{why}"[:400])
    return lines


# -- the run --------------------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    """Atomic: a reader (or a device call cut short) sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write(path, json.dumps(obj, indent=1, default=str))


def _conclude(part: dict) -> None:
    rows = part["steps"]
    failed = [s for s in rows if s["status"] == "failed"]
    short = [s for s in rows if s.get("for_time")]
    if failed:
        part["status"], part["reason"] = "failed", "; ".join(f"{s['name']}: {s['reason']}" for s in failed)[:600]
    elif short:
        part["status"], part["reason"] = "clipped", "; ".join(f"{s['name']}: {s['reason']}" for s in short)[:600]
    elif rows and all(s["status"] == "skipped" for s in rows):
        part["reason"] = rows[0]["reason"]
    else:
        part["status"] = "ok"
        skipped = [s for s in rows if s["status"] == "skipped"]
        part["reason"] = "; ".join(f"{s['name']} skipped: {s['reason']}" for s in skipped) or None


def run_part(name: str, ctx: Ctx, out: Path, env: dict, limit_s: float, done_rows: list[dict] = ()) -> dict:
    """The part's steps in order, each within what is left of the part's `limit_s` seconds."""
    part = {"part": name, "status": "skipped", "reason": None, "seconds": 0.0, "limit_s": limit_s,
            "device": ctx.device, "gpu": ctx.gpu, "figures": {}, "steps": list(done_rows)}
    folder = ctx.work / name
    shutil.rmtree(folder, ignore_errors=True)  # a part always starts from nothing (runs would resume)
    logs = ctx.work / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    end, done = time.time() + limit_s, {r["name"]: r for r in done_rows}
    t0 = time.time() - sum(r["seconds"] for r in done_rows)  # the part's seconds include the steps run before
    ctx.part_s = limit_s
    stopped = None
    try:
        for step in STEPS[name](ctx):
            print(f"[{name}] {step.name} ...", flush=True)
            try:
                row = run_step(step, logs, end - time.time(), env, done, ctx.cuda)
            except Interrupted as e:
                row, stopped = e.row, e
            done[step.name] = row
            part["steps"].append(row)
            print(f"[{name}] {step.name}: {row['status']} in {row['seconds']:.1f} s" +
                  (f" ({row['reason']})" if row["reason"] else ""), flush=True)
            part["seconds"] = time.time() - t0
            _write_json(out / f"{name}.json", part)  # after every step: a run killed from outside keeps what it had
            if stopped:
                break
    except Interrupted as e:  # between steps
        stopped = e
    _conclude(part)
    if stopped:
        part.update(status="failed", reason=f"interrupted by signal {stopped.signum}; " + (part["reason"] or ""))
    try:
        part["figures"] = FIGURES[name](ctx, part["steps"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, json.JSONDecodeError) as e:
        part["figures"] = {"error": f"{type(e).__name__}: {e}"}
    part["seconds"] = time.time() - t0
    _write_json(out / f"{name}.json", part)
    if stopped:
        raise Interrupted(stopped.signum, part=part)
    return part


def part_limits(caps: dict[str, float], budget: float) -> dict[str, float]:
    """Each part's cap, scaled down together when the budget is smaller than their sum."""
    total = sum(caps.values())
    scale = min(1.0, budget / total) if total else 1.0
    return {n: c * scale for n, c in caps.items()}


def prepare(src: Path, data: Path) -> int:
    """Copy the public ARC JSON files beside the code, for a machine that gets only the repository."""
    files = sorted(src.glob("arc-agi_*.json"))
    if not files:
        print(f"error: no arc-agi_*.json files in {src}", file=sys.stderr)
        return 2
    dest = data / "arc"
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        tmp = dest / (f.name + ".tmp")
        shutil.copyfile(f, tmp)
        os.replace(tmp, dest / f.name)
    mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"copied {len(files)} files ({mb:.1f} MiB) from {src} to {dest}")
    return 0


def refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="copy --arc-src into DATA/arc and stop")
    p.add_argument("--arc-src", default="../shared/arc", help="--prepare: where the ARC JSON files are")
    p.add_argument("--data", default=".gpu_data", help="the git-ignored folder the device run reads (carry it)")
    p.add_argument("--quick", action="store_true", help="every part at toy size (minutes on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="the full run needs CUDA; --quick runs on either (auto: CUDA when the probe finds it)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts (the CUDA probe always runs; "
                                                            "sync runs throughput, where it is counted)")
    p.add_argument("--out", default="runs/gpu_check/out", help="PART.json, gpu_check.json, summary.txt")
    p.add_argument("--work", default="runs/gpu_check/work", help="runs and logs of the steps")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock seconds for the whole check (default: the sum of every part's cap, 480 full); "
                        "on a device machine's second call: its budget_left_s less 90")
    return p.parse_args(argv)


@dataclass
class Plan:
    """What one check runs: its parts in order, each with its time limit, inside one wall-clock budget."""
    mode: str
    order: list[str]
    arc: Path
    out: Path
    work: Path
    budget: float
    limits: dict[str, float]
    start: float

    @property
    def deadline(self) -> float:
        return self.start + self.budget


def plan_check(args: argparse.Namespace, data: Path) -> Plan | int:
    """The parts, the ARC data and the folders the arguments ask for (created), or the exit code of a refusal."""
    chosen = {x for x in args.parts.split(",") if x}
    if not chosen <= set(PARTS):
        return refuse(f"--parts {args.parts}: expected names from {', '.join(PARTS)}")
    if not args.quick and args.device == "cpu":
        return refuse("the full check runs the ARC config and needs CUDA; --quick --device cpu runs it at toy size")
    order = [x for x in PARTS if x in chosen | ({"throughput"} if "sync" in chosen else set())]
    arc = data / "arc" if (data / "arc").is_dir() else (ROOT / args.arc_src).resolve()
    if not (arc / "arc-agi_evaluation2_challenges.json").exists():
        return refuse(f"no ARC data at {data / 'arc'} or {arc}: run `python3 -m bench.gpu_check --prepare` (or "
                      f"`make gpu-data`) where ../shared/arc exists, and carry {args.data}")
    out, work = (Path(x) if Path(x).is_absolute() else ROOT / x for x in (args.out, args.work))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    start = time.time()
    budget = args.budget_s or sum(CAPS[mode].values())
    limits = part_limits({n: CAPS[mode][n] for n in order}, budget)
    return Plan(mode, order, arc, out, work, budget, limits, start)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = (ROOT / args.data).resolve() if not Path(args.data).is_absolute() else Path(args.data)
    if args.prepare:
        return prepare(Path(args.arc_src) if Path(args.arc_src).is_absolute() else ROOT / args.arc_src, data)
    plan = plan_check(args, data)
    if not isinstance(plan, Plan):
        return plan
    ctx = Ctx(py=sys.executable, quick=args.quick, device="cpu", arc=plan.arc, work=plan.work)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # several small processes on a few cores: no spin-waiting
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    print(f"GPU check: {plan.mode}, parts {','.join(plan.order)}, budget {plan.budget:.0f} s ("
          f"{', '.join(f'{n} {plan.limits[n]:.0f}' for n in plan.order)}), ARC data {plan.arc}, "
          f"python {sys.executable}", flush=True)
    results: dict[str, dict] = {}
    signum = None
    try:
        probe = run_probe(ctx, plan.work, min(plan.budget, 60), env, results, plan.out)
        refusal = use_probe(ctx, probe, args, results, plan.out)
        if refusal is not None:
            return refusal
        run_parts(ctx, plan, env, results, probe)
    except Interrupted as e:
        signum = e.signum
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if e.part is not None:
            results[e.part["part"]] = e.part
    return report(results, plan, ctx, signum)


def use_probe(ctx: Ctx, probe: dict, args: argparse.Namespace, results: dict, out: Path) -> int | None:
    """Set the device of every later step from the probe; the exit code of a refusal where CUDA is needed and
    the probe found none, else None."""
    found = probe["result"] if probe["status"] == "ok" and isinstance(probe["result"], dict) else {}
    if not found.get("cuda_available") and (args.device == "cuda" or not args.quick):
        why = probe["reason"] if probe["status"] != "ok" else "torch.cuda.is_available() is False"
        need = "--device cuda" if args.device == "cuda" else "the full check (the ARC config)"
        results["env"].update(status="failed", reason=f"{need} needs CUDA: {why}")
        _write_json(out / "env.json", results["env"])
        return refuse(f"{need} needs CUDA, and the probe found none ({why}); {out / 'env.json'} has the probe"
                      + ("" if args.quick else "; --quick --device cpu runs every part at toy size"))
    ctx.device = "cuda" if found.get("cuda_available") and args.device != "cpu" else "cpu"
    ctx.gpu = found.get("gpu") if ctx.cuda else None
    return None


def run_parts(ctx: Ctx, plan: Plan, env: dict, results: dict, probe: dict) -> None:
    """Each part in turn within its time limit, each leaving the later parts their limits (into `results`)."""
    for i, name in enumerate(plan.order):
        left = max(0.0, plan.deadline - time.time() - sum(plan.limits[n] for n in plan.order[i + 1:]))
        if name == "sync":
            results[name] = sync_part(ctx, results.get("throughput"))
            _write_json(plan.out / "sync.json", results[name])
        else:
            results[name] = run_part(name, ctx, plan.out, env, left, [probe] if name == "env" else [])


def report(results: dict, plan: Plan, ctx: Ctx, signum: int | None) -> int:
    """summary.txt and gpu_check.json written, the summary printed; the exit code: 128 + a signal that stopped the
    check, 1 if a part failed, else 0."""
    total = time.time() - plan.start
    lines = summary_lines(results, plan.mode, ctx.gpu or ctx.device, total)
    if signum is not None:
        lines.append(f"stopped by signal {signum} after {total:.0f} s: the parts not listed did not run")
    rest = [n for n, r in results.items() if r["status"] == "clipped" or any(s.get("for_time") for s in r["steps"])]
    rest += [n for n in plan.order if n not in results]
    if rest:
        lines.append(f"parts cut short for time; on the device, call again at once with its budget_left_s less 90 s: "
                     f"bash scripts/gpu_check.sh --device {ctx.device} --parts {','.join(rest)} --budget-s SECONDS "
                     f"--out $OUT")
    _write(plan.out / "summary.txt", "\n".join(lines) + "\n")
    _write_json(plan.out / "gpu_check.json", {
        "mode": plan.mode, "device": ctx.device, "gpu": ctx.gpu, "seconds": total, "budget_s": plan.budget,
        "limits_s": plan.limits, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(plan.start)),
        "signal": signum, "parts": results, "summary": lines})
    print("\n".join(lines), flush=True)
    if signum is not None:
        return 128 + signum
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


def run_probe(ctx: Ctx, work: Path, limit_s: float, env: dict, results: dict, out: Path) -> dict:
    """The tiny CUDA probe, before anything else: the device of every later step is decided from it. Its row
    is env.json until the env part replaces it."""
    logs = work / "logs" / "env"
    logs.mkdir(parents=True, exist_ok=True)
    print("[env] probe ...", flush=True)
    results["env"] = {"part": "env", "status": "failed", "reason": "the CUDA probe did not finish", "seconds": 0.0,
                      "device": None, "gpu": None, "figures": {}, "steps": []}
    try:
        probe = run_step(probe_step(ctx), logs, limit_s, env, {}, False)
    except Interrupted as e:
        results["env"]["steps"] = [e.row]
        _write_json(out / "env.json", results["env"])
        raise
    print(f"[env] probe: {probe['status']} in {probe['seconds']:.1f} s", flush=True)
    results["env"].update(steps=[probe], seconds=probe["seconds"], figures=env_figures(ctx, [probe]))
    _conclude(results["env"])  # the probe alone, where --parts leaves env out
    _write_json(out / "env.json", results["env"])
    return probe


if __name__ == "__main__":
    sys.exit(main())
