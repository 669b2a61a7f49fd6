"""Loading a trained model from a checkpoint folder for inference: weights (EMA when present) from
safetensors, the config, the task-id order and the puzzle-id table. Never unpickles anything."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import CheckpointError, load_arrays, read_weights, resolve_checkpoint
from pipeline.config import RunConfig, load_config
from pipeline.model import TRM
from pipeline.sampler import PerTaskIds, PuzzleIdScheme, id_scheme_from_state

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: TRM
    config: RunConfig
    task_ids: list[str]
    ids: PuzzleIdScheme
    path: Path


def load_model(path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True) -> LoadedModel:
    ckpt = resolve_checkpoint(path)
    try:
        cfg = load_config(ckpt / "config.yaml")
        tasks = json.loads((ckpt / "tasks.json").read_text())
        task_ids = tasks["task_ids"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: incomplete checkpoint ({e})") from e
    ids_file = ckpt / "puzzle_ids.safetensors"
    if ids_file.exists():
        ids = id_scheme_from_state(tasks.get("puzzle_ids", "per_augmentation"), load_arrays(ids_file))
    else:  # imported official weights (no task mapped) or a checkpoint from before the table was saved
        if task_ids and cfg.data.puzzle_ids != "per_task":
            log.warning("%s has no puzzle-id table: its tasks' augmentation ids cannot be recovered", ckpt)
        ids = PerTaskIds(len(task_ids), cfg.data.dihedral, cfg.data.colour_perm)
    weights = read_weights(ckpt, use_ema)
    model = TRM(cfg.model, weights["puzzle_emb"].shape[0])
    model.load_state_dict(weights)
    model.to(device).eval()
    log.info("loaded %s (%s weights, %d tasks)", ckpt, "EMA" if use_ema else "raw", len(task_ids))
    return LoadedModel(model, cfg, task_ids, ids, ckpt)

