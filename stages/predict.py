"""Predict test outputs with a trained checkpoint and write a Kaggle submission.

    python -m stages.predict --checkpoint runs/demo/pretrain --challenges FILE --out submission.json
    python -m stages.predict ... --augs 1000 --device cuda
    python -m stages.predict ... --adaptive-halting --set predict.translate=true    # departures (opt-in)
    torchrun --nproc-per-node 4 -m stages.predict ...                         # tasks sharded over GPUs
    python -m stages.predict --checkpoint runs/ttt ...      # a TTT run: its trained embeddings (joint or --per-task)
    python -m stages.predict --checkpoint runs/a runs/b --weights 2 1 ...    # an ensemble: votes pooled

The model computes as the checkpoint was trained (its compute.crop) and evaluates as the official code does:
every view runs all N_sup steps, test inputs untranslated (pipeline/computation.py). Anything else is a
departure the user asks for (--adaptive-halting, --translate, --crop, --set); the log says which in one line.

Every task of the challenges file gets an entry: broken tasks, model errors and anything past
--time-budget get a logged fallback and never cost another task. A sidecar `<out>.details.json` holds
votes, halting steps and seconds per test input for `stages.score --report`. The last line says how many
test inputs the model predicted and why the others fell back.

Several checkpoints make an ensemble (pipeline/prediction/ensemble.py): the views per test input (--augs, else the first
checkpoint's predict.augs) are split among them by --weights, each computes as it was trained, and their votes
are pooled by weighted vote share before the two attempts are chosen; a member that cannot be loaded or fails
costs only its share.

Exit status: 0 written; 2 bad input (one line, nothing written); 3 written, but the model predicted none
of the valid tasks' test inputs (every one failed, gave no valid view or did not fit the canvas): the
submission holds fallbacks only and must not be scored as the model's (a time budget that ran out before
any prediction is not such a failure).
"""
from __future__ import annotations

import argparse
import logging
import time

from pipeline.checkpoint import load_for_prediction
from pipeline.computation import describe
from pipeline.prediction.ensemble import members, predict_members
from pipeline.prediction.challenges import (LoadSettings, load_challenges, predict_challenges, predict_per_task_runs,
                                            summary_line, write_submission)
from pipeline.prediction.infer import PredictOptions
from pipeline.layout import Checkpoint
from pipeline.training.metrics import setup_logging
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.training.ttt import ttt_index
from stages._cli import positive_int, run

log = logging.getLogger("predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="run folder (its latest complete checkpoint) or checkpoint folder; several: an ensemble")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="ensemble: one vote weight per checkpoint (default 1 each)")
    p.add_argument("--challenges", required=True, help="Kaggle-format *_challenges.json (solutions are never read)")
    p.add_argument("--out", required=True, help="submission.json to write")
    p.add_argument("--augs", type=positive_int, default=None, help="views per test input (default: the checkpoint's predict.augs)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--adaptive-halting", action="store_true",
                   help="departure: stop each view when its halting logit turns positive (predict.adaptive_halting; "
                        "default: all N_sup steps, as the official evaluation)")
    p.add_argument("--translate", action=argparse.BooleanOptionalAction, default=None,
                   help="departure: views 1..N-1 at random offsets (predict.translate; default: untranslated, as "
                        "the official evaluation)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="task-sized sequences (compute.crop) on or off, whatever the checkpoint trained with "
                        "(default: its own); see BENCHMARKS.md for what it costs in accuracy")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides on the checkpoint's config, e.g. predict.translate=true compute.crop=true")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; tasks not reached in time get fallbacks")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def overrides_of(args) -> list[str]:
    """The flags as `key=value` overrides of the checkpoint's config (--set last, so it wins)."""
    flags = [("predict.augs", args.augs), ("predict.batch_size", args.batch_size),
             ("predict.adaptive_halting", True if args.adaptive_halting else None),
             ("predict.translate", args.translate), ("compute.crop", args.crop)]
    return [f"{k}={str(v).lower()}" for k, v in flags if v is not None] + list(args.set)


def main(argv=None) -> int:
    args = parse_args(argv)
    rt = init_runtime(args.device, "auto", 0)
    t_start = time.perf_counter()
    try:
        setup_logging(None, rt.is_main)
        challenges, valid = load_challenges(args.challenges)
        overrides = overrides_of(args)
        deadline = t_start + args.time_budget if args.time_budget else None
        ensemble = members(args.checkpoint, args.weights)
        index = ttt_index(args.checkpoint[0]) if len(ensemble) == 1 else {}
        if len(ensemble) > 1:
            answers = predict_members(ensemble, valid, rt, overrides, args.augs, not args.raw_weights, deadline,
                                      show_progress=not args.no_progress)
        elif "per_task" in index:  # a `stages.ttt --per-task` folder: each task has its own model
            log.info("per-task TTT runs for %d tasks, each computing as its run was trained%s",
                     len(index["per_task"]), f"; overrides: {' '.join(overrides)}" if overrides else "")
            answers = predict_per_task_runs(index["per_task"], index["base"], valid, rt,
                                            LoadSettings(overrides, use_ema=not args.raw_weights), deadline)
        else:
            loaded = load_for_prediction(Checkpoint.open(args.checkpoint[0]), rt.device, not args.raw_weights, overrides)
            log.info("%s", describe(loaded.departures))
            answers = predict_challenges(loaded, valid, PredictOptions.of(loaded.config, rt), rt, deadline,
                                         show_progress=not args.no_progress)
        if rt.is_main:
            sub, notes = write_submission(args.out, challenges, answers)
            for n in notes:
                log.warning("%s", n)
            log.info("wrote %s: %d tasks, %d test inputs, %.1fs", args.out, len(sub),
                     sum(len(v) for v in sub.values()), time.perf_counter() - t_start)
            if answers.model_predicted_nothing():
                log.error("%s; the model predicted none of the valid tasks' inputs (exit 3)",
                          summary_line(sub, answers))
                return 3
            log.info("%s", summary_line(sub, answers))
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    run(main)
