"""Pretrain TRM.

    python -m stages.pretrain --config configs/demo_cpu.yaml                 # CPU, minutes
    python -m stages.pretrain --config configs/arc1_1gpu.yaml                 # one GPU
    torchrun --nproc-per-node 4 -m stages.pretrain --config configs/arc2_4xh100.yaml
    make pretrain CONFIG=configs/arc2_4xh100.yaml NPROC=4                     # the same via make

Overrides: `--set train.steps=100 model.hidden=128`. A restarted run resumes from the latest complete
checkpoint in its run folder. `train.engine=deepspeed` uses a DeepSpeed ZeRO engine instead of DDP.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from pipeline.config import dump_config, load_config
from pipeline.dataset import build_dataset
from pipeline.infer import evaluate_heldout
from pipeline.metrics import setup_logging
from pipeline.model import TRM
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.sampler import Sampler
from pipeline.train import Trainer
from stages._cli import run

log = logging.getLogger("pretrain")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML preset under configs/")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
    try:
        run_dir = Path(cfg.run_dir)
        setup_logging(run_dir, rt.is_main)
        log.info("config:\n%s", dump_config(cfg))
        log.info("runtime: %s", rt)
        data = build_dataset(cfg.data, cfg.seed)
        log.info("%d tasks (%d skipped as invalid), %d puzzle ids", data.packed.num_tasks, len(data.problems),
                 data.ids.num_ids)
        model = TRM(cfg.model, data.ids.num_ids).to(rt.device)
        log.info("model: %.2fM trunk parameters", model.num_params() / 1e6)
        sampler = Sampler(data.packed, data.ids, cfg.data, cfg.train.global_batch, cfg.seed, rt.rank, rt.world_size)
        eval_cfg = dataclasses.replace(cfg.predict, augs=cfg.data.eval_views)

        def eval_fn(m):
            return evaluate_heldout(m, data.packed, data.ids, eval_cfg, cfg.data.canvas, rt.device, rt.dtype,
                                    cfg.data.eval_inputs)

        trainer = Trainer(model, sampler, cfg.train, rt, run_dir, cfg.seed, dump_config(cfg), data.packed.task_ids,
                          eval_fn)
        result = trainer.fit()
        log.info("done: %s", result)
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    run(main)
