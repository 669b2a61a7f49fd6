"""The one place that decides device, dtype, rank and world size, seeds RNGs and starts/stops the process
group (only under torchrun), and the device policy every stage follows: autocast, whether to
torch.compile, and synchronising for timings. Library code receives a Runtime and never names a device.
`break_group` is how a rank that failed under torchrun takes the group down so that no other rank waits on it."""
from __future__ import annotations

import datetime
import os
import socket
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: its functions take `group=group.WORLD` as a default
# argument, evaluated at import. Imported later (torch._dynamo imports it, and the first optimiser or DDP
# imports torch._dynamo), they would hold the default group forever: destroy_process_group would leave its
# gloo threads running, and tearing them down at interpreter exit aborted a torchrun rank now and then
# ("terminate called without an active exception", after a valid submission was written).
import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast on GPU when the dtype says so; a no-op context in float32."""
        return autocast_for(self.device, self.dtype)

    def compiles(self, flag) -> bool:
        """A `compile: true|false|auto` setting resolved for this device (auto = on for CUDA)."""
        return flag is True or (flag == "auto" and self.device.type == "cuda")

    def synchronize(self) -> None:
        """Wait for queued device work (before reading a clock)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def compile_model(module, trm=None):
    """torch.compile as this project uses it. `trm` is the TRM inside `module` (DDP etc.): under compute.crop
    every step has its own sequence length and a step may run in size groups (a list of index tensors), so
    the model's per-group step is compiled for dynamic shapes and `module` stays as it is: one graph for
    every rectangle instead of a recompile per length and per group pattern until the cache limit sends
    it back to eager."""
    if trm is not None and trm.compute.crop:
        trm._step = torch.compile(trm._step, dynamic=True)
        return module
    return torch.compile(module)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """The autocast policy for a (device, dtype) pair (what Runtime.autocast uses)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def autodetect_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device '{requested}' requested but CUDA is not available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_runtime(device: str = "auto", dtype: str = "auto", seed: int = 0, backend: str | None = None,
                 timeout_s: float | None = None) -> Runtime:
    """`timeout_s`: how long a collective may wait for the other ranks before it fails (None: torch's default,
    10 min for NCCL, 30 min for gloo)."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    dev = autodetect_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        # NCCL under torchrun (which sets 1: a timeout kills the process): abort the communicators and raise in
        # the waiting collective instead, so the flow's handlers run (pipeline.submit.submit_flow, rank 0 finishes)
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                timeout=datetime.timedelta(seconds=timeout_s) if timeout_s else None)
    resolved = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
                "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(seed)
    np.random.seed(seed)
    return Runtime(device=dev, dtype=resolved, rank=rank, world_size=world, local_rank=local)


def ensure_process_group(rt: Runtime) -> None:
    """A process group even for one process (DeepSpeed needs one): a single-rank group on a free local port."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", str(rt.rank)),
                       ("LOCAL_RANK", str(rt.local_rank)), ("WORLD_SIZE", str(rt.world_size))):
        os.environ.setdefault(key, value)  # what torchrun would have set
    dist.init_process_group(backend="nccl" if rt.device.type == "cuda" else "gloo", rank=rt.rank,
                            world_size=rt.world_size)


def shutdown_runtime() -> None:
    """Destroy the process group (its threads end with it; see the import of torch.distributed.nn.functional)."""
    global _group_store
    with _group_lock:
        if dist.is_initialized():
            dist.destroy_process_group()
        _group_store = None


FAILED_KEY = "trm/failed/{rank}"
_group_store = None
_group_lock = threading.Lock()  # the group goes down once, from the failing code path or the watcher


def _store():
    """The default group's store, kept from its first use (break_group may need it after the group is down)."""
    global _group_store
    if _group_store is None:
        _group_store = dist.distributed_c10d._get_default_store()
    return _group_store


def _take_down_group() -> None:
    """Abort (NCCL: pending collectives fail) or destroy (gloo: the peers' connections close) the process group,
    unless it is down already."""
    with _group_lock:
        if not dist.is_initialized():
            return
        if dist.get_backend() == "nccl":
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()


def break_group(rt: Runtime, what: str) -> dict[int, str]:
    """After an exception on this rank under torchrun: publish `what` (which stage failed and why) in the
    group's store, then take the process group down, so that a rank waiting for this one in a collective
    fails at once (gloo: its connection closes; NCCL: the other ranks' `watch_for_failures` threads see the
    key within a second and abort their groups) instead of hanging. Returns what every rank has published so
    far (rank -> what): a rank publishes before its group goes down, so the failure that broke the group is
    there. No collective works afterwards; the caller goes on alone."""
    store = _store()
    store.set(FAILED_KEY.format(rank=rt.rank), what)
    _take_down_group()
    keys = {r: FAILED_KEY.format(rank=r) for r in range(rt.world_size)}
    return {r: store.get(k).decode() for r, k in keys.items() if store.check([k])}


def set_collective_timeout(seconds: float) -> None:
    """How long a collective of the process group may now wait for the other ranks (no-op without one)."""
    if dist.is_initialized():
        dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=seconds))


def watch_for_failures(rt: Runtime, every_s: float = 1.0) -> threading.Event:
    """Under torchrun: a daemon thread that polls the store every `every_s` for another rank's FAILED_KEY and
    takes this rank's group down when one appears, so that a collective this rank waits in fails now rather
    than at the group's timeout (NCCL's watchdog would otherwise wait it out; gloo fails at once anyway, when
    the failing rank's connections close). Set the returned event to stop it."""
    store, stop = _store(), threading.Event()
    others = [FAILED_KEY.format(rank=r) for r in range(rt.world_size) if r != rt.rank]

    def poll() -> None:
        while not stop.wait(every_s) and dist.is_initialized():
            if any(store.check([k]) for k in others):
                _take_down_group()
                return

    threading.Thread(target=poll, name="trm-failure-watch", daemon=True).start()
    return stop
