"""Checkpoints as torch sees them: writing a run's checkpoints (Checkpointer, the weight and training-state
files), and loading a `Checkpoint` (pipeline/layout.py, which names every file) for training (resume, warm
start) or prediction. Everything is written into `step-N.tmp/` and renamed into place, meta.json last, so a
killed run never leaves a torn checkpoint that looks complete. Keeps the last k and the best by held-out
evaluation. Weights-only checkpoints (imports, `write_weights_checkpoint`) hold model, config, tasks, puzzle
ids and meta. Weights a `Checkpoint` loads are kept in its cache, so that a flow reads each file once.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline import layout
from pipeline.computation import departures, evaluation_base
from pipeline.config import RunConfig, load_config
from pipeline.layout import Checkpoint, CheckpointError, list_checkpoints, step_name
from pipeline.nn.arch import build_model
from pipeline.nn.model import new_task_row
from pipeline.data.puzzle_ids import PerTaskIds, PuzzleIdScheme, id_scheme_from_state
from pipeline.data.tasks import write_json_atomic

log = logging.getLogger(__name__)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def read_weights(ckpt: Checkpoint, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Raw or EMA weights of a checkpoint, on the CPU (callers copy them, never change them in place). Between
    `hold_weights` and `release_weights` they are read once and kept in the checkpoint's cache (a flow that
    loads them several times); otherwise each call reads them, so that they are freed with the caller's copy.
    The EMA file holds no puzzle table (the table is never averaged, so it is stored once): it comes from the
    raw file."""
    key = ("weights", use_ema)
    weights = ckpt.cache[key] if key in ckpt.cache else load_weights(ckpt.path, use_ema)
    if ckpt.cache.get("hold_weights") == "last":  # the last planned read: the caller's copy is the only one now
        release_weights(ckpt)
    elif ckpt.cache.get("hold_weights"):
        ckpt.cache[key] = weights
    return weights


def hold_weights(ckpt: Checkpoint) -> None:
    """Keep the weights of `ckpt` in memory once read, until `release_weights` (at ARC size the puzzle table
    is GBs: hold them only across the loads that need them)."""
    ckpt.cache["hold_weights"] = True


def last_read(ckpt: Checkpoint) -> None:
    """The next read of `ckpt`'s held weights is the last one planned (TTT's warm start): it hands them over and
    releases them, so that they are not kept beside the run that uses them."""
    if ckpt.cache.get("hold_weights"):
        ckpt.cache["hold_weights"] = "last"


def release_weights(ckpt: Checkpoint) -> None:
    """Forget the weights kept for `ckpt` and stop keeping them."""
    for key in [k for k in ckpt.cache if isinstance(k, tuple) and k[0] == "weights"]:
        del ckpt.cache[key]
    ckpt.cache.pop("hold_weights", None)


def load_weights(folder: Path, use_ema: bool, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Raw or EMA weights of a checkpoint folder, read now (a run resuming from its own folder)."""
    f = folder / layout.EMA
    if not (use_ema and f.exists()):
        return load_tensors(folder / layout.MODEL, device)
    weights = load_tensors(f, device)
    if "puzzle_emb" not in weights:
        with safe_open(str(folder / layout.MODEL), framework="pt") as raw:
            weights["puzzle_emb"] = raw.get_tensor("puzzle_emb").to(device)
    return weights


@torch.no_grad()
def warm_start(model: torch.nn.Module, ckpt: Checkpoint, init_rows: np.ndarray | None = None) -> None:
    """Copy trunk weights (EMA) from a checkpoint into `model`. The puzzle table: `init_rows[i]` is the stored
    row that new row i starts from (-1 = the mean of the whole stored table, TRM's rule for a resized table:
    model.new_task_row; pipeline/training/ttt.py ttt_ids decides). Without `init_rows`, a table of the same size is copied and one of another size
    starts at the mean everywhere."""
    weights = dict(read_weights(ckpt))
    table = weights.pop("puzzle_emb")
    mean = new_task_row(table)
    if init_rows is not None:
        if len(init_rows) != model.puzzle_emb.shape[0] or int(np.max(init_rows, initial=-1)) >= table.shape[0]:
            raise CheckpointError(f"{ckpt.path}: puzzle-row mapping does not fit the stored table")
        src = torch.from_numpy(np.asarray(init_rows, dtype=np.int64))
        model.puzzle_emb.copy_(torch.where((src < 0)[:, None], mean, table[src.clamp_min(0)]))
    elif table.shape == model.puzzle_emb.shape:
        model.puzzle_emb.copy_(table)
    else:
        model.puzzle_emb.copy_(mean.expand_as(model.puzzle_emb))
    del table
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if [m for m in missing if m != "puzzle_emb"] or unexpected:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the configured model (missing {missing}, "
                              f"unexpected {unexpected})")


# -- the files of a checkpoint folder ---------------------------------------------------------------------
def write_model_files(folder: Path, *, model_state: dict, config_yaml: str, task_ids: list[str], ids: PuzzleIdScheme,
                      ema_state: dict | None = None) -> None:
    """What prediction needs: weights (raw, EMA), the resolved config, task order and the puzzle-id table."""
    save_tensors(model_state, folder / layout.MODEL)
    if ema_state is not None:
        save_tensors({k: v for k, v in ema_state.items() if k != "puzzle_emb"}, folder / layout.EMA)
    layout.write_description(folder, config_yaml, task_ids, ids.name, ids.state_dict())


def stored_ids(ckpt: Checkpoint) -> PuzzleIdScheme | None:
    """The puzzle-id scheme a checkpoint stores, built from its table once; None when it has no table (imported
    official weights)."""
    if layout.ID_SCHEME not in ckpt.cache:
        table = ckpt.id_table()
        ckpt.cache[layout.ID_SCHEME] = None if table is None else id_scheme_from_state(ckpt.id_scheme_name, table)
    return ckpt.cache[layout.ID_SCHEME]


def prediction_ids(ckpt: Checkpoint) -> PuzzleIdScheme:
    """The id scheme prediction uses: the stored one, else one id per task (imported official weights)."""
    ids = stored_ids(ckpt)
    if ids is not None:
        return ids
    return PerTaskIds(len(ckpt.task_ids), ckpt.config.data.dihedral, ckpt.config.data.colour_perm)


def write_train_state(folder: Path, state: dict, optim_state: dict | None = None) -> None:
    """Loop state for an exact resume: step, sampler, best metric, world size, torch RNG (+ optimiser)."""
    state = {**state, "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    (folder / layout.STATE).write_text(json.dumps(state))
    if optim_state is not None:
        torch.save(optim_state, folder / layout.OPTIM)


def read_train_state(folder: Path, device) -> tuple[dict, dict | None]:
    """(loop state, optimiser state or None); restores torch's RNG as saved."""
    state = json.loads((folder / layout.STATE).read_text())
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch_rng"]), dtype=np.uint8).copy()))
    f = folder / layout.OPTIM
    return state, (torch.load(f, map_location=device, weights_only=True) if f.exists() else None)


def lora_file(folder: Path) -> Path:
    """LoRA runs: the unmerged adapters and their base weights, and the EMA of the merged weights as `ema.*`
    (pipeline/training/lora.py MergedEMA), for resume; model/ema.safetensors hold the merged weights that prediction
    loads."""
    return folder / layout.LORA


def carry_file(folder: Path, rank: int) -> Path:
    return folder / layout.carry_name(rank)


def deepspeed_dir(folder: Path) -> tuple[str, str]:
    """(save dir, tag) for a DeepSpeed engine's own files inside the checkpoint."""
    return str(folder), layout.DEEPSPEED


def read_ema(folder: Path, device) -> dict[str, torch.Tensor] | None:
    f = folder / layout.EMA
    return load_tensors(f, device) if f.exists() else None


def write_weights_checkpoint(out: str | Path, *, model_state: dict, config_yaml: str, task_ids: list[str], ids,
                             meta: dict) -> Checkpoint:
    """A complete weights-only checkpoint folder at `out` (official imports, exported runs), written to
    `out.tmp` and renamed, meta.json last; returned opened."""
    out = Path(out)
    tmp = layout.tmp_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model_files(tmp, model_state=model_state, config_yaml=config_yaml, task_ids=task_ids, ids=ids)
    (tmp / layout.META).write_text(json.dumps({"step": 0, "time": time.time(), "git": git_sha(), **meta}, indent=1))
    old = layout.old_folder(out)
    if out.exists():  # moved aside, not deleted, until the new folder is in place
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return Checkpoint.open(out)


# -- loading for prediction -------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: RunConfig
    """The checkpoint's config with the official evaluation and the caller's overrides: how this model predicts."""
    checkpoint: Checkpoint
    departures: list[str] = dataclasses.field(default_factory=list)
    """How `config` computes otherwise than the checkpoint was trained and officially evaluated
    (pipeline/computation.py); empty when faithful."""

    @property
    def task_ids(self) -> list[str]:
        return self.checkpoint.task_ids

    @property
    def ids(self) -> PuzzleIdScheme:
        return prediction_ids(self.checkpoint)

    @property
    def path(self) -> Path:
        return self.checkpoint.path


def load_for_prediction(ckpt: Checkpoint, device: torch.device | str = "cpu", use_ema: bool = True,
                        overrides: list[str] | None = None, warm: Checkpoint | None = None) -> LoadedModel:
    """A checkpoint as an eval-mode model with the config it predicts with: as the checkpoint was trained (its
    compute.crop etc.) with the official evaluation, a TTT run's with its own predict settings
    (pipeline/computation.py, evaluation_base), then `overrides` (`key=value`, e.g. `compute.crop=true`,
    `predict.adaptive_halting=true`). `departures` lists where that computes otherwise than the pretrained
    checkpoint it descends from (a TTT run's crop, its adaptive halting... and the overrides'); `warm`: that
    checkpoint, when the caller holds it open."""
    cfg = load_config(None, overrides or [], base=evaluation_base(ckpt.config_dict()))
    if stored_ids(ckpt) is None and ckpt.task_ids and cfg.data.puzzle_ids != "per_task":
        log.warning("%s has no puzzle-id table: its tasks' augmentation ids cannot be recovered", ckpt.path)
    weights = read_weights(ckpt, use_ema)
    model = build_model(cfg.model, weights["puzzle_emb"].shape[0], cfg.compute)
    model.load_state_dict(weights)
    del weights
    model.to(device).eval()
    log.info("loaded %s (%s weights, %d tasks)", ckpt.path, "EMA" if use_ema else "raw", len(ckpt.task_ids))
    return LoadedModel(model, cfg, ckpt, departures(cfg, ckpt.trained_config(warm)))


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
        self.root = layout.ckpt_root(run_dir)
        self.keep_last, self.rank, self.barrier = keep_last, rank, barrier
        self.last_meta: dict = {}  # of the last commit (rank 0)

    def latest(self) -> Path | None:
        found = list_checkpoints(self.root)
        return found[-1] if found else None

    def begin(self, step: int) -> Path:
        """Create (rank 0) and return the temp folder for `step`; all ranks may then write into it."""
        tmp = layout.tmp_folder(self.root / step_name(step))
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
        self.last_meta = meta
        (tmp / layout.META).write_text(json.dumps(meta, indent=1))
        final = self.root / step_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if metric is not None:
            best = self.best()
            if best is None or metric > best["metric"] or not (self.root / step_name(best["step"])).exists():
                write_json_atomic(self.root / layout.BEST, {"step": step, "metric": metric})
        self._prune()
        self.barrier()
        return final

    def best(self) -> dict | None:
        p = self.root / layout.BEST
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
        for p in layout.torn_saves(self.root):  # of a killed run
            if p.stat().st_mtime < time.time() - 60:
                shutil.rmtree(p, ignore_errors=True)
