"""The GPU check's steps that are not another benchmark or stage (bench/gpu_check.py runs each in its own
process): a random-init checkpoint for the submit flow, and the held-out evaluation of a run's last checkpoint.

    python -m bench.gpu_steps checkpoint --config configs/arc2_4xh100.yaml --out runs/x/arc_random
    python -m bench.gpu_steps heldout --run runs/x/curve

Each prints its JSON result last (bench.common.emit); bad input is one line and exit 2 (stages._cli).
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.common import emit
from pipeline.training.build import heldout_eval_fn
from pipeline.checkpoint import load_for_prediction, write_weights_checkpoint
from pipeline.config import dump_config, load_config
from pipeline.data.dataset import build_dataset
from pipeline.layout import Checkpoint
from pipeline.nn.arch import build_model
from pipeline.runtime import init_runtime
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.tasks import DataError
from stages._cli import run


def checkpoint(args) -> dict:
    """A random-init checkpoint of a config (the cost of a step does not depend on the weights): the
    pretrained model the submit check test-time trains and predicts with."""
    cfg = load_config(args.config, args.set)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    out = write_weights_checkpoint(args.out, model_state=model.state_dict(), config_yaml=dump_config(cfg),
                                   task_ids=["pretrained"], ids=PerTaskIds(1), meta={"bench": "gpu_check"})
    return {"status": "ok", "checkpoint": str(out), "params_m": model.num_params() / 1e6}


def heldout(args) -> dict:
    """The run's held-out evaluation (pipeline.training.build.heldout_eval_fn, what training logs as eval/) on its last
    checkpoint's EMA weights: a run stopped by its wall clock skips the one at its end."""
    rt = init_runtime(args.device, "auto", 0)
    loaded = load_for_prediction(Checkpoint.open(args.run), rt.device)
    cfg = loaded.config
    data = build_dataset(cfg.data, cfg.seed)
    if list(data.packed.task_ids) != list(loaded.task_ids):
        raise DataError(f"{args.run}: its tasks are not those of its config's sources")
    eval_fn = heldout_eval_fn(cfg, rt, data)
    if eval_fn is None:
        raise DataError(f"{args.run}: its sources hold out no test inputs with known outputs")
    t0 = time.perf_counter()
    out = eval_fn(loaded.model)
    return {"status": "ok", "checkpoint": str(loaded.path), "views": cfg.data.eval_views,
            "seconds": time.perf_counter() - t0, **out}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("--config", required=True)
    c.add_argument("--set", nargs="*", default=[])
    c.add_argument("--out", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("--run", required=True)
    h.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    steps = {"checkpoint": checkpoint, "heldout": heldout}
    emit({"step": args.step, **steps[args.step](args)})
    return 0


if __name__ == "__main__":
    run(main)
