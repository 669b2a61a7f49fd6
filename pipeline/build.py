"""The one builder of a training run: from a RunConfig and a Runtime to data, model, sampler, held-out
evaluation and Trainer. Pretraining, test-time training and the training benchmarks all start here, so
the wiring exists once."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset import Dataset, build_dataset
from pipeline.infer import PredictOptions, evaluate_heldout
from pipeline.layout import Checkpoint
from pipeline.model import TRM
from pipeline.runtime import Runtime
from pipeline.sampler import Sampler
from pipeline.train import Trainer

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: RunConfig
    rt: Runtime
    data: Dataset
    model: TRM
    sampler: Sampler
    trainer: Trainer


def heldout_rows(data: Dataset, max_inputs: int) -> dict[str, np.ndarray]:
    """The held-out test rows (known outputs, never trained on) the periodic evaluation scores, per source label:
    drawn round-robin across the sources that have any (each source's first row, then each one's second, ...)
    up to `max_inputs` in all (0 = all), so a small held-out part of a mix (a pairs: #holdout) is scored
    however many rows the parts before it hold. Deterministic: the same rows at every evaluation."""
    p = data.packed
    rows = np.flatnonzero((p.test_out >= 0) & ~p.test_trainable)
    labels = data.task_source or [""] * p.num_tasks
    groups: dict[str, list[int]] = {}
    for r in rows.tolist():
        groups.setdefault(labels[p.test_task[r]], []).append(r)
    limit, n, take = min(max_inputs or len(rows), len(rows)), 0, dict.fromkeys(groups, 0)
    while n < limit:
        for label, g in groups.items():
            if take[label] < len(g) and n < limit:
                take[label], n = take[label] + 1, n + 1
    return {label: np.asarray(groups[label][:n], np.int64) for label, n in take.items() if n}


def heldout_eval_fn(cfg: RunConfig, rt: Runtime, data: Dataset):
    """Periodic held-out pass@k on test inputs whose outputs are known but never trained on (None if none, or
    if data.eval_inputs is -1): `eval/pass@2` over all the rows heldout_rows draws, and where several sources
    have some, each source's own metrics too (`eval/<source>/pass@2`, ...); a progress bar with train.progress
    (it runs on rank 0)."""
    if cfg.data.eval_inputs < 0:
        return None
    rows = heldout_rows(data, cfg.data.eval_inputs)
    if not rows:
        return None
    opts = PredictOptions.of(cfg, rt, dataclasses.replace(cfg.predict, augs=cfg.data.eval_views))

    def eval_fn(model):
        per = {label: evaluate_heldout(model, data.packed, data.ids, opts, rows=r, show_progress=cfg.train.progress)
               for label, r in rows.items()}
        if len(per) == 1:
            return next(iter(per.values()))
        n = sum(m["inputs"] for m in per.values())
        out = {k: sum(m[k] * m["inputs"] for m in per.values()) / n for k in next(iter(per.values())) if k != "inputs"}
        out["inputs"] = n
        for label, m in per.items():
            out.update({f"{label}/{k}": v for k, v in m.items()})
        return out

    return eval_fn


def build_run(cfg: RunConfig, rt: Runtime, data: Dataset | None = None, init_rows: np.ndarray | None = None,
              eval_fn="heldout", prefix: str = "train", warm: Checkpoint | None = None) -> Run:
    """Everything a training run needs. `data` defaults to cfg.data's sources; `init_rows` maps each puzzle
    row to the warm-start checkpoint's row it starts from (-1 = their mean); `eval_fn` is "heldout" (the
    default evaluation on held-out test inputs), None, or a callable model -> metrics; `warm` is
    train.init_from already opened (TTT), else the trainer opens it when it warm-starts."""
    if cfg.train.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.wandb_project needs the wandb package, which is not installed (pip install wandb)")
    data = data or build_dataset(cfg.data, cfg.seed, cfg.model.puzzle_emb_ndim)
    log.info("%d tasks (%d skipped as invalid), %d puzzle ids", data.packed.num_tasks, len(data.problems),
             data.ids.num_ids)
    model = TRM(cfg.model, data.ids.num_ids, cfg.compute).to(rt.device)
    log.info("model: %.2fM trunk parameters", model.num_params() / 1e6)
    sampler = Sampler(data.packed, data.ids, cfg.data, cfg.train.global_batch, cfg.seed, rt.rank, rt.world_size)
    if eval_fn == "heldout":
        eval_fn = heldout_eval_fn(cfg, rt, data)
    trainer = Trainer(cfg, rt, model, sampler, data.packed.task_ids, eval_fn, init_rows, prefix, warm)
    return Run(cfg, rt, data, model, sampler, trainer)
