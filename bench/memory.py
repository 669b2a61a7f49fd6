"""Peak memory of a training run, phase by phase: build (data, id table, model, optimiser), training steps,
the held-out evaluation (EMA weights swapped in) and a checkpoint save.

    python -m bench.memory --config configs/arc2_4xh100.yaml --set train.global_batch=4 \\
        data.eval_inputs=4 predict.max_steps=1
    python -m bench.memory --config configs/hrm_arc2.yaml --set ...      # another architecture (issue 29)

The model is built by the registry (pipeline/nn/arch.py, model.arch), so any architecture's ARC preset runs.

A background thread samples the resident set (RSS) every few milliseconds, so each phase reports its own
peak, not the process's; with CUDA each phase also reports torch's peak allocated GPU memory. The budget
is trunk + its optimiser state + one copy of the puzzle table; the goal is a peak of at most 2.5 x budget.
`predict.max_steps=1` keeps a CPU evaluation short without changing its batch (the memory is per batch).
Prints JSON last.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time

import psutil
import torch

from bench.common import emit, rss_mb

MB = 2**20


class RssSampler:
    """Samples this process's RSS in a background thread; `phase(name)` records one phase's peak."""

    def __init__(self, interval: float = 0.005):
        self.proc, self.interval = psutil.Process(), interval
        self.peak, self.phases = 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def phase(self, name: str):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = self.peak = self.proc.memory_info().rss
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
        end = self.proc.memory_info().rss
        self.phases[name] = {"rss_start_mb": start / MB, "rss_peak_mb": max(self.peak, end) / MB,
                             "rss_end_mb": end / MB, "seconds": time.perf_counter() - t0,
                             "gpu_peak_mb": torch.cuda.max_memory_allocated() / MB if cuda else None}
        print(f"{name}: {self.phases[name]}", file=sys.stderr, flush=True)  # progress of a long run


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def budget(model, opt) -> dict:
    """Trunk, optimiser state and puzzle table in MB, and the goal: 2.5 x their sum."""
    trunk = tensor_bytes(model.parameters())
    optim = sum(tensor_bytes(s.values()) for s in opt.state.values()) if opt is not None else 0
    table = tensor_bytes([model.puzzle_emb])
    base = trunk + optim + table
    return {"trunk_mb": trunk / MB, "optimiser_mb": optim / MB, "table_mb": table / MB, "budget_mb": base / MB,
            "goal_peak_mb": 2.5 * base / MB}


def measure(rss: RssSampler, trainer, steps: int) -> dict:
    """The phases after the build: training steps, the held-out evaluation, a checkpoint save. Returns the
    evaluation's metrics."""
    metrics = {}
    with rss.phase("train_step"):
        for _ in range(steps):
            trainer.train_step()
    if trainer.eval_fn is not None:
        with rss.phase("eval"):
            metrics = trainer.evaluate()
    with rss.phase("save"):
        trainer.save()
    return metrics


def main(argv=None) -> None:
    from pipeline.training.build import build_run, heldout_rows
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=2, help="training steps measured")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        cfg = load_config(args.config, [*args.set, f"run_dir={tmp}", "train.progress=false"])
        rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
        with rss.phase("build"):
            run = build_run(cfg, rt)
            run.trainer.prepare()
        metrics = measure(rss, run.trainer, args.steps)
        b = budget(run.model, run.trainer.opt)
        # data.eval_inputs: 0 = every held-out input, -1 = no evaluation; the rows the run evaluates, counted
        rows = heldout_rows(run.data, cfg.data.eval_inputs) if cfg.data.eval_inputs >= 0 else {}
        evaluated = sum(map(len, rows.values()))
        eval_views = cfg.data.eval_views * evaluated
    peak = max(ph["rss_peak_mb"] for ph in rss.phases.values())
    gpu = [ph["gpu_peak_mb"] for ph in rss.phases.values() if ph["gpu_peak_mb"] is not None]
    gpu_peak = max(gpu) if gpu else None  # with CUDA the table and activations live here, not in RSS
    emit({"bench": "memory", "config": args.config, "overrides": args.set, "arch": cfg.model.arch,
          "params_m": run.model.num_params() / 1e6, "puzzle_ids": run.data.ids.num_ids,
          "global_batch": cfg.train.global_batch, "eval_views": eval_views, "phases": rss.phases,
          "peak_rss_mb": peak, "ru_maxrss_mb": rss_mb(), **b, "peak_over_budget": peak / b["budget_mb"],
          "gpu_peak_mb": gpu_peak, "gpu_peak_over_budget": gpu_peak / b["budget_mb"] if gpu_peak else None,
          "eval": metrics})


if __name__ == "__main__":
    main()
