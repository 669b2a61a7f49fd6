"""The hidden-test flow shared by `stages.predict`, the budgeted submit and the Kaggle notebook: from a raw
challenges file and a loaded model to ranked attempts per test input.

Nothing here may cost another task: invalid tasks and grids larger than the model's canvas are reported
and left to the submission writer's fallback; a model error in a chunk is retried task by task; past the
time budget the remaining inputs are left to the fallback. Test inputs are sharded over ranks and the
results gathered; every view depends only on (seed, test input), so sharding never changes results.
Nor may a rank cost the others: a rank whose prediction fails still joins the gather, with its error (its
inputs fall back), and a gather that fails (a rank died or took the group down) leaves each rank its own
results.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.checkpoint import LoadedModel, load_for_prediction
from pipeline.computation import describe
from pipeline.data.dataset import split_by_canvas
from pipeline.prediction.infer import PredictOptions, PredictTasks, TestPrediction, predict_tests
from pipeline.layout import Checkpoint, CheckpointError
from pipeline.runtime import Runtime, break_group, compile_model
from pipeline.data.packed import pack_tasks
from pipeline.data.sources import LoadResult, entries_to_tasks
from pipeline.data.tasks import read_task_map, write_json_atomic
from submission.format import build_submission

log = logging.getLogger(__name__)
MODEL_ERRORS = (RuntimeError, ValueError, torch.cuda.OutOfMemoryError)


def load_challenges(path: str | Path) -> tuple[dict, LoadResult]:
    """The raw challenges (the writer must cover every id in them) and the valid tasks (for the model)."""
    challenges = read_task_map(path)
    valid = entries_to_tasks(challenges, None, Path(path).name, train_on_test=False)
    for q in valid.problems:
        log.warning("invalid task, fallback used: %s", q)
    return challenges, valid


# Why a test input of a valid task has no model prediction (invalid tasks are the writer's business).
TOO_LARGE, MODEL_ERROR, TIME_BUDGET, NO_VALID_VIEW, NO_TTT_RUN, RANK_FAILED = (
    "larger than the canvas", "model error", "time budget", "no valid view", "no per-task TTT run", "rank failed")


@dataclasses.dataclass
class ChallengeRun:
    """Ranked attempts of the test inputs the model predicted, and why each other valid input fell back."""
    results: list[TestPrediction]
    fallbacks: dict[tuple[str, int], str]
    """(task id, test index) -> reason (TOO_LARGE, MODEL_ERROR, TIME_BUDGET, NO_VALID_VIEW, RANK_FAILED)."""
    failed_ranks: dict[int, str] = dataclasses.field(default_factory=dict)
    """Under torchrun: rank -> why its prediction failed (its test inputs fall back)."""

    def predicted(self) -> int:
        return sum(bool(r.attempts) for r in self.results)

    def model_predicted_nothing(self) -> bool:
        """True when valid tasks' inputs were handed to the model (or could not be, being too large) and
        none got a prediction: a broken model, not a short time budget."""
        return self.predicted() == 0 and any(r != TIME_BUDGET for r in self.fallbacks.values())


def _predict_chunk(model, tasks: PredictTasks, chunk: np.ndarray, opts: PredictOptions, progress,
                   fallbacks: dict) -> list[TestPrediction]:
    """Predict a chunk of test inputs; if it fails (a model error), retry task by task so that only the
    failing tasks fall back (recorded in `fallbacks`)."""
    try:
        return predict_tests(model, tasks, chunk, opts, progress)
    except MODEL_ERRORS as e:
        log.warning("prediction failed for a chunk of %d test inputs (%s); retrying task by task", len(chunk), e)
    out, packed = [], tasks.packed
    for task in np.unique(packed.test_task[chunk]):
        rows = chunk[packed.test_task[chunk] == task]
        try:
            out += predict_tests(model, tasks, rows, opts, progress)
        except MODEL_ERRORS as e:
            log.error("prediction failed for task %s: %s; fallback used", packed.task_ids[task], e)
            fallbacks.update({(packed.task_ids[task], int(packed.test_index[r])): MODEL_ERROR for r in rows})
    return out


def predict_challenges(loaded: LoadedModel, valid: LoadResult, opts: PredictOptions, rt: Runtime,
                       deadline: float | None = None, show_progress: bool = True) -> ChallengeRun:
    """Ranked attempts for every test input of the valid tasks in `valid` that this model can take, gathered
    from all ranks, with the reason for each one it could not predict. `opts`: usually
    PredictOptions.of(loaded.config, rt). `deadline` is a time.perf_counter() value after which no new chunk
    starts."""
    canvas, pcfg = opts.canvas, opts.cfg
    tasks, too_large = split_by_canvas(valid.tasks, canvas)
    fallbacks = {}
    for t, p in too_large:
        log.warning("task %s: %s; fallback used", t.id, p)
        fallbacks.update({(t.id, j): TOO_LARGE for j in range(len(t.test_inputs))})
    if not tasks:
        return ChallengeRun([], fallbacks)
    packed = pack_tasks(tasks)
    index = {tid: k for k, tid in enumerate(loaded.task_ids)}
    task_to_ckpt = np.array([index.get(tid, -1) for tid in packed.task_ids], dtype=np.int64)
    if (unknown := int((task_to_ckpt < 0).sum())):
        log.warning("%d of %d tasks were not in pretraining: they use the mean puzzle embedding (run ttt to fit them)",
                    unknown, len(task_to_ckpt))
    tests = PredictTasks(packed, task_to_ckpt, loaded.ids)
    rows = np.arange(len(packed.test_task))[rt.rank::rt.world_size]
    model = loaded.model
    if rt.compiles(opts.compile):
        log.info("prediction runs a torch.compile'd model (compiles on the first batch)")
        model = compile_model(loaded.model, loaded.model)
    bar = None
    if rt.is_main and show_progress:
        bar = tqdm(total=len(rows), desc="predict", unit="input", dynamic_ncols=True, mininterval=1.0)
    t0, views_done = time.perf_counter(), [0]

    def progress(n_inputs, n_views):
        views_done[0] += n_views
        if bar is not None:
            bar.update(n_inputs)
            bar.set_postfix(views_per_s=f"{views_done[0] / (time.perf_counter() - t0):.0f}")

    results: list[TestPrediction] = []
    key = lambda r: (packed.task_ids[packed.test_task[r]], int(packed.test_index[r]))  # noqa: E731
    step, error = max(1, pcfg.chunk_views // pcfg.augs), None
    try:
        for s in range(0, len(rows), step):
            if deadline is not None and time.perf_counter() > deadline:
                log.warning("time budget used up: %d test inputs get fallbacks", len(rows) - s)
                fallbacks.update({key(r): TIME_BUDGET for r in rows[s:]})
                break
            results += _predict_chunk(model, tests, rows[s:s + step], opts, progress, fallbacks)
    except Exception as e:  # under torchrun the other ranks wait for this one at the gather: it must get there
        if not rt.distributed:
            raise
        log.exception("rank %d: prediction failed (%s); its test inputs fall back", rt.rank, e)
        error = f"predict: {type(e).__name__}: {e}"
        _fall_back_unless_predicted(results, fallbacks, map(key, rows))
    if bar is not None:
        bar.close()
    failed = {rt.rank: error} if error else {}
    if rt.distributed:
        gathered = [None] * rt.world_size
        try:
            dist.all_gather_object(gathered, (results, fallbacks, error))
            results = [r for part, _, _ in gathered for r in part]
            fallbacks = {k: v for _, part, _ in gathered for k, v in part.items()}
            failed = {r: err for r, (_, _, err) in enumerate(gathered) if err}
        except Exception as e:  # a rank died or broke the group: this rank keeps its own results
            log.error("rank %d: the gather of predictions failed (%s): only this rank's inputs are kept", rt.rank, e)
            failed = break_group(rt, f"predict: gather: {type(e).__name__}: {e}")
            _fall_back_unless_predicted(results, fallbacks, map(key, range(len(packed.test_task))))
    fallbacks.update({(r.task_id, r.test_index): NO_VALID_VIEW for r in results if not r.attempts})
    return ChallengeRun(results, fallbacks, failed)


def _fall_back_unless_predicted(results: list[TestPrediction], fallbacks: dict, keys) -> None:
    """Inputs (task id, test index) neither predicted nor fallen back already fall back as RANK_FAILED."""
    done = {(r.task_id, r.test_index) for r in results}
    for k in keys:
        if k not in done:
            fallbacks.setdefault(k, RANK_FAILED)


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    """How each model of a prediction is loaded: `overrides` (`key=value`) on its checkpoint's config (with the
    official evaluation; load_for_prediction) and EMA or raw weights."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    use_ema: bool = True


def _load(ckpt: str | Path | None, rt: Runtime, how: LoadSettings) -> LoadedModel | None:
    """The model of a (run or checkpoint) folder, None when there is none or it cannot be used (logged)."""
    if ckpt is None:
        return None
    try:
        return load_for_prediction(Checkpoint.open(ckpt), rt.device, how.use_ema, how.overrides)
    except CheckpointError as e:
        log.error("%s", e)
        return None


def predict_per_task_runs(runs: dict[str, Path], base: str | Path | None, valid: LoadResult, rt: Runtime,
                          how: LoadSettings = LoadSettings(), deadline: float | None = None) -> ChallengeRun:
    """Per-task TTT (`stages.ttt --per-task`; pipeline.training.ttt.ttt_index): each task is predicted by the model of
    its own run folder in `runs`, as that run was trained and evaluates (load_for_prediction), with
    `how.overrides`; each run's departures are logged in one line. A task without a usable run (its TTT failed)
    is predicted by the pretrained checkpoint `base` instead, and falls back only if there is none."""
    merged, leftover = ChallengeRun([], {}), []
    for t in valid.tasks:
        loaded = _load(runs.get(t.id), rt, how)
        if loaded is None:
            leftover.append(t)
            continue
        if rt.is_main:
            log.info("task %s (%s): %s", t.id, loaded.checkpoint.path, describe(loaded.departures))
        # One model per task: torch.compile would recompile for each, and not pay back.
        opts = dataclasses.replace(PredictOptions.of(loaded.config, rt), compile=False)
        part = predict_challenges(loaded, LoadResult(tasks=[t]), opts, rt, deadline, show_progress=False)
        merged.results += part.results
        merged.fallbacks.update(part.fallbacks)
    if leftover:
        log.warning("%d tasks have no per-task TTT run: the pretrained checkpoint %s predicts them", len(leftover),
                    base)
        loaded = _load(base, rt, how)
        if loaded is None:
            merged.fallbacks.update({(t.id, j): NO_TTT_RUN for t in leftover for j in range(len(t.test_inputs))})
        else:
            if rt.is_main:
                log.info("pretrained %s: %s", loaded.checkpoint.path, describe(loaded.departures))
            part = predict_challenges(loaded, LoadResult(tasks=leftover), PredictOptions.of(loaded.config, rt), rt,
                                      deadline, show_progress=False)
            merged.results += part.results
            merged.fallbacks.update(part.fallbacks)
    return merged


def summary_line(sub: dict, answers: ChallengeRun) -> str:
    """One line: test inputs in the submission, how many the model predicted, and the fallbacks by reason
    (inputs of tasks that failed validation count as `invalid task`)."""
    predicted = {(r.task_id, r.test_index) for r in answers.results if r.attempts}
    reasons = Counter(answers.fallbacks.get((task, j), "invalid task") for task, entries in sub.items()
                      for j in range(len(entries)) if (task, j) not in predicted)
    total = sum(len(v) for v in sub.values())
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "none"
    return f"{len(predicted)} of {total} test inputs predicted by the model; fell back: {why}"


def details_of(results: list[TestPrediction]) -> dict:
    """Per test input: votes, valid views, confidence, halting steps and seconds (for the score report)."""
    return {f"{r.task_id}/{r.test_index}": {"votes": r.votes, "valid_views": r.valid_views, "views": r.views,
                                            "confidence": r.confidence, "mean_steps": r.mean_steps,
                                            "seconds": r.seconds} for r in results}


def write_submission(out: str | Path, challenges: dict, answers: ChallengeRun | None) -> tuple[dict, list[str]]:
    """The submission for every task of `challenges` (the model's attempts where `answers` has them, the fallback
    elsewhere) written atomically to `out`, and `out`.details.json beside it when the model ran; returns the
    submission and the writer's notes."""
    preds = {(r.task_id, r.test_index): r.attempts for r in answers.results} if answers is not None else {}
    sub, notes = build_submission(challenges, preds)
    write_json_atomic(out, sub)
    if answers is not None:
        write_json_atomic(str(out) + ".details.json", details_of(answers.results))
    return sub, notes
