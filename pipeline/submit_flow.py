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

A rank that fails under torchrun never leaves the others waiting: wherever it fails (calibration, TTT with a
collective at every step, or anywhere else: the top level catches it) it publishes why and takes the process
group down (pipeline.runtime.break_group), every other rank's next collective fails (gloo: at once; NCCL: its
watch_for_failures thread aborts its group within a second, else the group's timeout, shorter during TTT),
the ranks other than 0 stop (exit 0, so that torchrun lets rank 0 finish) and rank 0 predicts alone with the
latest complete checkpoint; in prediction the failing rank's inputs fall back (pipeline.hidden). The summary
names each failed rank and why (`failed_ranks`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.budget import (Calibration, Plan, Policy, calibrate_predict, calibrate_ttt, chunk_inputs,
                             collective_timeout_s, deadlines, free_memory, make_plan, margin_for, slowest,
                             views_that_fit)
from pipeline.checkpoint import CheckpointError, load_for_prediction, resolve_checkpoint
from pipeline.computation import describe
from pipeline.dataset import canvas_problem
from pipeline.hidden import MODEL_ERRORS, details_of, load_challenges, predict_challenges, summary_line
from pipeline.infer import model_batch
from pipeline.kaggle_input import count_inputs
from pipeline.metrics import setup_logging
from pipeline.runtime import (Runtime, break_group, init_runtime, set_collective_timeout, shutdown_runtime,
                              watch_for_failures)
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
    rt = init_runtime(job.device, "auto", job.seed, timeout_s=collective_timeout_s(job.budget_s))
    # NCCL only: under gloo a failing rank's closed connections already fail the others' collectives at once
    watching = watch_for_failures(rt) if rt.distributed and rt.device.type == "cuda" else None
    try:
        setup_logging(None, rt.is_main)
        return _flow(job, rt)
    finally:
        if watching:
            watching.set()
        shutdown_runtime()


class GroupBroken(Exception):
    """This rank's part of the flow ends here: the process group broke and rank 0 finishes alone."""


def _break(rt: Runtime, stage: str, e: Exception, failed: dict[int, str]) -> Runtime:
    """After `e` in a collective stage under torchrun: take the group down (pipeline.runtime.break_group),
    record every rank's failure in `failed`; rank 0 goes on as a single process, the others stop."""
    failed.update(break_group(rt, f"{stage}: {type(e).__name__}: {e}"))
    if not rt.is_main:
        log.error("rank %d stops: the process group broke (%s); rank 0 finishes alone", rt.rank, failed)
        raise GroupBroken
    log.error("the process group broke (%s): rank 0 goes on alone, without TTT after this point", failed)
    return dataclasses.replace(rt, world_size=1)


def _flow(job: SubmitJob, rt: Runtime) -> int:
    try:
        return _stages(job, rt)
    except GroupBroken:
        return 0  # rank 0 writes the submission; torchrun must not stop it for this rank's exit
    except Exception as e:  # outside the guarded stages (loading, planning, a bug): no rank may wait for this one
        if not rt.distributed:
            raise
        where = traceback.extract_tb(e.__traceback__)[-1].name
        break_group(rt, f"{where}: {type(e).__name__}: {e}")
        if rt.is_main:  # the fallback submission stays; the exit status says the run failed (2: bad input)
            log.error("rank 0 failed in %s: the process group is down", where)
            raise
        log.exception("rank %d failed in %s: the process group is down; rank 0 finishes alone", rt.rank, where)
        return 0


def _stages(job: SubmitJob, rt: Runtime) -> int:
    seconds: dict[str, float] = {}
    failed: dict[int, str] = {}
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
    except Exception as e:
        if not rt.distributed and not isinstance(e, TTT_ERRORS):
            raise
        cal.ttt_error = str(e)
        log.error("TTT cannot run (%s): the pretrained model predicts", e)
        free_memory(rt)
        if rt.distributed:  # a rank may have failed inside a collective: the group cannot go on
            rt = _break(rt, "calibration", e, failed)
            cal.inputs_per_rank = n_inputs
    crop = [f"model.crop={str(cfg.model.crop).lower()}"]  # as the TTT run computes, also for the pretrained model
    if fits:
        loaded = load_for_prediction(job.checkpoint, rt.device, overrides=crop)
        try:
            cal.predict_startup_s, cal.view_s = calibrate_predict(loaded, fits, cfg.predict, rt)
        except MODEL_ERRORS as e:
            log.error("prediction calibration failed (%s): planning without it", e)
        del loaded
        free_memory(rt)
    try:
        cal = slowest(cal, rt)
    except Exception as e:  # another rank failed and took the group down: plan with this rank's own timings
        rt = _break(rt, "calibration", e, failed)
        cal.inputs_per_rank = n_inputs
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
        if margin_for(plan) > job.policy.margin:
            log.warning("prediction takes %.0f%% of the budget: a calibration as optimistic as the 90th percentile "
                        "measured under load would cut inputs off; --margin %.2f covers it",
                        100 * s["predict"] / job.budget_s, margin_for(plan))
        _write_plan(job, plan, cal, seconds, {}, found)

    # -- TTT (stopped at a step boundary at its deadline; the latest checkpoint is the best so far) --------------
    model_path, ttt_info = job.checkpoint, {"steps": 0, "stopped": None}
    if plan.ttt_steps > 0:
        t0 = time.time()
        # A planned run shorter than the recipe keeps its warm-up to a quarter of it, so it reaches the peak lr.
        train = dataclasses.replace(cfg.train, steps=plan.ttt_steps,
                                    lr_warmup=min(cfg.train.lr_warmup, plan.ttt_steps // 4),
                                    ckpt_every=min(cfg.train.ckpt_every, plan.ttt_steps))
        # a collective every step: no rank legitimately waits longer than a start-up (compile) or a step and a save
        set_collective_timeout(max(60.0, 2 * max(cal.ttt_startup_s, cal.ttt_step_s + cal.ttt_save_s)))
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
            ttt_info.update(error=str(e), stopped="error")
            if rt.distributed:
                rt = _break(rt, "ttt", e, failed)
                cal = dataclasses.replace(cal, inputs_per_rank=n_inputs)
        finally:
            set_collective_timeout(collective_timeout_s(job.budget_s))
        try:
            if run_dir:
                model_path = str(resolve_checkpoint(run_dir))
                if ttt_info["stopped"] == "error":  # the steps the predicting checkpoint has
                    ttt_info["steps"] = json.loads((Path(model_path) / "meta.json").read_text())["step"]
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
        except Exception as e:
            log.exception("loading %s for prediction failed (%s): the fallback submission stays", model_path, e)
            if rt.distributed:  # the others' gather would wait for this rank
                rt = _break(rt, "predict", e, failed)
            loaded = None
        try:
            if loaded is not None:  # model errors are handled task by task inside, a failing rank at the gather
                hidden = predict_challenges(loaded, res, pcfg, rt, dl.predict_deadline(chunk_s),
                                            show_progress=job.progress)
                failed.update(hidden.failed_ranks)
        except Exception as e:  # anything else, in one process: what is on disk stays
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
                   "budget_s": job.budget_s, "failed_ranks": {str(r): why for r, why in sorted(failed.items())}}
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
