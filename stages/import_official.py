"""Turn an official checkpoint (SamsungSAILMontreal/TinyRecursiveModels state dict, any of its architectures:
TRM, HRM, single-z, hier6, the transformer baseline) into one of ours.

    python -m stages.import_official --official step_722098 --dataset data/arc2concept-aug-1000 \\
        --config configs/arc2_4xh100.yaml --out runs/official/ckpt/step-00722098

The file is read with torch.load(weights_only=True) or safetensors, never unpickled. Sizes readable from
the tensors (architecture, hidden, layers, vocab, puzzle embedding size) override the config; heads and cycles come
from the config. The result loads with every stage's --checkpoint.

--dataset (the official dataset folder the checkpoint was trained on, or its identifiers.json) keeps the
puzzle embeddings: every official puzzle id names a (task, dihedral, colour map) in our conventions, so the
official table becomes our per-augmentation id table, each row carried over to the id it belongs to, with
the tasks in official order. Predicting those tasks (the official evaluation set is in the build) then
uses the embeddings they were trained with, view for view: the imported config defaults to
predict.augs = the most versions of any task, as the official evaluation (one untranslated view per version;
--set overrides). Without --dataset no task is mapped: predict gives every task the mean embedding, and ttt
re-fits them. Like every checkpoint, an import computes as it was trained (the full canvas, the official
translation, N_sup steps, in bf16 the official forward_dtype cast of compute.carry=forward: the dataclass
defaults) with the official evaluation (pipeline/computation.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.checkpoint import write_weights_checkpoint
from pipeline.config import dump_config, load_config
from pipeline.nn.arch import build_model
from pipeline.data.official_build import official_id_table
from pipeline.nn.official import (OfficialImportError, config_overrides, load_official_into, official_arch,
                               read_official)
from pipeline.data.official_build import read_identifiers
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.tasks import DataError
from stages._cli import run

TABLE = "inner.puzzle_emb.weights"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="official checkpoint file (.pt state dict or .safetensors)")
    p.add_argument("--dataset", help="official dataset folder the checkpoint was trained on (or its identifiers.json)")
    p.add_argument("--config", required=True, help="our config whose model section describes the checkpoint")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if not Path(args.official).exists():
        raise DataError(f"{args.official}: file not found")
    official = read_official(args.official)
    rows = official[TABLE].shape[0] if TABLE in official else 1
    table, defaults = None, []
    if args.dataset:
        names = read_identifiers(args.dataset)
        if len(names) != rows:
            raise OfficialImportError(f"{args.dataset}: {len(names)} puzzle ids, but the checkpoint's puzzle table "
                                      f"has {rows} rows (trained on another build?)")
        table = official_id_table(names)
        most = int(table.ids.counts.max())
        defaults = ["data.puzzle_ids=per_augmentation", f"data.augs_per_task={most - 1}", f"predict.augs={most}"]
    arch = official_arch(official)
    asked = next((s.split("=", 1)[1] for s in args.set if s.startswith("model.arch=")), None) \
        or load_config(args.config).model.arch
    if asked != arch:  # the tensors tell the sizes, not the cycles and heads: those must be the architecture's own
        raise OfficialImportError(f"{args.official} is an official {arch} checkpoint, but the config asks for "
                                  f"model.arch={asked}: import it with --config configs/{arch}_arc2.yaml (its cycles "
                                  f"and heads), or --set model.arch={arch} with the cycles it was trained with")
    sizes = [f"model.{k}={json.dumps(v)}" for k, v in config_overrides(official).items()]
    cfg = load_config(args.config, sizes + defaults + args.set)
    model = build_model(cfg.model, rows)
    load_official_into(model, official)
    state = model.state_dict()
    if table is not None:  # our id i <- official row table.rows[i] (the identity for the official builder's order)
        state["puzzle_emb"] = state["puzzle_emb"][table.rows].clone()
        task_ids, ids = table.task_ids, table.ids
    else:
        task_ids, ids = [], PerTaskIds(0, cfg.data.dihedral, cfg.data.colour_perm)
    out = write_weights_checkpoint(args.out, model_state=state, config_yaml=dump_config(cfg), task_ids=task_ids,
                                   ids=ids, meta={"imported_from": str(args.official),
                                                  "official_dataset": args.dataset})
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M trunk parameters, "
          f"{rows} puzzle ids, {len(task_ids)} tasks mapped)")
    return 0


if __name__ == "__main__":
    run(main)
