"""Pretrain TRM.

    python -m stages.pretrain --config configs/demo_cpu.yaml                 # CPU, minutes
    python -m stages.pretrain --config configs/arc1_1gpu.yaml                 # one GPU
    torchrun --nproc-per-node 4 -m stages.pretrain --config configs/arc2_4xh100.yaml
    make pretrain CONFIG=configs/arc2_4xh100.yaml NPROC=4                     # the same via make
    python -m stages.pretrain --config configs/arc2_4xh100.yaml configs/ablations/no_ema.yaml    # an ablation

Overrides: `--set train.steps=100 model.hidden=128`. A restarted run resumes from the latest complete
checkpoint in its run folder. Rank 0 first records the canonical hashes of every trained pair in
RUN/trained_pairs.npz (pipeline/overlap.py), which `make score` checks the scored tasks against. `train.engine=deepspeed` uses a DeepSpeed ZeRO engine instead of DDP.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.training.build import build_run
from pipeline.config import dump_config, load_config
from pipeline.training.metrics import setup_logging
from pipeline.overlap import record_trained_pairs
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.training.train import wall_clock_stop
from stages._cli import run

log = logging.getLogger("pretrain")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, nargs="+",
                   help="YAML preset(s) under configs/, applied in order (a base, then configs/ablations/X.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop at the first step boundary after this many minutes (with a checkpoint); 0 = run to train.steps")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
    try:
        setup_logging(Path(cfg.run_dir), rt.is_main)
        log.info("config:\n%s", dump_config(cfg))
        log.info("runtime: %s", rt)
        run = build_run(cfg, rt)
        if rt.is_main:  # what this run trains on, for `make score`'s contamination check (pipeline/overlap.py)
            record_trained_pairs(Path(cfg.run_dir), run.data.packed, cfg.data.sources, cfg.train.init_from)
        result = run.trainer.fit(wall_clock_stop(args.max_minutes))
        log.info("done: %s", result)
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    run(main)
