"""The TRM paper's ablations (TRM Table 1: configs/ablations/*.yaml) and HRM side by side on a CPU suite, over
several seeds: held-out pass@2 (mean and spread), steps/s, training fit and trunk parameters per row, beside the
paper's numbers.

    python -m bench.ablation --jobs 2       # every row, 3 seeds, 400 steps: BENCHMARKS' table (~1.7 h on dev-cpu)
    python -m bench.ablation --rows trm no_ema --seeds 0 --steps 300   # a quick look

Base: configs/ablation_cpu.yaml (the demo's small network on synthetic tasks of sides 1..6 on an 8x8 canvas, with
the ARC command's layers 2, T=3, n=4; its header says why this suite). It keeps the depth and recursion that the
ablation presets are written against, so each row is its preset applied after the base as a user applies it
(`stages.pretrain --config configs/ablation_cpu.yaml configs/ablations/ROW.yaml`), the same change as over
configs/arc2_4xh100.yaml. Two rows need a layer in between: `self_attention` is the paper's MLP mixer -> attention,
so it is read against `mlp_t` (the mixer, the official Sudoku command's mlp_t=True pos_encodings=none); over this
attention base it is the base itself and reuses the base's runs. `hrm` (and the optional rows of the other
architectures) is the `model:` section of its ARC preset (configs/hrm_arc2.yaml: L and H of 4 blocks, T=2, n=2).

Each run is `stages.pretrain` as a subprocess (OMP_NUM_THREADS=1; --jobs of them at once) in
OUT/<row>_s<seed>_n<steps>/, reused when it finished before (resumed when it did not), only with the config, seed and
steps stamped in it (STAMP; another is refused); rows whose resolved configs are equal share runs. pass@2 is the
last evaluation's (at the last step; the one before it is printed too), steps/s the median of the run's logged
samples/s over the batch; the training exact accuracy, cross-entropy (`train/lm_loss`, without the halting terms)
and ACT steps are the last logged window's, over the supervision steps its batch was at (rows that halt earlier
are measured at earlier steps): how far each row fitted, next to how far it generalised. Prints a table and one
JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import emit
from pipeline.config import load_config, read_yaml, to_dict
from pipeline.nn.arch import build_model
from pipeline.training.metrics import read_metrics
from stages._cli import positive_int

ROOT = Path(__file__).resolve().parents[1]
BASE = "configs/ablation_cpu.yaml"
STAMP = "bench_ablation.json"  # in each run folder: the config, seed and steps it trained with
ABL = "configs/ablations"
PAPER_TASK = ("the paper's column is TRM Table 1 on Sudoku-Extreme (HRM: also ARC-AGI-1 / -2), a different task "
              "from this suite: compare signs and order, not sizes")


@dataclass(frozen=True)
class Row:
    layers: tuple[str, ...]  # applied after the base: a preset path, or a name in LAYERS
    paper: str               # the paper's figure (Sudoku-Extreme test accuracy, %)
    ref: str = "trm"         # the row its difference is read against


ROWS = {
    "trm": Row((), "87.4 (TRM; ARC-AGI-1 / -2: 44.6 / 7.8)"),
    "one_step_grad": Row((f"{ABL}/one_step_grad.yaml",), "56.5 (-30.9)"),
    "separate_fh_fl": Row((f"{ABL}/separate_fh_fl.yaml",), "82.4 (-5.0)"),
    "no_ema": Row((f"{ABL}/no_ema.yaml",), "79.9 (-7.5)"),
    "t2_n2": Row((f"{ABL}/t2_n2.yaml",), "73.7 (-13.7)"),
    "layers4_n3": Row((f"{ABL}/layers4_n3.yaml",), "79.5 (-7.9)"),
    "mlp_t": Row(("mlp_t",), "87.4 (the paper's Sudoku TRM is the mixer)"),
    "self_attention": Row(("mlp_t", f"{ABL}/self_attention.yaml"), "74.7 (-12.7 against the mixer)", ref="mlp_t"),
    "act_continue": Row((f"{ABL}/act_continue.yaml",), "86.1 (-1.3)"),
    "hrm": Row(("hrm",), "55.0 (-32.4); ARC-AGI-1 / -2: 40.3 / 5.0 against 44.6 / 7.8"),
}
EXTRA_ROWS = {a: Row((a,), "-") for a in ("trm_singlez", "trm_hier6", "transformers_baseline")}
ALL_ROWS = {**ROWS, **EXTRA_ROWS}
ARCH_PRESETS = {a: f"configs/{a}_arc2.yaml" for a in ("hrm", *EXTRA_ROWS)}


def layer(name: str) -> dict:
    """A named layer's YAML delta: the MLP mixer, or an architecture's `model:` section of its ARC preset (its
    data and training settings are the ARC run's, not this suite's)."""
    if name == "mlp_t":
        return {"model": {"mlp_t": True, "pos_encodings": "none"}}
    return {"model": read_yaml(ROOT / ARCH_PRESETS[name])["model"]}


def presets(row: str, base: str, out: Path) -> list[str]:
    """The --config list of a row: the base, then its layers (named layers written under OUT/layers/)."""
    paths = [base]
    for name in ALL_ROWS[row].layers:
        if name.endswith(".yaml"):
            paths.append(name)
            continue
        path = out / "layers" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(layer(name), sort_keys=False))
        paths.append(str(path))
    return paths


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resolved(paths: list[str], sets: list[str]) -> dict:
    """A row's resolved config, flattened, its run folder left out (what decides whether two rows are one)."""
    cfg = flat(to_dict(load_config([ROOT / p for p in paths], [*sets, "run_dir=x"])))
    del cfg["run_dir"]
    return cfg


def plan(rows: list[str], base: str, sets: list[str], out: Path) -> dict[str, dict]:
    """Per row: its presets, resolved config, the settings it changes over its reference row, and the row whose
    runs it uses (itself, or an earlier row with an equal config). Overrides may not touch a row's settings."""
    base_cfg, bare = resolved([base], sets), resolved([base], [])
    asked = {k.split("=")[0] for k in sets}
    out_rows: dict[str, dict] = {}
    for name in rows:
        paths = presets(name, base, out)
        own = resolved(paths, [])
        touched = asked & {k for k in own if own[k] != bare[k]}
        if touched:
            raise SystemExit(f"--set {' '.join(sorted(touched))}: row {name} changes it; leave it to the row")
        cfg = resolved(paths, sets)
        ref = ALL_ROWS[name].ref
        ref_cfg = resolved(presets(ref, base, out), sets) if ref != name else base_cfg
        same = next((p["runs_of"] for p in out_rows.values() if p["config"] == cfg), name)
        out_rows[name] = {"presets": paths, "config": cfg, "runs_of": same,
                          "changes": {k: v for k, v in cfg.items() if v != ref_cfg[k]}}
    return out_rows


def run_folder(out: Path, p: dict, seed: int, steps: int) -> Path:
    """A planned row's run of one seed (rows of equal configs share it: `runs_of`)."""
    return out / f"{p['runs_of']}_s{seed}_n{steps}"


def stamp(folder: Path, config: dict, seed: int, steps: int) -> None:
    """The run's resolved config in folder/STAMP, written before it trains; a folder trained (or started) with
    another one is refused, not reused or resumed (an edited preset, base or --set, or another bench's folder)."""
    want = json.loads(json.dumps({"config": config, "seed": seed, "steps": steps}, sort_keys=True))
    path = folder / STAMP
    if folder.exists():
        got = json.loads(path.read_text()) if path.exists() else None
        if got != want:
            raise SystemExit(f"{folder}: trained with another config than this bench's (see {STAMP}); remove it "
                             "or pass another --out")
        return
    folder.mkdir(parents=True)
    path.write_text(json.dumps(want, sort_keys=True, indent=1))


def train(folder: Path, paths: list[str], seed: int, steps: int, sets: list[str], config: dict) -> float | None:
    """One pretraining run unless it finished before (an evaluation at its last step); its wall seconds."""
    stamp(folder, config, seed, steps)
    if any(r.get("step") == steps and "eval/pass@2" in r for r in read_metrics(folder / "metrics.jsonl")):
        return None
    cmd = [sys.executable, "-m", "stages.pretrain", "--config", *paths, "--set", f"run_dir={folder}", f"seed={seed}",
           f"train.steps={steps}", "train.progress=false", *sets]
    log = folder.parent / f"{folder.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f,
                           stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"{folder.name} failed (exit {r.returncode}): see {log}")
    return time.perf_counter() - t0


def result(folder: Path, steps: int, batch: int) -> dict:
    """The last evaluation (at step `steps`; a run that stopped before is refused) and the one before it, the
    median logged training speed and the last logged window's training metrics of one run."""
    rows = [r for r in read_metrics(folder / "metrics.jsonl") if r["step"] <= steps]
    evals = [r for r in rows if "eval/pass@2" in r]
    if not evals or evals[-1]["step"] != steps:
        raise SystemExit(f"{folder.name}: no evaluation at step {steps} (the run stopped early): remove it")
    last, before = evals[-1], (evals[-2] if len(evals) > 1 else {})
    speeds = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    logged = [r for r in rows if "train/lm_loss" in r]
    return {"pass@2": last["eval/pass@2"], "pass@1": last["eval/pass@1"], "eval_step": last["step"],
            "pass@2_before": before.get("eval/pass@2"), "eval_step_before": before.get("step"),
            "steps_per_s": statistics.median(speeds) / batch if speeds else None,
            "lm_loss": logged[-1]["train/lm_loss"] if logged else None,
            "exact_accuracy": logged[-1]["train/exact_accuracy"] if logged else None,
            "act_steps": logged[-1]["train/steps"] if logged else None}


def mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.fmean(values) if values else None


def summarise(name: str, p: dict, runs: list[dict], params: int) -> dict:
    scores = [r["pass@2"] for r in runs]
    speeds = [r["steps_per_s"] for r in runs if r["steps_per_s"] is not None]
    return {"row": name, "ref": ALL_ROWS[name].ref, "runs_of": p["runs_of"], "changes": p["changes"],
            "presets": p["presets"], "seeds": [r["seed"] for r in runs], "pass@2": scores,
            "pass@2_mean": statistics.fmean(scores), "pass@2_min": min(scores), "pass@2_max": max(scores),
            "pass@2_sd": statistics.stdev(scores) if len(scores) > 1 else None,
            "steps_per_s": statistics.median(speeds) if speeds else None, "params": params,
            **{f"{k}_mean": mean_of(runs, k) for k in ("pass@2_before", "lm_loss", "exact_accuracy", "act_steps")},
            "paper": ALL_ROWS[name].paper, "runs": runs}


def table(rows: list[dict], steps: int, seeds: list[int], base: str) -> list[str]:
    """The printed table (Markdown): one line per row, the difference from its reference row in points."""
    means = {r["row"]: r["pass@2_mean"] for r in rows}
    before = rows[0]["runs"][0]["eval_step_before"] if rows else None
    lines = [f"bench.ablation over {base}, {steps} steps, seeds {seeds}; {PAPER_TASK}.",
             "| row | changes over its reference | held-out pass@2 mean (min - max) | vs reference (pp) "
             f"| pass@2 at step {before} | steps/s | training exact acc / lm loss / ACT steps, last log "
             "| trunk params | paper, Sudoku-Extreme % (pp) |", "| --- " * 9 + "|"]
    for r in rows:
        changes = " ".join(f"{k}={v}" for k, v in r["changes"].items()) or "-"
        if r["runs_of"] != r["row"]:
            changes += f" (the config of {r['runs_of']}: its runs)"
        ref = means.get(r["ref"])
        diff = "-" if r["row"] == r["ref"] or ref is None else f"{100 * (r['pass@2_mean'] - ref):+.1f} vs {r['ref']}"
        speed = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f}"
        fit = " / ".join("-" if r[k] is None else f"{r[k]:.{d}f}"
                         for k, d in (("exact_accuracy_mean", 3), ("lm_loss_mean", 3), ("act_steps_mean", 1)))
        early = "-" if r["pass@2_before_mean"] is None else f"{r['pass@2_before_mean']:.3f}"
        lines.append(f"| {r['row']} | {changes} | {r['pass@2_mean']:.3f} ({r['pass@2_min']:.3f} - "
                     f"{r['pass@2_max']:.3f}) | {diff} | {early} | {speed} | {fit} | {r['params']:,} | {r['paper']} |")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_ablation")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ALL_ROWS),
                   help=f"default: {' '.join(ROWS)} (also: {' '.join(EXTRA_ROWS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400, help="training steps of every run (the recorded table: 400)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at once, one thread each (dev-cpu: 2)")
    p.add_argument("--base", default=BASE, help="the small base preset every row is applied after")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every row (e.g. a smaller evaluation); not the settings a row changes")
    return p.parse_args(argv)


def train_all(planned: dict[str, dict], args, out: Path) -> dict[Path, float | None]:
    """Every distinct run of the plan, `args.jobs` at a time (one thread each: OMP_NUM_THREADS=1), seed-major so
    that an interrupted bench has whole seeds; per run folder its wall seconds (None: finished before). The first
    failure cancels the runs not yet started and is raised once the started ones end."""
    todo = {}
    for seed in args.seeds:
        for p in planned.values():
            todo.setdefault(run_folder(out, p, seed, args.steps), (p["presets"], seed, p["config"]))
    seconds = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(train, f, paths, seed, args.steps, args.set, cfg): f
                   for f, (paths, seed, cfg) in todo.items()}
        try:
            for future in as_completed(futures):
                seconds[futures[future]] = future.result()
                print(f"{futures[future].name}: done", flush=True)
        except BaseException:  # a failed run, or Ctrl-C: start nothing more
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    planned = plan(args.rows, args.base, args.set, out)
    seconds = train_all(planned, args, out)
    summary = []
    for name, p in planned.items():
        cfg = load_config([ROOT / q for q in p["presets"]], [*args.set, "run_dir=x"])
        runs = []
        for seed in args.seeds:
            folder = run_folder(out, p, seed, args.steps)
            runs.append({"seed": seed, "folder": str(folder), "seconds": seconds[folder],
                         **result(folder, args.steps, cfg.train.global_batch)})
            print(f"{name} seed {seed}: pass@2 {runs[-1]['pass@2']:.3f}", flush=True)
        summary.append(summarise(name, p, runs, build_model(cfg.model, 1).num_params()))
    print("\n".join(table(summary, args.steps, args.seeds, args.base)))
    emit({"bench": "ablation", "base": args.base, "steps": args.steps, "seeds": args.seeds, "overrides": args.set,
          "paper_task": PAPER_TASK, "rows": summary})


if __name__ == "__main__":
    main()
