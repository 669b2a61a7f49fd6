"""Checkpoint folders: `RUN/ckpt/step-00000500/` holding

  model.safetensors   raw weights (never a DDP/compiled wrapper's), puzzle table included
  ema.safetensors     EMA weights (what evaluation and export use), when EMA is on
  optim.pt            optimiser state (our own tensors; read back with weights_only=True)
  carry_rank{r}.safetensors   the ACT carry of each rank, so that a resumed run continues exactly
  state.json          step, sampler position, RNG state, loop state, metrics
  config.yaml         the resolved RunConfig;  tasks.json  the task ids in puzzle-id order
  puzzle_ids.safetensors   the puzzle-id scheme's table (which augmentation each id stands for)
  meta.json           written last: a folder is complete only when it has one

Everything is written into `step-N.tmp/` and renamed into place, so a killed run never leaves a torn
checkpoint that looks complete. Keeps the last k and the best by held-out evaluation.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.tasks import write_json_atomic

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No usable checkpoint at a path the user gave."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.endswith(".tmp") and (folder / "meta.json").exists()


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted((p for p in ckpt_root.glob("step-*") if is_complete(p)), key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the latest complete checkpoint of a run folder (or of its ckpt/)."""
    path = Path(path)
    if is_complete(path):
        return path
    for root in (path / "ckpt", path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"{path}: no complete checkpoint (expected a run folder with ckpt/step-*/meta.json "
                          "or a checkpoint folder with meta.json)")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def save_arrays(arrays: dict, path: Path) -> None:
    from safetensors.numpy import save_file as save_np

    save_np({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict:
    from safetensors.numpy import load_file as load_np

    return load_np(str(path))


def read_weights(ckpt: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    f = ckpt / "ema.safetensors"
    return load_tensors(f if use_ema and f.exists() else ckpt / "model.safetensors")


@torch.no_grad()
def warm_start(model: torch.nn.Module, path: str | Path) -> None:
    """Copy trunk weights (EMA) from a checkpoint; a puzzle table of another size is re-initialised to the
    mean of the stored rows (TRM's rule for fine-tuning on new tasks)."""
    weights = read_weights(resolve_checkpoint(path))
    table = weights.pop("puzzle_emb")
    if table.shape == model.puzzle_emb.shape:
        model.puzzle_emb.copy_(table)
    else:
        model.puzzle_emb.copy_(table[1:].mean(0).expand_as(model.puzzle_emb))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if [m for m in missing if m != "puzzle_emb"] or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the configured model (missing {missing}, unexpected {unexpected})")


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Checkpointer:
    """Saves and finds checkpoints of one run; every rank calls save() (each writes its own carry)."""

    def __init__(self, run_dir: str | Path, keep_last: int, rank: int = 0, barrier=lambda: None):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.root = Path(run_dir) / "ckpt"
        self.keep_last, self.rank, self.barrier = keep_last, rank, barrier

    def latest(self) -> Path | None:
        found = list_checkpoints(self.root)
        return found[-1] if found else None

    def begin(self, step: int) -> Path:
        """Create (rank 0) and return the temp folder for `step`; all ranks may then write into it."""
        tmp = self.root / (step_name(step) + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        return tmp

    def commit(self, tmp: Path, step: int, meta: dict, metric: float | None = None) -> Path | None:
        """Rank 0 writes meta.json last and renames the folder into place, then prunes old checkpoints."""
        self.barrier()
        if self.rank != 0:
            self.barrier()
            return None
        meta = {"step": step, "time": time.time(), "git": git_sha(), "torch": torch.__version__, **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        final = self.root / step_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if metric is not None:
            best = self.best()
            if best is None or metric > best["metric"] or not (self.root / step_name(best["step"])).exists():
                write_json_atomic(self.root / "best.json", {"step": step, "metric": metric})
        self._prune()
        self.barrier()
        return final

    def best(self) -> dict | None:
        p = self.root / "best.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _prune(self) -> None:
        found = list_checkpoints(self.root)
        best = self.best()
        keep = {p.name for p in found[-self.keep_last:]}
        if best is not None:
            keep.add(step_name(best["step"]))
        for p in found:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob("step-*.tmp"):  # torn saves of a killed run
            if p.stat().st_mtime < time.time() - 60:
                shutil.rmtree(p, ignore_errors=True)
