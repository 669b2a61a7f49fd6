"""Time-to-accuracy of the trunk optimisers: training steps and seconds until a fixed synthetic suite reaches
90% exact (pass@1, EMA weights, as the run's own held-out evaluation) on held-out test inputs, per seed, for
`adam_atan2` (official TRM), `adamw` and `muon`, in two settings:

- `scratch` (pretraining): configs/demo_cpu.yaml as it was (RECORDED_DEMO; 8 tasks, 2 each of flip_lr, flip_ud, colour_map,
  recolour, 400 demonstrations each; their 64 test inputs held out) except the optimiser and its lr;
- `ttt` (test-time training): one checkpoint pretrained by the demo config (AdamW, seed 0, its 1000 steps)
  is fine-tuned with configs/demo_ttt.yaml on 4 tasks held out of pretraining (`HELD`: new colour maps and
  new target colours of the colour_map / recolour families, 64 demonstrations each), from their
  demonstrations only; their 32 test inputs score it. Held out are new tasks of seen families, not new
  families (TTT cannot learn a new family in a few hundred CPU steps at this size).

    python -m bench.tta                                      # 3 seeds x 3 optimisers x 2 settings
    python -m bench.tta --seeds 0 --settings scratch --optimizers muon --max-steps 400    # a quick look
    python -m bench.tta --lr muon=2e-3 --rows /tmp/rows.json  # another lr; per-run rows to a file
    python -m bench.tta --settings ttt --set compute.crop=false    # config overrides for every run
    python -m bench.tta --seeds 0 --optimizers adam_atan2 --max-steps 4 --eval-every 2 --pretrain-steps 4 \
        --set data.eval_views=1                                    # a smoke run (the test suite's)

Each optimiser runs at its own lr (LR below, chosen by the sweep recorded in bench/results/tta.md); the
schedule is each config's (warm-up then constant). Evaluation every --eval-every steps (its time is not
counted in the seconds). Prints JSON last: per setting and optimiser the steps to 90% for each seed
(None = not reached by --max-steps), their median and the official optimiser's median over it (speedup).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import emit
from pipeline.training.build import build_run, heldout_eval_fn
from pipeline.config import load_config
from pipeline.data.dataset import build_dataset, fit_canvas
from pipeline.prediction.infer import PredictOptions, evaluate_heldout
from pipeline.layout import Checkpoint
from pipeline.runtime import init_runtime
from pipeline.data.packed import pack_tasks
from pipeline.data.sources import LoadResult
from pipeline.data.synthetic import synthetic_tasks
from pipeline.data.tasks import write_json_atomic
from pipeline.training.train import Stop
from pipeline.training.ttt import ttt_config, ttt_dataset

OPTIMIZERS = ("adam_atan2", "adamw", "muon")
SETTINGS = ("scratch", "ttt")
OFFICIAL = "adam_atan2"
TARGET = 0.9
HELD = "tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=colour_map+recolour"
RECORDED_DEMO = ['data.sources=["synthetic:tasks=8,seed=0,size=4,demos=400,tests=8,fixed=1,'
                 'families=flip_lr+flip_ud+colour_map+recolour#demos"]', "train.lr_min_ratio=1.0"]
"""The demo config's data and lr schedule when bench/results/tta.md was measured (it has since gone to 2000
demonstrations and a decaying lr: BENCHMARKS.md, "The same results on every machine")."""
PRETRAIN = ["train.optimizer=adamw", "train.lr=1e-3", "seed=0", *RECORDED_DEMO]
"""The TTT setting's checkpoint: the demo config as committed before Muon (AdamW), pinned here so that the
TTT comparison does not move when the demo's default optimiser changes."""
LR = {"scratch": {"adam_atan2": 1e-3, "adamw": 1e-3, "muon": 1e-3},
      "ttt": {"adam_atan2": 3e-3, "adamw": 3e-3, "muon": 1e-2}}
"""Each optimiser's lr per setting (muon: the Muon matrices and the AdamW rest alike, Muon's update scaled
to AdamW's RMS), the fewest steps to 90% on seed 0 over {1e-3, 3e-3, 1e-2} (muon also 3e-2), ties to the
higher pass@1 one evaluation earlier: bench/results/tta.md."""
STEPS = {"scratch": 1500, "ttt": 600}
EVAL_EVERY = {"scratch": 50, "ttt": 10}


def pretrained_checkpoint(work: Path, steps: int = 0) -> Path:
    """The TTT setting's starting point, trained once per work folder (a rerun resumes its finished run);
    `steps` > 0 shortens it, without its evaluation (a smoke run: the TTT figures then mean nothing)."""
    run_dir = work / "pretrained"
    cfg = load_config("configs/demo_cpu.yaml", [f"run_dir={run_dir}", "train.progress=false", *PRETRAIN,
                                                *([f"train.steps={steps}", "data.eval_inputs=-1"] if steps else [])])
    build_run(cfg, init_runtime("cpu", "float32", cfg.seed), eval_fn="heldout").trainer.fit()
    return run_dir


def ttt_eval_fn(cfg, rt, data):
    """Held-out test inputs of the TTT tasks: the same tasks (same order, so the same puzzle ids) with their
    test outputs, which TTT never trains on."""
    result = fit_canvas(LoadResult(tasks=synthetic_tasks(HELD, train_on_test=False)), cfg.data.canvas)
    packed = pack_tasks(result.tasks)
    if packed.task_ids != data.packed.task_ids:
        raise RuntimeError("TTT evaluation tasks differ from the trained ones")
    opts = PredictOptions.of(cfg, rt, dataclasses.replace(cfg.predict, augs=cfg.data.eval_views))

    def eval_fn(model):
        return evaluate_heldout(model, packed, data.ids, opts)

    return eval_fn


def one_run(setting: str, optimizer: str, seed: int, lr: float, max_steps: int, eval_every: int, work: Path,
            extra: list[str], pretrain_steps: int = 0) -> dict:
    run_dir = work / f"{setting}-{optimizer}-{lr:g}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # every run starts fresh (a kept folder would be resumed)
    overrides = [f"seed={seed}", f"train.optimizer={optimizer}", f"train.lr={lr}", f"train.steps={max_steps}",
                 f"train.eval_every={eval_every}", f"train.ckpt_every={max_steps}", f"train.log_every={eval_every}",
                 "train.progress=false", *extra]
    init_rows, rt = None, init_runtime("cpu", "float32", 0)
    if setting == "scratch":
        cfg = load_config("configs/demo_cpu.yaml", [*RECORDED_DEMO, *overrides, f"run_dir={run_dir}"])
        data = build_dataset(cfg.data, cfg.seed)
        evaluate = heldout_eval_fn(cfg, rt, data)
    else:
        warm = Checkpoint.open(pretrained_checkpoint(work, pretrain_steps))
        cfg = ttt_config(warm, "configs/demo_ttt.yaml", overrides, run_dir)
        data, init_rows = ttt_dataset(cfg, synthetic_tasks(HELD), warm)
        evaluate = ttt_eval_fn(cfg, rt, data)
    curve, clock = [], {"eval_s": 0.0}

    def timed_eval(model):
        t0 = time.perf_counter()
        train_s = t0 - clock["start"] - clock["eval_s"]  # the evaluations so far are not training time
        out = evaluate(model)
        clock["eval_s"] += time.perf_counter() - t0
        curve.append({"step": run.trainer.step, "pass@1": out["pass@1"], "pass@2": out["pass@2"],
                      "train_s": round(train_s, 2)})
        return out

    init_runtime("cpu", "float32", seed)  # seeds torch and numpy as stages.pretrain / stages.ttt do
    run = build_run(cfg, rt, data, init_rows, eval_fn=timed_eval, prefix=setting)
    hit = lambda: next((c for c in curve if c["pass@1"] >= TARGET), None)  # noqa: E731
    clock["start"] = time.perf_counter()
    run.trainer.fit(Stop(when=lambda step: hit() is not None))
    first = hit()
    return {"setting": setting, "optimizer": optimizer, "seed": seed, "lr": lr, "max_steps": max_steps,
            "eval_every": eval_every, "steps_to_target": first["step"] if first else None,
            "seconds_to_target": first["train_s"] if first else None,
            "best_pass@1": max((c["pass@1"] for c in curve), default=0.0), "curve": curve}


def summarise(rows: list[dict]) -> dict:
    """Per setting and optimiser: steps per seed, their median (a seed not reaching counts as infinite) and
    the official optimiser's median over it."""
    out: dict = {}
    for r in rows:
        s = out.setdefault(r["setting"], {}).setdefault(r["optimizer"], {"lr": r["lr"], "steps": [], "seconds": []})
        s["steps"].append(r["steps_to_target"])
        s["seconds"].append(r["seconds_to_target"])
    for per_opt in out.values():
        for s in per_opt.values():
            med = statistics.median([x if x is not None else float("inf") for x in s["steps"]])
            s["median_steps"] = None if med == float("inf") else med
            reached = [x for x in s["seconds"] if x is not None]
            s["mean_seconds_reached"] = round(statistics.mean(reached), 1) if reached else None
        base = per_opt.get(OFFICIAL, {}).get("median_steps")
        for s in per_opt.values():
            s["speedup_vs_official"] = round(base / s["median_steps"], 2) if base and s["median_steps"] else None
    return out


def markdown(summary: dict) -> str:
    """The summary as the BENCHMARKS.md table (steps per seed, '-' = not reached)."""
    lines = ["| setting | optimizer | lr | steps to 90% per seed | median | x official | mean s (reached) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting, per_opt in summary.items():
        for opt, s in per_opt.items():
            steps = ", ".join("-" if x is None else str(x) for x in s["steps"])
            lines.append(f"| {setting} | {opt} | {s['lr']:g} | {steps} | {s['median_steps'] or '-'} | "
                         f"{s['speedup_vs_official'] or '-'} | {s['mean_seconds_reached'] or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--lr", nargs="*", default=[], metavar="OPT=LR", help="override an optimiser's lr (all settings)")
    p.add_argument("--max-steps", type=int, default=0, help=f"step cap per run (0: {STEPS})")
    p.add_argument("--eval-every", type=int, default=0, help=f"evaluation interval (0: {EVAL_EVERY})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (after the presets; TTT: not the pretrained checkpoint)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="steps of the TTT setting's pretraining (0: the demo config's 1000; fewer only for a smoke run)")
    p.add_argument("--work", default="", help="keep run folders (and the pretrained checkpoint) here")
    p.add_argument("--rows", default="", help="write the per-run rows (with curves) to this JSON file")
    args = p.parse_args(argv)
    lr_override = {k: float(v) for k, v in (item.split("=", 1) for item in args.lr)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows = []
        for setting in args.settings:
            for seed in args.seeds:
                for opt in args.optimizers:
                    lr = lr_override.get(opt, LR[setting][opt])
                    rows.append(one_run(setting, opt, seed, lr, args.max_steps or STEPS[setting],
                                        args.eval_every or EVAL_EVERY[setting], work, args.set, args.pretrain_steps))
                    r = rows[-1]
                    print(f"{setting} {opt} lr={lr:g} seed={seed}: steps to {TARGET:.0%} = {r['steps_to_target']} "
                          f"({r['seconds_to_target']} s), best pass@1 {r['best_pass@1']:.3f}", flush=True)
                    if args.rows:
                        write_json_atomic(args.rows, rows)
        summary = summarise(rows)
        print(markdown(summary), flush=True)
        emit({"bench": "tta", "target_pass@1": TARGET, "overrides": args.set, "threads": torch.get_num_threads(),
              "summary": summary, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows]})


if __name__ == "__main__":
    main()
