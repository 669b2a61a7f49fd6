"""The one builder of a training run: from a RunConfig and a Runtime to data, model, sampler, held-out
evaluation and Trainer. Pretraining, test-time training and the training benchmarks all start here, so
the wiring exists once."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.config import RunConfig
from pipeline.dataset import Dataset, build_dataset
from pipeline.infer import evaluate_heldout
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


def heldout_eval_fn(cfg: RunConfig, rt: Runtime, data: Dataset):
    """Periodic held-out pass@k on test inputs whose outputs are known but never trained on (None if none, or
    if data.eval_inputs is -1); a progress bar with train.progress (it runs on rank 0)."""
    if cfg.data.eval_inputs < 0 or not ((data.packed.test_out >= 0) & ~data.packed.test_trainable).any():
        return None
    eval_cfg = dataclasses.replace(cfg.predict, augs=cfg.data.eval_views)

    def eval_fn(model):
        return evaluate_heldout(model, data.packed, data.ids, eval_cfg, cfg.data.canvas, rt.device, rt.dtype,
                                cfg.data.eval_inputs, show_progress=cfg.train.progress)

    return eval_fn


def build_run(cfg: RunConfig, rt: Runtime, data: Dataset | None = None, init_rows: np.ndarray | None = None,
              eval_fn="heldout", prefix: str = "train") -> Run:
    """Everything a training run needs. `data` defaults to cfg.data's sources; `init_rows` maps each puzzle
    row to the warm-start checkpoint's row it starts from (-1 = their mean); `eval_fn` is "heldout" (the
    default evaluation on held-out test inputs), None, or a callable model -> metrics."""
    data = data or build_dataset(cfg.data, cfg.seed)
    log.info("%d tasks (%d skipped as invalid), %d puzzle ids", data.packed.num_tasks, len(data.problems),
             data.ids.num_ids)
    model = TRM(cfg.model, data.ids.num_ids).to(rt.device)
    log.info("model: %.2fM trunk parameters", model.num_params() / 1e6)
    sampler = Sampler(data.packed, data.ids, cfg.data, cfg.train.global_batch, cfg.seed, rt.rank, rt.world_size)
    if eval_fn == "heldout":
        eval_fn = heldout_eval_fn(cfg, rt, data)
    trainer = Trainer(cfg, rt, model, sampler, data.packed.task_ids, eval_fn, init_rows, prefix)
    return Run(cfg, rt, data, model, sampler, trainer)
