"""The budgeted hidden-test flow behind `stages.submit`, in phases: calibrate -> plan -> TTT -> predict -> write
(README, "Budgeted submission"), inside a wall-clock budget, with a valid submission on disk at every moment: the
caller wrote the all-fallback one before importing this module, and each improvement replaces it atomically.

Several checkpoints make an ensemble: each member runs these phases in turn (its own calibration, TTT run and
views) inside its share of the time left, by weight; after each member the pooled votes of those so far
(pipeline/prediction/ensemble.py) replace the submission. A member that cannot be opened or fails costs only its share.

Under torchrun every rank runs the flow: TTT is one DDP run, prediction is sharded and gathered, only rank 0
writes. A rank that fails anywhere (a collective phase, or outside one: the top level catches it) takes the process
group down (pipeline.runtime.break_group): the others' collectives fail (gloo: at once; NCCL: their
watch_for_failures threads abort their groups within a second, else the timeout, shorter during TTT), they stop,
and rank 0 finishes alone with the latest complete checkpoint (the summary's `failed_ranks` says why).
"""
from __future__ import annotations

import dataclasses
import glob
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
import torch.distributed as dist

from pipeline.submit.budget import (Calibration, Deadlines, Plan, Policy, chunk_inputs, collective_timeout_s, deadlines,
                             make_plan, margin_for, views_that_fit)
from pipeline.submit.calibration import calibrate_predict, calibrate_ttt, free_memory, slowest
from pipeline.checkpoint import hold_weights, last_read, load_for_prediction, release_weights
from pipeline.computation import describe, model_overrides
from pipeline.config import ConfigError, RunConfig, TrainConfig
from pipeline.data.dataset import split_by_canvas
from pipeline.prediction.challenges import (MODEL_ERRORS, ChallengeRun, load_challenges, predict_challenges,
                                           summary_line, write_submission)
from pipeline.prediction.ensemble import POOL_CANDIDATES, Member, pool, share_of_rest, split_views
from pipeline.prediction.infer import PredictOptions, model_batch
from pipeline.data.kaggle_input import count_inputs
from pipeline.layout import Checkpoint, CheckpointError, ckpt_root, list_checkpoints
from pipeline.training.metrics import setup_logging
from pipeline.runtime import (Runtime, break_group, init_runtime, set_collective_timeout, shutdown_runtime,
                              watch_for_failures)
from pipeline.data.sources import LoadResult
from pipeline.data.tasks import DataError, Task, write_json_atomic
from pipeline.training.train import Stop
from pipeline.training.ttt import run_ttt, ttt_config, ttt_dataset, ttt_departures

log = logging.getLogger("submit")
TTT_ERRORS = (DataError, CheckpointError, *MODEL_ERRORS)


@dataclass
class SubmitJob:
    """One budgeted run, as stages.submit parsed it (or one ensemble member's part of it)."""
    challenges: Path
    out: Path
    members: list[Member]
    """The checkpoints that predict: one, or an ensemble whose votes are pooled."""
    budget_s: float
    started: float
    """time.time() when the process started (a member's part: when it started): the budget counts from there."""
    work_dir: Path
    device: str = "auto"
    ttt_preset: str | list[str] | None = "configs/ttt_full.yaml"
    overrides: list[str] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    progress: bool = False
    deterministic: bool = False
    seed: int = 0
    candidates: int = 0
    """Grids kept per test input (0: the config's predict.top_k; an ensemble member keeps more for the pool)."""

    @property
    def checkpoint(self) -> str:
        return self.members[0].checkpoint


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


def ttt_folder(job: SubmitJob, pretrained: Checkpoint) -> Path:
    """The TTT run's folder, named after what it depends on, so that a rerun on the same inputs resumes it
    and a run on other inputs never does."""
    key = hashlib.sha256()
    key.update(job.challenges.read_bytes())
    key.update(str(pretrained.path.resolve()).encode())
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
        return _phases(job, rt)
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


@dataclass
class Flow:
    """What the phases of one run share: the job, the runtime (rank 0 alone once the group broke), the
    challenges, the TTT run's config and folder, the calibration, and the seconds and failures so far."""
    job: SubmitJob
    rt: Runtime
    challenges: dict
    """The challenges file as read: the writer covers every task id in it."""
    valid: LoadResult
    """Its valid tasks (for the model)."""
    pretrained: Checkpoint
    """The checkpoint the job names, opened once: each of its files is read once in this flow (its weights
    held from the calibration to TTT's warm start)."""
    cfg: RunConfig
    """The TTT run's config (also its predict and compute.crop settings)."""
    run_dir: Path | None
    fits: list[Task]
    """The valid tasks that fit the model's canvas."""
    n_inputs: int
    """Test inputs of `fits`."""
    departures: list[str]
    """How the TTT run departs from the checkpoint's computation (pipeline/computation.py), for the plan file."""
    cal: Calibration | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def break_group(self, stage: str, e: Exception) -> None:
        self.rt = _break(self.rt, stage, e, self.failed)

    def crop(self) -> list[str]:
        """The compute.crop override every prediction loads with: as the TTT run computes, also for the
        pretrained model (prediction when TTT did not run)."""
        return [f"compute.crop={str(self.cfg.compute.crop).lower()}"]


@dataclass
class TTTOutcome:
    model: Checkpoint
    """The checkpoint that predicts: TTT's latest, else the pretrained one."""
    info: dict
    """steps, stopped and (if it failed) error, for the summary."""


@dataclass
class MemberRun:
    """What one checkpoint's phases gave."""
    flow: Flow
    plan: Plan
    ttt: TTTOutcome
    answers: ChallengeRun | None
    views: int


def _phases(job: SubmitJob, rt: Runtime) -> int:
    """calibrate -> plan -> TTT -> predict -> write (README, "Budgeted submission"); an ensemble runs the first
    four once per member, each in its share of the time left."""
    if len(job.members) > 1:
        return _ensemble(job, rt)
    run = _member(job, rt)
    if run.flow.rt.is_main:
        _write(run)
    return 0


def _member(job: SubmitJob, rt: Runtime) -> MemberRun:
    return _run(_open(job, rt))


def _run(flow: Flow, cal: Calibration | None = None) -> MemberRun:
    """calibrate (unless an earlier ensemble member's `cal` fits) -> plan -> TTT -> predict."""
    if cal is None:
        _calibrate(flow)
    else:
        flow.cal = cal
        log.info("calibration: an earlier member's (same checkpoint, same processes)")
    plan, dl = _plan(flow)
    ttt = _ttt(flow, plan, dl)
    answers, views = _predict(flow, plan, dl, ttt.model)
    return MemberRun(flow, plan, ttt, answers, views)


OPEN_ERRORS = (CheckpointError, ConfigError, DataError, OSError)
"""A member that cannot be opened: the ensemble goes on without it (every rank alike)."""


@dataclass
class MemberResult:
    """What the pool and the plan file keep of a member once it is done (not its models or its flow)."""
    answers: ChallengeRun | None
    top_k: int
    entry: dict
    """Its plan, calibration, TTT outcome, views, inputs predicted and seconds, for OUT.plan.json."""
    failed: dict[int, str]


def _ensemble(job: SubmitJob, rt: Runtime) -> int:
    """Each member in turn (every rank alike: rank 0's clock starts each, and a member is skipped only if it
    cannot be opened on some rank); after each, rank 0 writes the pooled votes of those so far. A member that
    fails is logged and costs only its share: under torchrun its failure takes the group down and rank 0 runs
    the members left alone. If none runs, the first error is raised (the fallback submission stays)."""
    if rt.is_main:  # an earlier run's member plans (it may have had more members)
        for old in job.out.parent.glob(f"{glob.escape(job.out.name)}.member-*.plan.json"):
            old.unlink()
    done: list[MemberResult | None] = []
    errors: dict[int, str] = {}
    first: Exception | None = None
    calibrations: dict[tuple, Calibration] = {}
    challenges = None
    for i, m in enumerate(job.members):
        part = member_job(job, i, _rank0_clock(rt))
        log.info("ensemble member %d/%d %s: weight %g, %.0fs of the %.0fs left", i + 1, len(job.members),
                 m.checkpoint, m.weight, part.budget_s, job.started + job.budget_s - time.time())
        flow, why = None, None
        try:
            flow = _open(part, rt)
        except OPEN_ERRORS as e:
            why = e
        if not _everyone(rt, flow is not None):
            why = why or RuntimeError("another rank could not open it")
            log.error("ensemble member %s cannot be opened (%s): its share is lost", m.checkpoint, why)
            first, errors[i] = first or why.with_traceback(None), f"{type(why).__name__}: {why}"
            done.append(None)
            continue
        key = (str(flow.pretrained.path.resolve()), flow.rt.world_size)
        try:
            run = _run(flow, calibrations.get(key))
        except GroupBroken:
            raise
        except Exception as e:
            log.exception("ensemble member %s failed (%s): its share of the views is lost", m.checkpoint, e)
            first, errors[i] = first or e.with_traceback(None), f"{type(e).__name__}: {e}"
            done.append(None)
            if flow.rt.distributed:  # the others may be inside a collective: rank 0 goes on alone
                flow.break_group(f"ensemble member {i + 1}", e)
            continue
        finally:
            release_weights(flow.pretrained)
            rt = flow.rt  # rank 0 alone once the group broke
        calibrations.setdefault(key, run.flow.cal)
        challenges = challenges or flow.challenges
        done.append(_result(run))
        del run, flow
        free_memory(rt)
        if rt.device.type == "cuda":
            log.info("after ensemble member %d: %.2f GB of GPU memory allocated", i + 1,
                     torch.cuda.memory_allocated() / 1e9)
        if rt.is_main and i < len(job.members) - 1:  # the last one's is the final write below
            _write_pooled(job, done, errors, challenges)
    if not any(done):
        raise first
    if rt.is_main:
        _write_pooled(job, done, errors, challenges, final=True)
    return 0


def _rank0_clock(rt: Runtime) -> float:
    """time.time() on rank 0, on every rank (ranks plan a member from the same start, so they plan alike)."""
    now = [time.time()]
    if rt.distributed:
        dist.broadcast_object_list(now, src=0)
    return now[0]


def _everyone(rt: Runtime, ok: bool) -> bool:
    """Whether `ok` holds on every rank."""
    if not rt.distributed:
        return ok
    flags: list = [None] * rt.world_size
    dist.all_gather_object(flags, ok)
    return all(flags)


def _result(run: MemberRun) -> MemberResult:
    flow = run.flow
    entry = {"budget_s": round(flow.job.budget_s, 1), **_member_summary(run),
             "predicted": run.answers.predicted() if run.answers else 0,
             "seconds": {k: round(v, 1) for k, v in flow.seconds.items()}, "departures": flow.departures,
             "plan": dataclasses.asdict(run.plan), "calibration": dataclasses.asdict(flow.cal)}
    return MemberResult(run.answers, flow.cfg.predict.top_k, entry, dict(flow.failed))


def member_job(job: SubmitJob, i: int, now: float) -> SubmitJob:
    """Member i's part of an ensemble run: its checkpoint; its share by weight of the time left among it and the
    members after it (time one leaves goes to the next); its share of the views (floor, most, least, pinned);
    its own seed (the same checkpoint twice makes two TTT runs); its plan file `<out>.member-<i>.plan.json`;
    and POOL_CANDIDATES grids per test input for the pool."""
    weights = [m.weight for m in job.members]
    p = job.policy

    def share(views: int) -> int:
        return split_views(views, weights)[i]

    policy = dataclasses.replace(p, views_floor=share(p.views_floor), views_max=share(p.views_max),
                                 views_min=share(p.views_min),
                                 pinned_views=share(p.pinned_views) if p.pinned_views else p.pinned_views)
    left = max(0.0, job.started + job.budget_s - now)
    return dataclasses.replace(job, members=[job.members[i]], out=Path(f"{job.out}.member-{i}"),
                               budget_s=left * share_of_rest(weights, i), started=now, seed=job.seed + i,
                               policy=policy, candidates=POOL_CANDIDATES)


def _open(job: SubmitJob, rt: Runtime) -> Flow:
    """The challenges, the TTT run's config and which tasks fit its canvas."""
    challenges, valid = load_challenges(job.challenges)
    pretrained = Checkpoint.open(job.checkpoint)
    hold_weights(pretrained)
    run_dir = ttt_folder(job, pretrained)
    overrides = [*job.overrides, f"train.progress={str(job.progress).lower()}", f"seed={job.seed}"]
    cfg = ttt_config(pretrained, job.ttt_preset, overrides, run_dir, sources=[str(job.challenges)])
    departures = ttt_departures(cfg, pretrained, job.ttt_preset)
    if rt.is_main:
        log.info("%s", describe(departures))
    policy = job.policy
    if not cfg.predict.adaptive_halting and policy.predict_steps_fraction < 1.0:
        log.warning("--steps-fraction %.2f ignored: every view runs all N_sup steps (predict.adaptive_halting is "
                    "off), so prediction is planned at all of them", policy.predict_steps_fraction)
        policy = dataclasses.replace(policy, predict_steps_fraction=1.0)
    job = dataclasses.replace(job, policy=policy)
    fits = split_by_canvas(valid.tasks, cfg.data.canvas)[0]
    return Flow(job, rt, challenges, valid, pretrained, cfg, run_dir, fits, sum(len(t.test_inputs) for t in fits),
                departures)


def _calibrate(flow: Flow) -> None:
    """Time TTT and prediction on this file and these devices (the slowest rank's) into flow.cal."""
    job, cfg = flow.job, flow.cfg
    t0 = time.time()
    cal = Calibration(inputs_per_rank=math.ceil(flow.n_inputs / flow.rt.world_size),
                      batch=model_batch(cfg.predict, flow.rt.device, cfg.model.total_len),
                      max_chunk_views=cfg.predict.chunk_views)
    try:
        cal.ttt_startup_s, cal.ttt_step_s, cal.ttt_save_s = calibrate_ttt(
            cfg, flow.rt, lambda: ttt_dataset(cfg, flow.valid.tasks, flow.pretrained), job.work_dir / "calibration",
            warm=flow.pretrained)
    except Exception as e:
        if not flow.rt.distributed and not isinstance(e, TTT_ERRORS):
            raise
        cal.ttt_error = str(e)
        log.error("TTT cannot run (%s): the pretrained model predicts", e)
        free_memory(flow.rt)
        if flow.rt.distributed:  # a rank may have failed inside a collective: the group cannot go on
            flow.break_group("calibration", e)
            cal.inputs_per_rank = flow.n_inputs
    if flow.fits:
        # timed with the TTT run's computation (crop, cycles, N_sup: ttt_nvarc's 4 x 10, not the checkpoint's),
        # which is what predicts after TTT
        loaded = load_for_prediction(flow.pretrained, flow.rt.device, overrides=model_overrides(flow.cfg))
        try:
            cal.predict_startup_s, cal.view_s = calibrate_predict(loaded, flow.fits, PredictOptions.of(cfg, flow.rt),
                                                                  flow.rt)
        except MODEL_ERRORS as e:
            log.error("prediction calibration failed (%s): planning without it", e)
        del loaded
        free_memory(flow.rt)
    try:
        cal = slowest(cal, flow.rt)
    except Exception as e:  # another rank failed and took the group down: plan with this rank's own timings
        flow.break_group("calibration", e)
        cal.inputs_per_rank = flow.n_inputs
    flow.cal = cal
    flow.seconds["calibration"] = time.time() - t0
    log.info("calibration (%.1fs): TTT %.3fs/step (+%.1fs start-up, %.1fs per checkpoint), prediction %.2fms "
             "per view (+%.1fs start-up), %d test inputs per rank", flow.seconds["calibration"], cal.ttt_step_s,
             cal.ttt_startup_s, cal.ttt_save_s, 1e3 * cal.view_s, cal.predict_startup_s, cal.inputs_per_rank)


def _plan(flow: Flow) -> tuple[Plan, Deadlines]:
    """TTT steps and views that fit the budget left, and the deadlines that hold each stage to its share."""
    job, cfg = flow.job, flow.cfg
    spent = time.time() - job.started
    plan = make_plan(job.policy, flow.cal, job.budget_s, spent, cfg.train.steps, cfg.train.ckpt_every)
    if not flow.fits:
        plan = dataclasses.replace(plan, ttt_steps=0, views=0, why="no valid task fits the model's canvas")
    if flow.rt.is_main:
        s = plan.seconds
        log.info("plan: %d TTT steps, %d views per test input (%s); seconds: setup %.0f, TTT %.0f, predict %.0f, "
                 "write %.0f, margin %.0f of the %.0f s budget", plan.ttt_steps, plan.views, plan.why, s["setup"],
                 s["ttt"], s["predict"], s["write"], s["margin"], job.budget_s)
        if margin_for(plan) > job.policy.margin:
            log.warning("prediction takes %.0f%% of the budget: a calibration as optimistic as the 90th percentile "
                        "measured under load would cut inputs off; --margin %.2f covers it",
                        100 * s["predict"] / job.budget_s, margin_for(plan))
        _write_plan(job, plan, flow.cal, flow.seconds, {}, flow.departures)
    return plan, deadlines(plan, job.started)


def planned_training(train: TrainConfig, steps: int) -> tuple[TrainConfig, list[str]]:
    """The recipe's training cut to the planned steps. A planned run shorter than the recipe keeps its
    warm-up to a quarter of it, so that it reaches the peak lr: a departure from the recipe (returned)."""
    warmup = min(train.lr_warmup, steps // 4)
    cut = dataclasses.replace(train, steps=steps, lr_warmup=warmup, ckpt_every=min(train.ckpt_every, steps))
    if warmup == train.lr_warmup:
        return cut, []
    return cut, [f"train.lr_warmup: {train.lr_warmup} -> {warmup} (a quarter of the {steps} planned steps)"]


def _ttt(flow: Flow, plan: Plan, dl: Deadlines) -> TTTOutcome:
    """The planned TTT run, stopped at a step boundary at its deadline; its latest checkpoint is the best so far.
    A TTT that cannot run or fails leaves the pretrained model (or its latest checkpoint) to predict."""
    job, cfg, run_dir = flow.job, flow.cfg, flow.run_dir
    out = TTTOutcome(flow.pretrained, {"steps": 0, "stopped": None})
    if plan.ttt_steps <= 0:
        return out
    t0 = time.time()
    train, shortened = planned_training(cfg.train, plan.ttt_steps)
    if shortened:
        log.warning("the planned TTT run is shorter than the recipe's warm-up: %s", "; ".join(shortened))
        flow.departures = flow.departures + shortened  # ttt.json and plan.json list it
    # a collective every step: no rank legitimately waits longer than a start-up (compile) or a step and a save
    cal = flow.cal
    set_collective_timeout(max(60.0, 2 * max(cal.ttt_startup_s, cal.ttt_step_s + cal.ttt_save_s)))
    try:
        stop = Stop(deadline=dl.ttt, when=heartbeat(plan.ttt_steps, max(30.0, job.budget_s / 100)))
        # not held beside the TTT run (GBs of puzzle table at ARC size): its warm start is the last read, and a
        # run that resumes from its own checkpoint does not read them at all
        if list_checkpoints(ckpt_root(run_dir)):
            release_weights(flow.pretrained)
        else:
            last_read(flow.pretrained)
        result = run_ttt(dataclasses.replace(cfg, train=train), flow.rt, flow.valid.tasks, flow.pretrained,
                         stop=stop, found=flow.departures)
        out.info = {"steps": result.step, "stopped": result.stopped}
        out.model = result.checkpoint or out.model
    except CheckpointError as e:  # the folder holds another run (pipeline.training.train): never predict with it
        log.error("TTT cannot use %s (%s): the pretrained model predicts", run_dir, e)
        out.info["error"], run_dir = str(e), None
    except Exception as e:  # whatever else went wrong, what TTT saved (or the pretrained model) still predicts
        log.exception("TTT failed (%s): prediction uses its latest checkpoint, if any, else the pretrained model", e)
        out.info.update(error=str(e), stopped="error")
        if flow.rt.distributed:
            flow.break_group("ttt", e)
            flow.cal = dataclasses.replace(flow.cal, inputs_per_rank=flow.n_inputs)
    finally:
        set_collective_timeout(collective_timeout_s(job.budget_s))
    release_weights(flow.pretrained)  # read again only if the pretrained model must predict after all
    try:
        if run_dir and out.model is flow.pretrained:  # TTT failed, or this rank was not the one that saved
            out.model = Checkpoint.open(run_dir)
            if out.info["stopped"] == "error":  # the steps the predicting checkpoint has
                out.info["steps"] = out.model.step
    except CheckpointError:
        log.error("TTT left no checkpoint: the pretrained model predicts")
    flow.seconds["ttt"] = time.time() - t0
    log.info("TTT: %s steps (%s) in %.0fs", out.info["steps"], out.info["stopped"], flow.seconds["ttt"])
    return out


def _predict(flow: Flow, plan: Plan, dl: Deadlines, model: Checkpoint) -> tuple[ChallengeRun | None, int]:
    """Views per test input chosen again from the time actually left, then prediction and vote; (None, 0) when
    nothing was predicted and the fallback submission stays."""
    job, cal = flow.job, flow.cal
    if plan.views <= 0:
        return None, 0
    if dl.end - dl.write_s - time.time() <= 0:
        log.error("no time left for prediction: the fallback submission stays")
        return None, 0
    t0 = time.time()
    free_memory(flow.rt)  # the TTT run's model and optimiser
    policy = job.policy
    views = policy.pinned_views or max(1, views_that_fit(cal, dl.predict_seconds_left(), policy, policy.views_max,
                                                         job.budget_s))
    per_chunk = chunk_inputs(cal, views, policy, job.budget_s)
    top_k = max(flow.cfg.predict.top_k, job.candidates)  # an ensemble member keeps more grids for the pool
    opts = PredictOptions.of(flow.cfg, flow.rt, dataclasses.replace(flow.cfg.predict, augs=views, top_k=top_k,
                                                                    chunk_views=per_chunk * views))
    chunk_s = -(-per_chunk * views // max(cal.batch, 1)) * max(cal.batch, 1) * cal.view_s
    log.info("predict with %s: %d views per test input, %d test inputs per chunk (~%.1fs)", model.path, views,
             per_chunk, chunk_s)
    answers = None
    try:
        # the crop calibrated, also when the pretrained model predicts because TTT failed
        loaded = load_for_prediction(model, flow.rt.device, overrides=flow.crop(), warm=flow.pretrained)
        release_weights(flow.pretrained)  # without TTT, held since the calibration
    except Exception as e:
        log.exception("loading %s for prediction failed (%s): the fallback submission stays", model.path, e)
        if flow.rt.distributed:  # the others' gather would wait for this rank
            flow.break_group("predict", e)
        loaded = None
    try:
        if loaded is not None:  # model errors are handled task by task inside, a failing rank at the gather
            answers = predict_challenges(loaded, flow.valid, opts, flow.rt, dl.predict_deadline(chunk_s),
                                        show_progress=job.progress)
            flow.failed.update(answers.failed_ranks)
    except Exception as e:  # anything else, in one process: what is on disk stays
        log.exception("prediction failed (%s): the fallback submission stays", e)
    flow.seconds["predict"] = time.time() - t0
    return answers, views


def _write(run: MemberRun) -> None:
    """Rank 0: the submission (atomically), its details, the plan file with the actual seconds, the summary."""
    flow = run.flow
    job, seconds = flow.job, flow.seconds
    t0 = time.time()
    sub, _ = write_submission(job.out, flow.challenges, run.answers)
    seconds["write"] = time.time() - t0
    seconds["total"] = time.time() - job.started
    summary = {"submission": str(job.out), **_counts(flow.challenges, run.answers), **_member_summary(run),
               "seconds": {k: round(v, 1) for k, v in seconds.items()}, "budget_s": job.budget_s,
               "failed_ranks": {str(r): why for r, why in sorted(flow.failed.items())}}
    _write_plan(job, run.plan, flow.cal, seconds, summary, flow.departures)
    log.info("seconds per stage: %s (budget %.0f)", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
             job.budget_s)
    _finish(sub, run.answers, summary)


def _write_pooled(job: SubmitJob, done: list[MemberResult | None], errors: dict[int, str], challenges: dict,
                  final: bool = False) -> None:
    """Rank 0: the pooled votes of the members done so far (if any predicted) replace the submission; the plan
    file lists every member's plan, calibration and outcome (or error); `final`: the summary line too."""
    live = [r for r in done if r is not None]
    answers = None
    if any(r.answers is not None for r in live):
        answers = pool([r.answers if r else None for r in done], [m.weight for m in job.members[:len(done)]],
                      live[0].top_k)
    sub = write_submission(job.out, challenges, answers)[0] if answers is not None else None
    members = [{"checkpoint": m.checkpoint, "weight": m.weight, **(r.entry if r else {"error": errors[i]})}
               for i, (m, r) in enumerate(zip(job.members, done))]
    summary = {"submission": str(job.out), **_counts(challenges, answers), "members": len(job.members),
               "seconds": {"total": round(time.time() - job.started, 1)}, "budget_s": job.budget_s,
               "failed_ranks": {str(k): v for r in live for k, v in sorted(r.failed.items())}}
    write_json_atomic(str(job.out) + ".plan.json", {"policy": dataclasses.asdict(job.policy), "members": members,
                                                   "summary": summary})
    if final:
        _finish(sub, answers, summary)


def _counts(challenges: dict, answers: ChallengeRun | None) -> dict:
    tasks, inputs = count_inputs(challenges)
    return {"tasks": tasks, "test_inputs": inputs, "predicted": answers.predicted() if answers else 0}


def _member_summary(run: MemberRun) -> dict:
    ttt, flow = run.ttt, run.flow
    return {"ttt_steps": ttt.info["steps"], "ttt_stopped": ttt.info["stopped"], "views": run.views,
            "model": flow.job.checkpoint if ttt.model is flow.pretrained else str(ttt.model.path)}


def _finish(sub: dict | None, answers: ChallengeRun | None, summary: dict) -> None:
    """The run's last lines: how many inputs the model predicted, and the summary as one JSON line."""
    log.info("%s", summary_line(sub, answers) if answers else
             f"0 of {summary['test_inputs']} test inputs predicted by the model")
    print("summary: " + json.dumps(summary), flush=True)


def _write_plan(job: SubmitJob, plan: Plan, cal: Calibration, actual: dict, summary: dict,
                found: list[str]) -> None:
    write_json_atomic(str(job.out) + ".plan.json", {
        "departures": found, "policy": dataclasses.asdict(job.policy), "calibration": dataclasses.asdict(cal),
        "plan": dataclasses.asdict(plan), "actual_seconds": actual, "summary": summary})
