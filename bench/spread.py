"""The spread of every trained score the test suite asserts, over seeds, thread counts and CPU kernels, and the
protocols themselves: the tests call the functions here, so the bench measures exactly what they assert.

    python -m bench.spread --seeds 0 1 2 3 4 --threads 1 2                  # native kernels (BENCHMARKS.md)
    python -m bench.spread --seeds 0 1 2 --threads 1 --kernels generic      # another CPU's kernels

Per (seed, threads, kernels), each a chain of `python -m stages.X` subprocesses as a user runs them:
- demo (tests/test_learning.py): configs/demo_cpu.yaml pretrained; held-out pass@1 at every evaluation;
- ttt (tests/test_ttt.py): that checkpoint's score on 4 tasks it never saw, before TTT and after 200 steps of
  `configs/demo_ttt.yaml` in `all` and `embeddings_then_all`; the last/first TTT loss after 100 steps of `embeddings`
  and of `lora`;
- specialists (tests/test_ensemble.py): two 250-step demo models, each on one colour_map task, each predicted on
  both tasks (test inputs solved, either attempt).
`kernels=generic` runs torch's unvectorised ATen kernels and MKL/oneDNN at SSE4 (ATEN_CPU_CAPABILITY=default,
MKL_ENABLE_INSTRUCTIONS=SSE4_2, DNNL_MAX_CPU_ISA=SSE41): other float results, as an older CPU gives, on this one.
Runs live in OUT/s<seed>_t<threads>_<kernels>/ and are reused when finished. Prints a table, one JSON line last.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from bench.common import emit
from pipeline.config import dump_config, load_config
from pipeline.data.dataset import build_dataset
from pipeline.data.synthetic import synthetic_tasks
from pipeline.nn.arch import build_model
from pipeline.prediction.infer import PredictOptions, evaluate_heldout
from pipeline.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"native": {}, "generic": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                                     "DNNL_MAX_CPU_ISA": "SSE41"}}
HELD = "tasks=4,seed=7,size=4,demos=64,tests=8,fixed=1,families=colour_map+recolour"
"""Tasks held out of pretraining for the TTT rows: new colour permutations and new target colours, rules the
pretrained model never saw (its own colour_map/recolour tasks use others), learnt from 64 demonstrations each."""
SPECIALIST = "synthetic:tasks=1,seed={seed},size=4,demos=400,tests=4,fixed=1,families=colour_map#demos"
SPECIALISTS = (("a", 5), ("b", 3))  # (name, task seed): two colour_map tasks with different permutations


def run_env(threads: int = 1, kernels: str = "native") -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), **KERNELS[kernels]}


def stage(*args, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m STAGE ARGS` from the repo root; raises with its stderr's tail when it fails."""
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=env or run_env())
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


def pretrain_demo(run_dir: Path, seed: int | None = None, env: dict | None = None) -> dict[int, float]:
    """configs/demo_cpu.yaml pretrained in full into run_dir: held-out pass@1 by evaluation step."""
    sets = [f"run_dir={run_dir}", "train.progress=false", *([f"seed={seed}"] if seed is not None else [])]
    stage("stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set", *sets, env=env, timeout=1800)
    return {r["step"]: r["eval/pass@1"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "eval/pass@1" in r}


def write_challenges(folder: Path, spec: str, with_test_outputs: bool = False) -> tuple[Path, Path]:
    """The synthetic tasks of `spec` as Kaggle challenges and solutions files in folder."""
    tasks = synthetic_tasks(spec)
    ch = {t.id: t.to_json(with_outputs=with_test_outputs) for t in tasks}
    sol = {t.id: [o.tolist() for o in t.test_outputs] for t in tasks}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x_challenges.json").write_text(json.dumps(ch))
    (folder / "x_solutions.json").write_text(json.dumps(sol))
    return folder / "x_challenges.json", folder / "x_solutions.json"


def score(checkpoint: Path, folder: Path, name: str, env: dict | None = None) -> float:
    """pass@2 of checkpoint on the HELD tasks (written into folder), through stages.predict and stages.score."""
    ch, sol = write_challenges(folder, HELD)
    sub = folder / f"{name}.json"
    stage("stages.predict", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(sub),
          "--no-progress", env=env)
    r = stage("stages.score", "--solutions", str(sol), "--submission", str(sub), env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])["score"]


def ttt_and_score(checkpoint: Path, folder: Path, mode: str, steps: int, seed: int | None = None,
                  env: dict | None = None) -> tuple[float, list[float]]:
    """pass@2 on the HELD tasks after TTT of checkpoint on their demonstrations in `mode`, and the TTT loss curve."""
    ch, _ = write_challenges(folder, HELD)
    out = folder / f"ttt_{mode}"
    sets = [f"train.steps={steps}", f"train.trainable={mode}", "train.progress=false", "train.log_every=25",
            "train.lora_rank=8", *([f"seed={seed}"] if seed is not None else [])]
    stage("stages.ttt", "--checkpoint", str(checkpoint), "--challenges", str(ch), "--out", str(out), "--config",
          "configs/demo_ttt.yaml", "--set", *sets, env=env)
    losses = [r["ttt/loss"] for r in read_metrics(out / "metrics.jsonl") if "ttt/loss" in r]
    return score(out, folder, mode, env), losses


def train_specialists(folder: Path, seed: int | None = None, env: dict | None = None) -> None:
    """The two specialists pretrained side by side into folder/a and folder/b, and their tasks exported as
    folder/both_{challenges,solutions}.json."""
    sets = ["train.steps=250", "train.eval_every=0", "train.progress=false", *([f"seed={seed}"] if seed is not None
                                                                                 else [])]
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, s in SPECIALISTS:
        with open(folder / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml",
                                           "--set", f"run_dir={folder / name}",
                                           f'data.sources=["{SPECIALIST.format(seed=s)}"]', *sets],
                                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env or run_env()))
    try:
        for p, (name, _) in zip(procs, SPECIALISTS):
            if p.wait(timeout=1200) != 0:
                raise RuntimeError(f"specialist {name} failed:\n{(folder / f'{name}.log').read_text()[-2000:]}")
    finally:
        for p in procs:
            p.kill()  # the other one, when one failed (a no-op on a finished process)
    both = {}
    for name, s in SPECIALISTS:
        stage("stages.data", "export", SPECIALIST.format(seed=s), "--out", str(folder / f"tasks_{name}"), env=env)
        for kind in ("challenges", "solutions"):
            both.setdefault(kind, {}).update(json.loads((folder / f"tasks_{name}_{kind}.json").read_text()))
    for kind, tasks in both.items():
        (folder / f"both_{kind}.json").write_text(json.dumps(tasks))


def solved(solutions: Path, submission: Path) -> dict[str, int]:
    """Test inputs solved (either attempt) per task."""
    truth, sub = json.loads(solutions.read_text()), json.loads(submission.read_text())
    return {t: sum(out in entry.values() for entry, out in zip(sub[t], outs)) for t, outs in truth.items()}


def specialists_alone(folder: Path, env: dict | None = None) -> dict[str, dict[str, int]]:
    """Each specialist predicted alone (8 views per input) on both tasks: test inputs solved per task."""
    alone = {}
    for name, _ in SPECIALISTS:
        stage("stages.predict", "--checkpoint", str(folder / name), "--augs", "8", "--challenges",
              str(folder / "both_challenges.json"), "--out", str(folder / f"{name}.json"), "--no-progress", env=env)
        alone[name] = solved(folder / "both_solutions.json", folder / f"{name}.json")
    return alone


def heldout(model, cfg, data) -> dict:
    """The held-out evaluation of `model` on the demo data (pass@1, pass@2, mean_steps, ...) on the CPU."""
    return evaluate_heldout(model, data.packed, data.ids, PredictOptions(cfg.predict, cfg.data.canvas,
                                                                        torch.device("cpu"), seed=cfg.seed))


def untrained_control(seed: int = 0) -> float:
    """pass@2 of the demo's model at initialisation (seed `seed`) on its 64 held-out inputs: what the bar of
    tests/test_learning.py must sit well above."""
    cfg = load_config(ROOT / "configs/demo_cpu.yaml", [f"seed={seed}"])
    data = build_dataset(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    return heldout(build_model(cfg.model, data.ids.num_ids).eval(), cfg, data)["pass@2"]


def fingerprint() -> str:
    """The configs a run computes with, resolved (comments aside): a result of other settings is not reused."""
    demo = dump_config(load_config(ROOT / "configs/demo_cpu.yaml"))
    ttt = json.dumps(yaml.safe_load((ROOT / "configs/demo_ttt.yaml").read_text()), sort_keys=True)
    return hashlib.sha256((demo + ttt).encode()).hexdigest()[:16]


def measure(folder: Path, seed: int, threads: int, kernels: str) -> dict:
    """Every row for one (seed, threads, kernels); reused from folder/result.json when it finished before with
    the same configs, else measured afresh (a partial or stale folder removed: a kept run would be resumed)."""
    done = folder / "result.json"
    kept = json.loads(done.read_text()) if done.exists() else {}
    if kept.get("configs") == fingerprint():
        return kept
    shutil.rmtree(folder, ignore_errors=True)
    env = run_env(threads, kernels)
    demo = pretrain_demo(folder / "demo", seed, env)
    ttt = {"before": score(folder / "demo", folder / "ttt", "pretrained", env)}
    for mode, steps in (("all", 200), ("embeddings_then_all", 200), ("embeddings", 100), ("lora", 100)):
        got, losses = ttt_and_score(folder / "demo", folder / "ttt", mode, steps, seed, env)
        ttt[mode] = got if steps == 200 else losses[-1] / losses[0]
    train_specialists(folder / "spec", seed, env)
    alone = specialists_alone(folder / "spec", env)
    result = {"seed": seed, "threads": threads, "kernels": kernels, "configs": fingerprint(),
              "untrained_pass@2": untrained_control(seed), "demo_pass@1": demo, "ttt": ttt,
              "specialists": {name: [by_task[t] for t in sorted(by_task)] for name, by_task in alone.items()}}
    done.write_text(json.dumps(result))
    return result


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summary(runs: list[dict]) -> dict:
    """min / median / max over every run of each asserted number (the demo's at its last evaluation)."""
    last = [r["demo_pass@1"][max(r["demo_pass@1"], key=int)] for r in runs]
    rows = {"demo_pass@1_final": spread(last), "demo_untrained_pass@2": spread([r["untrained_pass@2"] for r in runs])}
    for key in runs[0]["ttt"]:
        rows[f"ttt_{key}"] = spread([r["ttt"][key] for r in runs])
    for key in ("all", "embeddings_then_all"):  # what tests/test_ttt.py asserts beside the score: the gain
        rows[f"ttt_{key}_gain"] = spread([r["ttt"][key] - r["ttt"]["before"] for r in runs])
    rows["specialists_own_solved"] = spread([min(r["specialists"]["a"][1], r["specialists"]["b"][0]) for r in runs])
    rows["specialists_other_solved"] = spread([max(r["specialists"]["a"][0], r["specialists"]["b"][1])
                                               for r in runs])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_spread")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--kernels", nargs="+", default=["native"], choices=list(KERNELS))
    args = p.parse_args(argv)
    runs = []
    for kernels in args.kernels:
        for threads in args.threads:
            for seed in args.seeds:
                r = measure(Path(args.out) / f"s{seed}_t{threads}_{kernels}", seed, threads, kernels)
                runs.append(r)
                print(f"seed {seed} threads {threads} {kernels}: demo pass@1 {r['demo_pass@1']}  ttt {r['ttt']}  "
                      f"specialists {r['specialists']}", flush=True)
    table = summary(runs)
    for name, s in table.items():
        print(f"{name:28s} min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}")
    emit({"bench": "spread", "runs": runs, "summary": table})


if __name__ == "__main__":
    main()
