"""The one place that knows the file names inside a run folder and a checkpoint folder, and `Checkpoint`: a
checkpoint opened once, without torch (its folder, config, task table, puzzle-id scheme, step and meta).
Weights, the model and the puzzle-id scheme load on demand through pipeline/checkpoint.py, which takes a
`Checkpoint`.

`RUN/ckpt/step-00000500/` holds

  model.safetensors   raw weights (never a DDP/compiled wrapper's), puzzle table included
  ema.safetensors     EMA weights (what evaluation and prediction use), when EMA is on; without the
                      puzzle table, which is never averaged and stored once, in model.safetensors
  optim.pt            optimiser state (our own tensors; read back with weights_only=True)
  carry_rank{r}.safetensors   the ACT carry of each rank, so that a resumed run continues exactly
  lora.safetensors    LoRA runs only: the unmerged adapters and the merged weights' EMA, for resume
  state.json          step, sampler position, RNG state, loop state, metrics
  config.yaml         the resolved RunConfig;  tasks.json  the task ids in puzzle-id order
  puzzle_ids.safetensors   the puzzle-id scheme's table (which augmentation each id stands for)
  meta.json           written last: a folder is complete only when it has one
  deepspeed/          DeepSpeed engine state (engine = deepspeed only)

`RUN/` itself holds `ckpt/` (`best.json` names the best step), `log.txt`, `metrics.jsonl` (one JSON line per
logged step), `tb/` (tensorboard, when installed), `wandb/` (offline wandb, when train.wandb_project asks for it;
pipeline/training/metrics.py), `curves.png` (drawn at the end); a TTT run folder also
`ttt.json` (what it was run on) and, for per-task TTT, one run folder per task under `RUN/tasks/<task>/`.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_arrays_file
from safetensors.numpy import save_file as save_arrays_file

from pipeline.config import RunConfig, load_config, read_yaml, to_dict

log = logging.getLogger(__name__)

CKPT_DIR, BEST = "ckpt", "best.json"
MODEL, EMA, LORA, OPTIM, STATE = "model.safetensors", "ema.safetensors", "lora.safetensors", "optim.pt", "state.json"
CONFIG, TASKS, PUZZLE_IDS, META = "config.yaml", "tasks.json", "puzzle_ids.safetensors", "meta.json"
DEEPSPEED = "deepspeed"
TTT_JSON, TASKS_DIR = "ttt.json", "tasks"
LOG, METRICS, TB_DIR, CURVES = "log.txt", "metrics.jsonl", "tb", "curves.png"
PREDICTION_FILES = (MODEL, EMA, PUZZLE_IDS, CONFIG, TASKS, META)
"""What prediction and TTT read from a checkpoint (the Kaggle weights dataset); optimiser state, ACT carries
and loop state serve only a resumed training run."""
REQUIRED_FILES = (MODEL, CONFIG, TASKS, META)
"""Without these a checkpoint folder cannot predict (EMA weights and the id table are optional)."""


class CheckpointError(ValueError):
    """No usable checkpoint at a path the user gave."""


STEP_NAME = re.compile(r"step-\d{8}")
TMP, OLD = ".tmp", ".old"
"""A folder being written (`step-00000500.tmp/`, renamed into place when complete) and a folder moved aside
until its replacement is in place (`.old`): what a killed save leaves behind, never a checkpoint."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def tmp_folder(folder: Path) -> Path:
    return folder.with_name(folder.name + TMP)


def old_folder(folder: Path) -> Path:
    return folder.with_name(folder.name + OLD)


def torn_saves(root: Path) -> list[Path]:
    """The temp folders of step saves under `root` (a run's ckpt/) that were never renamed into place."""
    return [p for p in root.glob("step-*" + TMP) if STEP_NAME.fullmatch(p.name[:-len(TMP)])]


def carry_name(rank: int) -> str:
    return f"carry_rank{rank}.safetensors"


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.endswith((TMP, OLD)) and (folder / META).exists()


def list_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint folders under `root` (a run's ckpt/), oldest first: `step-` and 8 digits only."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if STEP_NAME.fullmatch(p.name) and is_complete(p)),
                  key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the latest complete checkpoint of a run folder (or of its ckpt/)."""
    path = Path(path)
    if is_complete(path):
        return path
    for root in (ckpt_root(path), path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"{path}: no complete checkpoint (expected a run folder with ckpt/step-*/meta.json "
                          "or a checkpoint folder with meta.json)")


def run_dir_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (RUN/ckpt/step-N -> RUN), None for a standalone one."""
    return ckpt.parent.parent if ckpt.parent.name == CKPT_DIR else None


def per_task_runs(run_dir: str | Path) -> Path | None:
    """The folder of per-task TTT runs (RUN/tasks/) when `run_dir` holds those and no joint run, else None."""
    tasks = Path(run_dir) / TASKS_DIR
    return tasks if tasks.is_dir() and not ckpt_root(run_dir).is_dir() else None


def task_run_dir(run_dir: str | Path, folder_name: str) -> Path:
    """The run folder of one task's TTT (RUN/tasks/<folder_name>/; the name made safe by the caller)."""
    return Path(run_dir) / TASKS_DIR / folder_name


def task_runs(tasks_dir: Path) -> list[Path]:
    """The per-task TTT run folders under RUN/tasks/ that wrote their ttt.json, in name order."""
    return [f.parent for f in sorted(tasks_dir.glob(f"*/{TTT_JSON}"))]


# -- the readers (each file a Checkpoint holds is read here, once per opening) -----------------------------
def read_config(folder: Path) -> dict:
    return read_yaml(folder / CONFIG)


def read_tasks(folder: Path) -> dict:
    return json.loads((folder / TASKS).read_text())


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META).read_text())


def read_puzzle_ids(folder: Path) -> dict[str, np.ndarray] | None:
    f = folder / PUZZLE_IDS
    return load_arrays(f) if f.exists() else None


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    save_arrays_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    return load_arrays_file(str(path))


def write_description(folder: Path, config_yaml: str, task_ids: list[str], id_scheme_name: str,
                      id_table: dict[str, np.ndarray]) -> None:
    """What a checkpoint says about its weights: the resolved config, the task order and the puzzle-id scheme
    (its name and table: a scheme's state_dict)."""
    (folder / CONFIG).write_text(config_yaml)
    (folder / TASKS).write_text(json.dumps({"task_ids": list(task_ids), "puzzle_ids": id_scheme_name}))
    save_arrays(id_table, folder / PUZZLE_IDS)


ID_TABLE, ID_SCHEME = "id_table", "ids"
"""Keys of a Checkpoint's `cache`: the stored id table as read, and the id scheme built from it (or the one a
run saved: Checkpoint.saved; pipeline/checkpoint.py stored_ids builds and keeps it)."""


@dataclass(eq=False)
class Checkpoint:
    """A complete checkpoint folder, opened once: its config (as trained, in today's shape), task order, meta
    (step, time, git), its puzzle-id scheme's name and, read when first asked for, that scheme's table (None
    for imported weights without one). Torch-free; pipeline/checkpoint.py builds the id scheme from the table
    (stored_ids, prediction_ids) and loads the weights and model on demand. What is read later is kept in
    `cache`, so each file is read once."""
    path: Path
    config: RunConfig
    task_ids: list[str]
    meta: dict
    id_scheme_name: str = "per_augmentation"
    cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """The checkpoint at `path`: a checkpoint folder, or the latest complete one of a run folder."""
        folder = resolve_checkpoint(path)
        try:
            saved = read_config(folder)
            config = load_config(None, [], base=saved)
            tasks = read_tasks(folder)
            meta = read_meta(folder)
            task_ids = tasks["task_ids"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{folder}: incomplete checkpoint ({e})") from e
        return cls(folder, config, task_ids, meta, tasks.get("puzzle_ids", "per_augmentation"))

    @classmethod
    def saved(cls, path: Path, config: RunConfig, task_ids: list[str], meta: dict, ids) -> Checkpoint:
        """A checkpoint a run has just written, from what the run holds (nothing is read back): `ids` is the
        run's puzzle-id scheme (a data.puzzle_ids.PuzzleIdScheme), kept as the checkpoint's stored one."""
        return cls(Path(path), config, list(task_ids), meta, ids.name, cache={ID_SCHEME: ids})

    def id_table(self) -> dict[str, np.ndarray] | None:
        """The stored puzzle-id scheme's table (its state_dict), None when the folder has none (imported
        official weights)."""
        if ID_TABLE not in self.cache:
            self.cache[ID_TABLE] = read_puzzle_ids(self.path)
        return self.cache[ID_TABLE]

    def __str__(self) -> str:
        return str(self.path)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def run_dir(self) -> Path | None:
        return run_dir_of(self.path)

    def config_dict(self) -> dict:
        """The config as trained, as a dict: what TTT and prediction configs start from."""
        return to_dict(self.config)

    def file(self, name: str) -> Path:
        return self.path / name

    def trained_config(self, opened: Checkpoint | None = None) -> RunConfig:
        """The config of the pretrained checkpoint this one descends from, followed back through its TTT
        runs' warm starts (train.init_from): how the weights were trained, what a run's departures are listed
        against. This checkpoint's own when it is no TTT run; the last readable one when a warm start is gone.
        `opened`: a warm start the caller holds open (not read again)."""
        if "trained" not in self.cache:
            cfg, seen = self.config, {str(self.path)}
            while cfg.train.init_from and cfg.train.init_from not in seen:
                seen.add(cfg.train.init_from)
                if opened is not None and Path(cfg.train.init_from).resolve() == opened.path.resolve():
                    cfg = opened.config
                    continue
                try:
                    cfg = Checkpoint.open(cfg.train.init_from).config
                except CheckpointError as e:
                    log.warning("%s: its warm start is not readable (%s): departures are listed against the "
                                "last config that is", self.path, e)
                    break
            self.cache["trained"] = cfg
        return self.cache["trained"]
