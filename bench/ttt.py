"""Test-time training throughput, to feed the budget planner: the real TTT data path (hidden tasks'
demonstrations, new ids) and the real training step, compile time and warm-up excluded.

    python -m bench.ttt                                              # ttt_full preset over the ARC config
    python -m bench.ttt --base configs/demo_cpu.yaml --config configs/demo_ttt.yaml --tasks synthetic:tasks=8
    python -m bench.ttt --set train.global_batch=96                  # one L4's share of the 384 batch

The model is the base config's with random weights (speed does not depend on the weights). Prints JSON last:
steps_per_s, samples_per_s, ms_per_step, batch, tasks, puzzle ids, mfu (GPU), device.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from bench.common import emit, rss_mb
from pipeline.training.build import build_run
from pipeline.config import load_config, to_dict
from pipeline.runtime import init_runtime, shutdown_runtime
from pipeline.data.sources import load_source
from pipeline.training.train import peak_flops
from pipeline.training.ttt import ttt_dataset


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="configs/arc2_4xh100.yaml", help="the pretrained model's config")
    p.add_argument("--config", default="configs/ttt_full.yaml", help="TTT preset (deltas over --base)")
    p.add_argument("--tasks", default="../shared/arc/arc-agi_evaluation2_challenges.json",
                   help="hidden tasks: a challenges file or any source spec (their demonstrations are used)")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = to_dict(load_config(args.base))
        cfg = load_config(args.config, [*args.set, f"run_dir={tmp}", "train.progress=false", "train.init_from="], base=base)
        rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
        tasks = load_source(args.tasks, cfg.data.arc_root).tasks
        data, _ = ttt_dataset(cfg, tasks, None)
        run = build_run(cfg, rt, data, eval_fn=None, prefix="ttt")
        trainer = run.trainer
        trainer.prepare()
        for _ in range(args.warmup):
            trainer.train_step()
        rt.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        rt.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        B, peak = cfg.train.global_batch, peak_flops(rt.device)
        emit({"bench": "ttt", "base": args.base, "config": args.config, "overrides": args.set, "batch": B,
              "tasks": data.packed.num_tasks, "demos": int(data.packed.task_ex_count.sum()),
              "puzzle_ids": data.ids.num_ids, "trainable": cfg.train.trainable, "dtype": str(rt.dtype),
              "compiled": rt.compiles(cfg.compute.compile), "ms_per_step": dt * 1e3, "steps_per_s": 1 / dt,
              "samples_per_s": B / dt, "mfu": run.model.flops_per_step(B) / dt / peak if peak else None,
              "peak_rss_mb": rss_mb()})
        shutdown_runtime()


if __name__ == "__main__":
    main()
