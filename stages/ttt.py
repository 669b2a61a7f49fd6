"""Test-time training: fit a pretrained checkpoint to the tasks of a challenges file from their
demonstrations (test outputs are never read), then predict with the run folder.

    python -m stages.ttt --checkpoint runs/arc2/pretrain --challenges FILE --out runs/ttt
    python -m stages.ttt ... --config configs/ttt_nvarc.yaml --set train.steps=2000
    python -m stages.ttt ... --config configs/ttt_full.yaml configs/ttt_fast.yaml   # + speed-ups (departures)
    python -m stages.ttt ... --set train.trainable=lora train.lora_rank=8     # or embeddings, embeddings_then_all
    python -m stages.ttt ... --holdout-demos       # leave one demonstration per task out to measure pass@2
    python -m stages.ttt ... --per-task            # one short run per task instead of one joint run
    torchrun --nproc-per-node 4 -m stages.ttt ...  # joint: DDP; --per-task: tasks spread over the GPUs
    python -m stages.predict --checkpoint runs/ttt --challenges FILE --out submission.json

The config is the checkpoint's own (it computes as the checkpoint was trained, evaluated officially), then the
presets' deltas in order (default configs/ttt_full.yaml), then --set; the log says in one line what departs
from the checkpoint's computation (ttt.json keeps it). A killed run resumes from its folder. New tasks start
from the mean puzzle embedding of the checkpoint; tasks the checkpoint already knows keep theirs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import dump_config
from pipeline.prediction.challenges import load_challenges
from pipeline.layout import Checkpoint
from pipeline.training.metrics import setup_logging
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.data.tasks import DataError
from pipeline.training.ttt import run_ttt, run_ttt_per_task, ttt_config, ttt_departures
from pipeline.training.train import wall_clock_stop
from stages._cli import run

log = logging.getLogger("ttt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="pretrained run folder (its latest checkpoint) or checkpoint folder")
    p.add_argument("--challenges", required=True, help="Kaggle-format *_challenges.json (demonstrations are trained on)")
    p.add_argument("--out", required=True, help="TTT run folder (checkpoints, metrics; resumes if it exists)")
    p.add_argument("--config", nargs="+", default=["configs/ttt_full.yaml"],
                   help="TTT presets, deltas over the checkpoint's config applied in order (a recipe, then e.g. "
                        "configs/ttt_fast.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.steps=2000")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop at the first step boundary after this many minutes (with a checkpoint); 0 = run to train.steps")
    p.add_argument("--holdout-demos", action="store_true",
                   help="hold the last demonstration of tasks with >= 3 out of training and report pass@2 on it")
    p.add_argument("--per-task", action="store_true", help="one run per task (RUN/tasks/<id>/) instead of one joint run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pretrained = Checkpoint.open(args.checkpoint)
    cfg = ttt_config(pretrained, args.config, args.set, args.out, sources=[str(args.challenges)])
    rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
    try:
        setup_logging(Path(args.out), rt.is_main)
        log.info("config:\n%s", dump_config(cfg))
        found = ttt_departures(cfg, pretrained, args.config)
        _, valid = load_challenges(args.challenges)
        if not valid.tasks:
            raise DataError(f"{args.challenges}: no valid task to train on")
        if args.per_task:
            results = run_ttt_per_task(cfg, rt, valid.tasks, pretrained, args.holdout_demos,
                                       wall_clock_stop(args.max_minutes), found)
            log.info("done: %d per-task runs on this rank", len(results))
        else:
            result = run_ttt(cfg, rt, valid.tasks, pretrained, args.holdout_demos, wall_clock_stop(args.max_minutes),
                             found)
            log.info("done: %s", result.metrics)
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    run(main)
