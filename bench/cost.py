"""What the recipe costs in GPU-hours, step by step: pretraining (on 4xH100 and 8xH100), TTT and prediction (on the
Kaggle machine, 4xL4), for the 7M and the 14M model, on the 1280-task mix and on 100k puzzles.

    python -m bench.cost                     # the table (JSON rows, then the summary last)
    python -m bench.cost --mfu-train 0.13    # another assumption (see --help)

Formula, for every row:
    FLOP     = samples x FLOPs per sample      (TRM.flops_per_step(1): one training supervision step of one example,
                                                forward of all H cycles + backward of the last; prediction: the
                                                forward of one view-step, bench.budget.forward_flops)
    wall h   = FLOP / (GPUs x peak bf16 x MFU x DDP efficiency) / 3600   (efficiency 1 for prediction: sharded)
    GPU-h    = wall h x GPUs
Samples: pretraining = steps x global batch (the official schedule, 722,098 x 768 for the 1280 tasks; for 100k
puzzles the same steps, i.e. 80x fewer samples per puzzle, and the samples-per-task-matched run, 80x longer);
TTT = configs/ttt_full.yaml (15,000 steps x 384); prediction = 340 test inputs x 1000 views x N_sup steps (16 in
both presets: every view runs all N_sup steps: the budget planner's worst case; adaptive halting stops earlier).
GPU figures: bf16 dense peak H100 989 TFLOP/s, L4 121 (pipeline/training/train.py PEAK_BF16_FLOPS); MFU from the
official TRM anchors on one H100 (887 training samples/s at batch 192: 0.357 on our FLOP count; 95 puzzles/s at 16
steps: 0.367), taken for the 14M model and for the L4 too; DDP at 90% of linear. Check against a cited figure: the 7M
model's official schedule on 4xH100 comes out at 48 h, as McGovern reports (arXiv 2511.02886: "700k+ optimizer steps
over 48 hours on 4xH100"). The field's caution: McGovern's ~15k TTT steps filled a 12 h Kaggle run on 4xL4, an effective
MFU near 0.13 (`--mfu-ttt 0.13`), so the L4 rows are optimistic by up to ~2.7x.
"""
from __future__ import annotations

import argparse
import json

from bench.budget import anchor_mfu, flop_model, forward_flops
from bench.common import emit
from pipeline.config import load_config
from pipeline.training.train import PEAK_BF16_FLOPS

MODELS = {"7M": "configs/arc2_4xh100.yaml", "14M": "configs/arc2_14m.yaml"}
TASKS_1280, PUZZLES_100K = 1280, 103_223


def flops(config: str) -> dict:
    """FLOPs per training sample-step and per prediction view-step of a config's model (no weights needed)."""
    model = flop_model(load_config(config).model)
    return {"train": model.flops_per_step(1), "view": forward_flops(model), "n_sup": model.cfg.halt_max_steps,
            "cfg": model.cfg}


def row(model: str, data: str, step: str, gpus: int, gpu: str, samples: float, flop_per_sample: float, mfu: float,
        efficiency: float) -> dict:
    total = samples * flop_per_sample
    wall_h = total / (gpus * PEAK_BF16_FLOPS[gpu] * mfu * efficiency) / 3600
    return {"model": model, "data": data, "step": step, "hardware": f"{gpus}x{gpu}", "samples": samples,
            "gflop_per_sample": flop_per_sample / 1e9, "total_eflop": total / 1e18, "mfu": mfu,
            "ddp_efficiency": efficiency, "wall_h": wall_h, "gpu_h": wall_h * gpus}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=722_098, help="the official schedule for the 1280 tasks")
    p.add_argument("--batch", type=int, default=768)
    p.add_argument("--ttt-steps", type=int, default=15_000)
    p.add_argument("--ttt-batch", type=int, default=384)
    p.add_argument("--inputs", type=int, default=340, help="hidden test inputs (240 tasks)")
    p.add_argument("--views", type=int, default=1000)
    p.add_argument("--mfu-train", type=float, default=0.0, help="0: the official H100 anchor's (0.357)")
    p.add_argument("--mfu-ttt", type=float, default=0.0, help="0: as --mfu-train")
    p.add_argument("--mfu-infer", type=float, default=0.0, help="0: the official H100 anchor's (0.367)")
    p.add_argument("--ddp-efficiency", type=float, default=0.9)
    args = p.parse_args(argv)
    anchor_train, anchor_infer = anchor_mfu()
    mfu_train = args.mfu_train or anchor_train
    mfu_ttt = args.mfu_ttt or mfu_train
    mfu_infer = args.mfu_infer or anchor_infer
    pre = args.pretrain_steps * args.batch
    rows, view_steps = [], {}
    for name, config in MODELS.items():
        f = flops(config)
        view_steps[name] = args.inputs * args.views * f["n_sup"]
        for data, samples in (("1280 tasks", pre), ("100k puzzles, same steps", pre),
                              ("100k puzzles, same samples per task", pre * PUZZLES_100K / TASKS_1280)):
            for gpus in (4, 8):
                rows.append(row(name, data, "pretrain", gpus, "H100", samples, f["train"], mfu_train,
                                args.ddp_efficiency))
        rows.append(row(name, "240 hidden tasks", "ttt", 4, "L4", args.ttt_steps * args.ttt_batch, f["train"], mfu_ttt,
                        args.ddp_efficiency))
        rows.append(row(name, "240 hidden tasks", "predict", 4, "L4", view_steps[name], f["view"], mfu_infer, 1.0))
    for r in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    emit({"bench": "cost", "rows": rows, "assumptions": {
        "peak_bf16_tflops": {g: PEAK_BF16_FLOPS[g] / 1e12 for g in ("H100", "L4")}, "mfu_train": mfu_train,
        "mfu_ttt": mfu_ttt, "mfu_infer": mfu_infer, "ddp_efficiency": args.ddp_efficiency,
        "pretrain_samples": pre, "ttt_samples": args.ttt_steps * args.ttt_batch,
        "predict_view_steps": view_steps}})


if __name__ == "__main__":
    main()
