"""Host synchronisations of compiled CUDA steps, counted in the benchmark process that already built and compiled
them (bench.train --count-syncs, bench.infer --count-syncs; the GPU check's `sync` part reads their results).

Each count runs its block once uncounted (whatever it still compiles), then counted under
torch.cuda.set_sync_debug_mode("warn"), where every synchronising call warns from the Python line that made it.
A counted block that compiled again (torch._dynamo's frame counter moved) is reported as `recompiles`: its syncs
would be the compiler's, not the step's. Off CUDA the blocks still run (the code path stays tested) and
`syncs` is None.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from pipeline.nn.act import predict_stream, supervision_step
from pipeline.training.train import exploration_min_steps, to_torch

SYNC_WARNING = "synchronizing CUDA operation"  # torch: "called a synchronizing CUDA operation"


@contextlib.contextmanager
def sync_warnings():
    """Counts the sync warnings raised inside: box["count"], box["where"] (file:line of up to 10 callers)."""
    box: dict = {"count": 0, "where": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield box
    syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
    box["count"] = len(syncs)
    box["where"] = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:10]


@contextlib.contextmanager
def counted(device: torch.device):
    """Syncs (None off CUDA) and torch.compile frames compiled inside the block."""
    box: dict = {"syncs": None, "where": [], "recompiles": 0}
    frames = counters["frames"]["total"]
    if device.type != "cuda":
        yield box
    else:
        with sync_warnings() as found:
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield box
            finally:
                torch.cuda.set_sync_debug_mode("default")
        box.update(syncs=found["count"], where=found["where"])
    box["recompiles"] = counters["frames"]["total"] - frames


def check(box: dict, calls: int, expected: int | None) -> dict:
    """One check's row: syncs per call against what the step should have (0: none; None: reported only)."""
    per = None if box["syncs"] is None else box["syncs"] / max(calls, 1)
    return {"syncs": box["syncs"], "calls": calls, "per_call": per, "expected": expected, "where": box["where"],
            "recompiles": box["recompiles"]}


def twice(device: torch.device, block, calls: int) -> dict:
    """`block()` once uncounted (it may still compile), then `calls` times counted."""
    block()
    _sync(device)
    with counted(device) as box:
        for _ in range(calls):
            block()
        _sync(device)
    return box


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_syncs(trainer, rt, calls: int) -> dict:
    """(1) the ACT step (refill, recursion, halting, loss, backward) on a batch already on the device, which must
    not sync on the full canvas; (2) a whole Trainer.train_step (one sync by design: the finite check)."""
    trm = trainer.model
    batch = to_torch(trainer.sampler.batch_at(trainer.step), rt.device)
    B = batch["inputs"].shape[0]
    min_steps = exploration_min_steps(0, trainer.step, B, 0, 1, trm.cfg.halt_exploration_prob,
                                      trm.cfg.halt_max_steps, rt.device)
    vecs = lambda ids: trm.puzzle_emb[ids].detach().clone().requires_grad_(True)  # noqa: E731

    def act():
        with rt.autocast():
            _, loss, _, _ = supervision_step(trainer.wrapped, trainer.carry, batch, vecs, True, min_steps)
        (loss / B).backward()

    act_box = twice(rt.device, act, calls)
    for p in trm.parameters():  # the optimiser steps below start from clean gradients
        p.grad = None
    step_box = twice(rt.device, trainer.train_step, calls)
    return {"act_step": check(act_box, calls, None if trm.compute.crop else 0),
            "train_step": check(step_box, calls, None)}


def infer_syncs(run_model, model, inputs: torch.Tensor, vecs: torch.Tensor, rt) -> dict:
    """(3) the model's N_sup recursion in inference (must not sync) and (4) predict_stream's halting loop over
    one batch of views (one sync per step by design), with the model as the benchmark compiled it."""
    n_sup = model.cfg.halt_max_steps

    @torch.inference_mode()
    def recursion():
        y, z = model.initial_state(len(inputs), torch.float32)
        for _ in range(n_sup):
            y, z, _, _, _ = run_model(inputs, vecs, y, z, None)

    steps = []

    def stream():
        steps.append(int(predict_stream(run_model, inputs, vecs, len(inputs), None, True)[2].max()))

    with rt.autocast():
        rec = twice(rt.device, recursion, 1)
        loop = twice(rt.device, stream, 1)
    # every view starts together, so the loop ran as many steps as its longest view
    return {"recursion": check(rec, n_sup, None if model.compute.crop else 0),
            "predict_stream": check(loop, steps[-1], None)}
