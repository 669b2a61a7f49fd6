"""Turn an official TRM checkpoint (SamsungSAILMontreal/TinyRecursiveModels state dict) into one of ours.

    python -m stages.import_official --official step_722098 --config configs/arc2_4xh100.yaml --out runs/official/ckpt/step-00722098

The file is read with torch.load(weights_only=True) or safetensors, never unpickled. Sizes readable from
the tensors (hidden, layers, vocab, puzzle embedding size) override the config; heads and cycles come
from the config. The result loads with every stage's --checkpoint. The official puzzle ids (one per task
and augmentation, in the official build's order) have no counterpart in our id schemes, so the table is
kept but no task is mapped: predict gives every task the mean embedding, and ttt re-fits them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from pipeline.checkpoint import save_tensors
from pipeline.config import dump_config, load_config
from pipeline.model import TRM
from pipeline.official import config_overrides, load_official_into, read_official
from pipeline.tasks import DataError
from stages._cli import run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="official checkpoint file (.pt state dict or .safetensors)")
    p.add_argument("--config", required=True, help="our config whose model section describes the checkpoint")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if not Path(args.official).exists():
        raise DataError(f"{args.official}: file not found")
    official = read_official(args.official)
    sizes = [f"model.{k}={json.dumps(v)}" for k, v in config_overrides(official).items()]
    cfg = load_config(args.config, sizes + args.set)
    model = TRM(cfg.model, official["inner.puzzle_emb.weights"].shape[0] if "inner.puzzle_emb.weights" in official else 1)
    load_official_into(model, official)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(model.state_dict(), tmp / "model.safetensors")
    (tmp / "config.yaml").write_text(dump_config(cfg))
    (tmp / "tasks.json").write_text(json.dumps({"task_ids": []}))
    (tmp / "meta.json").write_text(json.dumps({"step": 0, "imported_from": str(args.official)}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M trunk parameters, "
          f"{model.puzzle_emb.shape[0]} puzzle ids)")
    return 0


if __name__ == "__main__":
    run(main)
