"""The budgeted hidden-test flow behind `stages.submit`: calibrate -> plan -> TTT -> predict (views, vote)
-> write, inside a wall-clock budget, with a valid submission on disk at every moment.

Uses the TTT and predict code as they are (pipeline.ttt.run_ttt, pipeline.hidden.predict_challenges, the one
writer submission.format.build_submission); the budget's arithmetic is pipeline/budget.py's. The caller
(stages.submit) has already written the all-fallback submission before importing this module.

Improvements replace the submission atomically: fallback -> prediction by the TTT'd model (or, when TTT
failed before its first checkpoint or did not fit the budget, by the pretrained model). There is no
prediction pass with the pretrained model before TTT: hidden tasks are unseen, and without a trained
puzzle embedding TRM scores about zero on them (pipeline/ttt.py), so that time goes to TTT instead. A TTT
stopped by its deadline or failing midway leaves its latest complete checkpoint, and prediction uses it.

Under torchrun every rank runs this: TTT is one DDP run (batches sliced by rank from (seed, step), so the
result does not depend on the number of processes), prediction is sharded over the ranks and gathered, and
only rank 0 writes. Per-task TTT (`stages.ttt --per-task`) is not used here: the joint run is the recipe that
fits a 12 h Kaggle budget.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.budget import (Calibration, Plan, Policy, calibrate_predict, calibrate_ttt, chunk_inputs, deadlines,
                             free_memory, make_plan, slowest, views_that_fit)
from pipeline.checkpoint import CheckpointError, load_for_prediction, resolve_checkpoint
from pipeline.computation import describe
from pipeline.dataset import canvas_problem
from pipeline.hidden import MODEL_ERRORS, details_of, load_challenges, predict_challenges, summary_line
from pipeline.infer import model_batch
from pipeline.kaggle_input import count_inputs
from pipeline.metrics import setup_logging
from pipeline.runtime import Runtime, init_runtime, shutdown_runtime
from pipeline.tasks import DataError, write_json_atomic
from pipeline.train import Stop
from pipeline.ttt import run_ttt, ttt_config, ttt_departures
from submission.format import build_submission

log = logging.getLogger("submit")
TTT_ERRORS = (DataError, CheckpointError, *MODEL_ERRORS)


@dataclass
class SubmitJob:
    """One budgeted run, as stages.submit parsed it."""
    challenges: Path
    out: Path
    checkpoint: str
    budget_s: float
    started: float
    """time.time() when the process started: the budget counts from there."""
    work_dir: Path
    device: str = "auto"
    ttt_preset: str | list[str] | None = "configs/ttt_full.yaml"
    overrides: list[str] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    ttt_steps: int | None = None
    views: int | None = None
    progress: bool = False
    deterministic: bool = False
    seed: int = 0


def seed_everything(seed: int, deterministic: bool) -> None:
    """Python's, NumPy's and torch's generators (init_runtime seeds the last two again); with `deterministic`
    torch's deterministic kernels too (slower on GPU; CPU runs are reproducible without it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def ttt_folder(job: SubmitJob) -> Path:
    """The TTT run's folder, named after what it depends on, so that a rerun on the same inputs resumes it
    and a run on other inputs never does."""
    key = hashlib.sha256()
    key.update(job.challenges.read_bytes())
    key.update(str(resolve_checkpoint(job.checkpoint).resolve()).encode())
    key.update(json.dumps([job.ttt_preset, job.overrides, job.seed]).encode())
    return job.work_dir / f"ttt-{key.hexdigest()[:12]}"


def heartbeat(total: int, every_s: float):
    """A Stop condition that never stops and logs the TTT step every `every_s` seconds (progress bars are off
    in Kaggle logs; under torchrun rank 0 checks it at log steps only)."""
    t0 = last = time.time()

    def when(step: int) -> bool:
        nonlocal last
        now = time.time()
        if now - last >= every_s:
            last = now
            log.info("TTT step %d of %d, %.0fs", step, total, now - t0)
        return False

    return when


def run_submit(job: SubmitJob) -> int:
    seed_everything(job.seed, job.deterministic)
    rt = init_runtime(job.device, "auto", job.seed)
    try:
        setup_logging(None, rt.is_main)
        return _flow(job, rt)
    finally:
        shutdown_runtime()


def _flow(job: SubmitJob, rt: Runtime) -> int:
    seconds: dict[str, float] = {}
    raw, res = load_challenges(job.challenges)
    run_dir = ttt_folder(job)
    overrides = [*job.overrides, f"train.progress={str(job.progress).lower()}", f"seed={job.seed}"]
    cfg = ttt_config(job.checkpoint, job.ttt_preset, overrides, run_dir, sources=[str(job.challenges)])
    found = ttt_departures(cfg)
    if rt.is_main:
        log.info("%s", describe(found))
    policy = job.policy
    if not cfg.predict.adaptive_halting and policy.predict_steps_fraction < 1.0:
        log.warning("--steps-fraction %.2f ignored: every view runs all N_sup steps (predict.adaptive_halting is "
                    "off), so prediction is planned at all of them", policy.predict_steps_fraction)
        policy = dataclasses.replace(policy, predict_steps_fraction=1.0)
    job = dataclasses.replace(job, policy=policy)
    canvas = cfg.data.canvas
    fits = [t for t in res.tasks if canvas_problem(t, canvas) is None]
    n_inputs = sum(len(t.test_inputs) for t in fits)

    # -- calibration on this file and these devices ------------------------------------------------------------
    t0 = time.time()
    cal = Calibration(inputs_per_rank=math.ceil(n_inputs / rt.world_size),
                      batch=model_batch(cfg.predict, rt.device, cfg.model.total_len),
                      max_chunk_views=cfg.predict.chunk_views)
    try:
        cal.ttt_startup_s, cal.ttt_step_s, cal.ttt_save_s = calibrate_ttt(cfg, rt, res.tasks,
                                                                          job.work_dir / "calibration")
    except TTT_ERRORS as e:
        cal.ttt_error = str(e)
        log.error("TTT cannot run (%s): the pretrained model predicts", e)
        free_memory(rt)
    crop = [f"model.crop={str(cfg.model.crop).lower()}"]  # as the TTT run computes, also for the pretrained model
    if fits:
        loaded = load_for_prediction(job.checkpoint, rt.device, overrides=crop)
        try:
            cal.predict_startup_s, cal.view_s = calibrate_predict(loaded, fits, cfg.predict, rt)
        except MODEL_ERRORS as e:
            log.error("prediction calibration failed (%s): planning without it", e)
        del loaded
        free_memory(rt)
    cal = slowest(cal, rt)
    seconds["calibration"] = time.time() - t0
    log.info("calibration (%.1fs): TTT %.3fs/step (+%.1fs start-up, %.1fs per checkpoint), prediction %.2fms "
             "per view (+%.1fs start-up), %d test inputs per rank", seconds["calibration"], cal.ttt_step_s,
             cal.ttt_startup_s, cal.ttt_save_s, 1e3 * cal.view_s, cal.predict_startup_s, cal.inputs_per_rank)

    # -- plan ------------------------------------------------------------------------------------------------------
    spent = time.time() - job.started
    plan = make_plan(job.policy, cal, job.budget_s, spent, cfg.train.steps, cfg.train.ckpt_every, job.ttt_steps,
                     job.views)
    if not fits:
        plan = dataclasses.replace(plan, ttt_steps=0, views=0, why="no valid task fits the model's canvas")
    dl = deadlines(plan, job.started)
    if rt.is_main:
        s = plan.seconds
        log.info("plan: %d TTT steps, %d views per test input (%s); seconds: setup %.0f, TTT %.0f, predict %.0f, "
                 "write %.0f, margin %.0f of the %.0f s budget", plan.ttt_steps, plan.views, plan.why, s["setup"],
                 s["ttt"], s["predict"], s["write"], s["margin"], job.budget_s)
        _write_plan(job, plan, cal, seconds, {}, found)

    # -- TTT (stopped at a step boundary at its deadline; the latest checkpoint is the best so far) --------------
    model_path, ttt_info = job.checkpoint, {"steps": 0, "stopped": None}
    if plan.ttt_steps > 0:
        t0 = time.time()
        # A planned run shorter than the recipe keeps its warm-up to a quarter of it, so it reaches the peak lr.
        train = dataclasses.replace(cfg.train, steps=plan.ttt_steps,
                                    lr_warmup=min(cfg.train.lr_warmup, plan.ttt_steps // 4),
                                    ckpt_every=min(cfg.train.ckpt_every, plan.ttt_steps))
        try:
            stop = Stop(deadline=dl.ttt, when=heartbeat(plan.ttt_steps, max(30.0, job.budget_s / 100)))
            result = run_ttt(dataclasses.replace(cfg, train=train), rt, res.tasks, stop=stop)
            ttt_info = {"steps": result.step, "stopped": result.stopped}
        except CheckpointError as e:  # the folder holds another run (pipeline.train): never predict with it
            log.error("TTT cannot use %s (%s): the pretrained model predicts", run_dir, e)
            ttt_info["error"], run_dir = str(e), None
        except Exception as e:  # whatever else went wrong, what TTT saved (or the pretrained model) still predicts
            log.exception("TTT failed (%s): prediction uses its latest checkpoint, if any, else the pretrained model",
                          e)
            ttt_info["error"] = str(e)
        try:
            model_path = str(resolve_checkpoint(run_dir)) if run_dir else model_path
        except CheckpointError:
            log.error("TTT left no checkpoint: the pretrained model predicts")
        seconds["ttt"] = time.time() - t0
        log.info("TTT: %s steps (%s) in %.0fs", ttt_info["steps"], ttt_info["stopped"], seconds["ttt"])

    # -- predict and vote (views chosen again from the time actually left) ---------------------------------------
    hidden, views = None, 0
    if plan.views > 0 and dl.end - dl.write_s - time.time() <= 0:
        log.error("no time left for prediction: the fallback submission stays")
    elif plan.views > 0:
        t0 = time.time()
        free_memory(rt)  # the TTT run's model and optimiser
        views = job.views or max(1, views_that_fit(cal, dl.predict_seconds_left(), job.policy,
                                                   job.policy.views_max, job.budget_s))
        per_chunk = chunk_inputs(cal, views, job.policy, job.budget_s)
        pcfg = dataclasses.replace(cfg.predict, augs=views, chunk_views=per_chunk * views)
        chunk_s = -(-per_chunk * views // max(cal.batch, 1)) * max(cal.batch, 1) * cal.view_s
        log.info("predict with %s: %d views per test input, %d test inputs per chunk (~%.1fs)", model_path, views,
                 per_chunk, chunk_s)
        try:
            # the crop calibrated, also when the pretrained model predicts because TTT failed
            loaded = load_for_prediction(model_path, rt.device, overrides=crop)
            hidden = predict_challenges(loaded, res, pcfg, rt, dl.predict_deadline(chunk_s),
                                        show_progress=job.progress)
        except Exception as e:  # model errors are handled task by task inside; this is anything else
            log.exception("prediction failed (%s): the fallback submission stays", e)
        seconds["predict"] = time.time() - t0

    # -- write (rank 0) --------------------------------------------------------------------------------------------
    if rt.is_main:
        t0 = time.time()
        preds = {(r.task_id, r.test_index): r.attempts for r in hidden.results} if hidden else {}
        sub, _ = build_submission(raw, preds)
        write_json_atomic(job.out, sub)
        if hidden is not None:
            write_json_atomic(str(job.out) + ".details.json", details_of(hidden.results))
        seconds["write"] = time.time() - t0
        seconds["total"] = time.time() - job.started
        tasks, inputs = count_inputs(raw)
        predicted = hidden.predicted() if hidden else 0
        line = summary_line(sub, hidden) if hidden else f"0 of {inputs} test inputs predicted by the model"
        summary = {"submission": str(job.out), "tasks": tasks, "test_inputs": inputs, "predicted": predicted,
                   "ttt_steps": ttt_info["steps"], "ttt_stopped": ttt_info["stopped"], "views": views,
                   "model": str(model_path), "seconds": {k: round(v, 1) for k, v in seconds.items()},
                   "budget_s": job.budget_s}
        _write_plan(job, plan, cal, seconds, summary, found)
        log.info("seconds per stage: %s (budget %.0f)", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
                 job.budget_s)
        log.info("%s", line)
        print("summary: " + json.dumps(summary), flush=True)
    return 0


def _write_plan(job: SubmitJob, plan: Plan, cal: Calibration, actual: dict, summary: dict,
                found: list[str]) -> None:
    write_json_atomic(str(job.out) + ".plan.json", {
        "departures": found, "policy": dataclasses.asdict(job.policy), "calibration": dataclasses.asdict(cal),
        "plan": dataclasses.asdict(plan), "actual_seconds": actual, "summary": summary})
