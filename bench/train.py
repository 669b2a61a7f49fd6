"""Training throughput of the real training step (Trainer.train_step: ACT step, loss, backward, AdamATan2,
sign-SGD, EMA), compile time and warm-up excluded.

    python -m bench.train --config configs/demo_cpu.yaml
    python -m bench.train --config configs/arc2_4xh100.yaml --set train.global_batch=192   # one H100
    python -m bench.train --config configs/arc2_4xh100.yaml --set train.global_batch=192 compute.crop=true \
        compute.crop_groups=8 data.max_offset=1 "data.sources=[arc:evaluation2#demos]"   # crop, ARC-AGI-2 eval sizes
    python -m bench.train --config configs/hrm_arc2.yaml --set train.global_batch=4   # any model.arch's preset

Prints JSON last: samples_per_s, tokens_per_s (grid cells the model ran per second), mean_tokens (per
example-step), tflops_per_s and mfu (GPU; model FLOPs of the rectangles actually run under compute.crop, of
the full canvas otherwise), peak_mem_gb, ms_per_step, device. The anchor (official TRM, one H100, ARC
config, batch 192, bf16, compiled): 887 samples/s, ~44% MFU in its own FLOP count; `--anchor 887` prints
anchor_mfu, its MFU in ours (the model's FLOPs per sample as run here, over an H100's bf16 peak).
`--count-syncs N` then counts the host syncs of N compiled ACT steps and N optimiser steps (bench/syncs.py).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from bench.common import emit, rss_mb
from bench.syncs import train_syncs
from pipeline.training.build import build_run
from pipeline.config import load_config
from pipeline.runtime import init_runtime
from pipeline.training.train import PEAK_BF16_FLOPS, peak_flops


def rectangles(model, args) -> list[tuple[int, int]]:
    """(examples, grid cells) of each rectangle one TRM.forward(inputs, vecs, y, z, crop) call runs (a masked
    `Crop` runs its covering rectangle for every example)."""
    inputs, crop = args[0], args[4] if len(args) > 4 else None
    P = model.cfg.puzzle_emb_len
    parts = crop if isinstance(crop, list) else [(inputs, crop)]
    return [(len(s), model.cfg.seq_len if c is None else c.keep.shape[0] - P) for s, c in parts]


def work(model, ran: list[tuple[int, int]]) -> tuple[int, float]:
    """Grid cells and model FLOPs of the rectangles run: (examples, grid cells) each."""
    return sum(n * t for n, t in ran), sum(model.flops_per_step(n, t) for n, t in ran)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--anchor", type=float, default=None,
                   help="samples/s of a reference run on one H100: prints its MFU in this FLOP count (anchor_mfu)")
    p.add_argument("--count-syncs", type=int, default=0, metavar="N",
                   help="then count the host syncs of N ACT steps and N optimiser steps (needs CUDA to count)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.set, f"run_dir={tmp}", "train.progress=false"])
        rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
        run = build_run(cfg, rt, eval_fn=None)
        model, trainer = run.model, run.trainer
        trainer.prepare()
        ran: list[tuple[int, int]] = []  # (examples, grid cells) of every rectangle run
        if model.compute.crop:  # forward runs eagerly under crop (runtime.compile_model compiles _step), so it sees this
            model.register_forward_pre_hook(lambda m, a: ran.extend(rectangles(m, a)))
        sync = rt.synchronize
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            trainer.train_step()
        sync()
        warm_s = time.perf_counter() - t0
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ran.clear()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        sync()
        total = time.perf_counter() - t0
        dt = total / args.steps
        peak = peak_flops(rt.device)
        B = cfg.train.global_batch
        ran = ran or [(B, model.cfg.seq_len)] * args.steps  # the full canvas every step
        cells, flops = work(model, ran)
        mem = torch.cuda.max_memory_allocated() / 2**30 if rt.device.type == "cuda" else rss_mb() / 1024
        out = {"bench": "train", "config": args.config, "overrides": args.set, "arch": cfg.model.arch, "batch": B,
               "dtype": str(rt.dtype), "compiled": rt.compiles(cfg.compute.compile), "crop": model.compute.crop,
               "ms_per_step": dt * 1e3, "samples_per_s": B / dt, "warmup_s": warm_s,
               "tokens_per_s": cells / total, "mean_tokens": cells / (B * args.steps),
               "tflops_per_s": flops / total / 1e12, "mfu": flops / total / peak if peak else None,
               "peak_mem_gb": mem, "params_m": model.num_params() / 1e6}
        if args.anchor:
            out["anchor_mfu"] = args.anchor * flops / (B * args.steps) / PEAK_BF16_FLOPS["H100"]
        if args.count_syncs:
            out["syncs"] = train_syncs(trainer, rt, args.count_syncs)
        emit(out)


if __name__ == "__main__":
    main()
