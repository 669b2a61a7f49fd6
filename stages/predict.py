"""Predict test outputs with a trained checkpoint and write a Kaggle submission.

    python -m stages.predict --checkpoint runs/demo/pretrain --challenges FILE --out submission.json
    python -m stages.predict ... --augs 1000 --device cuda --fixed-steps      # official always-N_sup behaviour
    torchrun --nproc-per-node 4 -m stages.predict ...                         # tasks sharded over GPUs

Every task of the challenges file gets an entry: broken tasks, model errors and anything past
--time-budget get a logged fallback and never cost another task. A sidecar `<out>.details.json` holds
votes, halting steps and seconds per test input for `stages.score --report`.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import from_dict
from pipeline.dataset import canvas_problem
from pipeline.export import load_model
from pipeline.infer import PredictConfig, predict_tests
from pipeline.metrics import setup_logging
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.sampler import pack_tasks
from pipeline.sources import entries_to_tasks
from pipeline.tasks import DataError, read_json
from stages._cli import run
from submission.format import build_submission, write_json_atomic

log = logging.getLogger("predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (its latest complete checkpoint) or checkpoint folder")
    p.add_argument("--challenges", required=True, help="Kaggle-format *_challenges.json (solutions are never read)")
    p.add_argument("--out", required=True, help="submission.json to write")
    p.add_argument("--augs", type=int, default=None, help="views per test input (default: the checkpoint's predict.augs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--fixed-steps", action="store_true", help="run every view for all N_sup steps (official)")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; tasks not reached in time get fallbacks")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_challenges(path: str):
    """Raw challenges (for the writer, which must cover every id) and the valid tasks (for the model)."""
    raw = read_json(Path(path))
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object mapping task ids to tasks")
    res = entries_to_tasks(raw, None, Path(path).name, train_on_test=False)
    return raw, res


def main(argv=None) -> int:
    args = parse_args(argv)
    rt = init_runtime(args.device, "auto", 0)
    t_start = time.perf_counter()
    try:
        setup_logging(None, rt.is_main)
        raw, res = load_challenges(args.challenges)
        for q in res.problems:
            log.warning("invalid task, fallback used: %s", q)
        loaded = load_model(args.checkpoint, rt.device, use_ema=not args.raw_weights)
        canvas = loaded.config.data.canvas
        tasks = []
        for t in res.tasks:
            if (p := canvas_problem(t, canvas)) is not None:
                log.warning("task %s: %s; fallback used", t.id, p)
            else:
                tasks.append(t)
        overrides = {k: v for k, v in (("augs", args.augs), ("batch_size", args.batch_size)) if v is not None}
        if args.fixed_steps:
            overrides["adaptive_halting"] = False
        pcfg = from_dict(PredictConfig, {**loaded.config.predict.__dict__, **overrides})
        predictions, details = {}, {}
        if tasks:
            predictions, details = _predict(loaded, tasks, pcfg, canvas, rt, args, t_start)
        if rt.is_main:
            sub, notes = build_submission(raw, predictions)
            for n in notes:
                log.warning("%s", n)
            write_json_atomic(args.out, sub)
            write_json_atomic(str(args.out) + ".details.json", details)
            n_tests = sum(len(v) for v in sub.values())
            log.info("wrote %s: %d tasks, %d test inputs, %d predicted, %.1fs", args.out, len(sub), n_tests,
                     len(predictions), time.perf_counter() - t_start)
    finally:
        shutdown_runtime()
    return 0


def _predict_chunk(loaded, packed, chunk, task_to_ckpt, pcfg, canvas, rt, progress) -> list:
    """Predict a chunk of test inputs; if it fails (a model error), retry task by task so that only the
    failing tasks fall back."""
    errors = (RuntimeError, ValueError, torch.cuda.OutOfMemoryError)
    try:
        return predict_tests(loaded.model, packed, chunk, task_to_ckpt, loaded.ids, pcfg, canvas, rt.device, rt.dtype,
                             progress)
    except errors as e:
        log.warning("prediction failed for a chunk of %d test inputs (%s); retrying task by task", len(chunk), e)
    out = []
    for task in np.unique(packed.test_task[chunk]):
        rows = chunk[packed.test_task[chunk] == task]
        try:
            out += predict_tests(loaded.model, packed, rows, task_to_ckpt, loaded.ids, pcfg, canvas, rt.device,
                                 rt.dtype, progress)
        except errors as e:
            log.error("prediction failed for task %s: %s; fallback used", packed.task_ids[task], e)
    return out


def _predict(loaded, tasks, pcfg, canvas, rt, args, t_start):
    packed = pack_tasks(tasks)
    index = {tid: k for k, tid in enumerate(loaded.task_ids)}
    task_to_ckpt = np.array([index.get(tid, -1) for tid in packed.task_ids], dtype=np.int64)
    unknown = int((task_to_ckpt < 0).sum())
    if unknown:
        log.warning("%d of %d tasks were not in pretraining: they use the mean puzzle embedding (run ttt to fit them)",
                    unknown, len(task_to_ckpt))
    rows = np.arange(len(packed.test_task))[rt.rank::rt.world_size]
    bar = None
    if rt.is_main and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="predict", unit="input", dynamic_ncols=True)
    t0 = time.perf_counter()
    views_done = [0]

    def progress(n_inputs, n_views):
        views_done[0] += n_views
        if bar is not None:
            bar.update(n_inputs)
            bar.set_postfix(views_per_s=f"{views_done[0] / (time.perf_counter() - t0):.0f}")

    results = []
    # Chunks of test inputs: one failing chunk (model error) or running out of time costs only those inputs.
    step = max(1, pcfg.chunk_views // pcfg.augs)
    for s in range(0, len(rows), step):
        if args.time_budget and time.perf_counter() - t_start > args.time_budget:
            log.warning("time budget of %.0fs used up: %d test inputs get fallbacks", args.time_budget, len(rows) - s)
            break
        results += _predict_chunk(loaded, packed, rows[s:s + step], task_to_ckpt, pcfg, canvas, rt, progress)
    if bar is not None:
        bar.close()
    if rt.distributed:
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    predictions = {(r.task_id, r.test_index): r.attempts for r in results}
    details = {f"{r.task_id}/{r.test_index}": {"votes": r.votes, "valid_views": r.valid_views, "views": r.views,
                                               "confidence": r.confidence, "mean_steps": r.mean_steps,
                                               "seconds": r.seconds} for r in results}
    return predictions, details


if __name__ == "__main__":
    run(main)
