"""Helpers for the benchmarks: machine description, peak RSS, and the JSON result line."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys

import numba
import torch


def machine() -> dict:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "numba": numba.__version__, "python": sys.version.split()[0]}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def emit(result: dict) -> None:
    """The last stdout line of every benchmark is its JSON result."""
    print(json.dumps({**result, "machine": machine()}))
