"""Loading a trained model from a checkpoint folder for inference or a warm start: weights (EMA when
present) from safetensors, the config and the task-id order. Never unpickles anything."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import CheckpointError, load_tensors, resolve_checkpoint
from pipeline.config import RunConfig, load_config
from pipeline.model import TRM
from pipeline.sampler import PuzzleIdScheme, build_id_scheme

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: TRM
    config: RunConfig
    task_ids: list[str]
    ids: PuzzleIdScheme
    path: Path


def read_weights(ckpt: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    f = ckpt / "ema.safetensors"
    return load_tensors(f if use_ema and f.exists() else ckpt / "model.safetensors")


def load_model(path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True) -> LoadedModel:
    ckpt = resolve_checkpoint(path)
    try:
        cfg = load_config(ckpt / "config.yaml")
        task_ids = json.loads((ckpt / "tasks.json").read_text())["task_ids"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: incomplete checkpoint ({e})") from e
    weights = read_weights(ckpt, use_ema)
    model = TRM(cfg.model, weights["puzzle_emb"].shape[0])
    model.load_state_dict(weights)
    model.to(device).eval()
    log.info("loaded %s (%s weights, %d tasks)", ckpt, "EMA" if use_ema else "raw", len(task_ids))
    return LoadedModel(model, cfg, task_ids, build_id_scheme(cfg.data, len(task_ids), cfg.seed), ckpt)


@torch.no_grad()
def warm_start(model: TRM, path: str | Path) -> None:
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
