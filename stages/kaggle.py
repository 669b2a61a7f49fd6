"""Package a checkpoint as a Kaggle submission notebook with its datasets, and upload them.

    python -m stages.kaggle build --checkpoint runs/arc2/pretrain --out runs/kaggle [--budget-s 36000] [--no-wheels]
    python -m stages.kaggle build --checkpoint runs/a runs/b --weights 2 1 --out runs/kaggle    # an ensemble
    python -m stages.kaggle push runs/kaggle [--dry-run]

`build` writes DIR/notebook/ (the .ipynb and kernel-metadata.json) and DIR/datasets/{code,weights,wheels}/
(submission/kaggle.py says what each holds). `push` creates or versions the datasets and pushes the notebook
with the kaggle package; it is a dry run (printing exactly what would be uploaded where) when asked or when no
Kaggle credentials are configured. Credentials are never printed or written.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pipeline.checkpoint import git_sha
from pipeline.config import ConfigError, load_config
from pipeline.prediction.ensemble import members
from pipeline.layout import Checkpoint
from stages import submit
from stages._cli import run
from submission.kaggle import (COMPETITION, DEFAULT_BUDGET_S, PLACEHOLDER_OWNER, ROOT, BuildSettings, KaggleError,
                               KaggleNames, build_all, configured_username, credentials_source, describe_plan, push,
                               upload_plan)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the notebook and its datasets")
    b.add_argument("--checkpoint", required=True, nargs="+",
                   help="run folder (its latest complete checkpoint) or checkpoint folder; several: an ensemble "
                        "(stages.submit pools their votes)")
    b.add_argument("--weights", type=float, nargs="+", default=None,
                   help="ensemble: one weight per checkpoint (stages.submit --weights; default 1 each)")
    b.add_argument("--out", required=True, help="output folder (DIR/notebook, DIR/datasets)")
    b.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S,
                   help=f"seconds the whole notebook may take (default {DEFAULT_BUDGET_S}: 10 of Kaggle's 12 h)")
    b.add_argument("--no-wheels", action="store_true", help="skip the wheels dataset (the image's packages are used)")
    b.add_argument("--owner", default=None, help="Kaggle user name (default: from the kaggle config, else a placeholder)")
    defaults = KaggleNames()
    for field in ("code", "weights", "wheels", "kernel"):
        b.add_argument(f"--{field}-slug", default=getattr(defaults, field), help=f"default {getattr(defaults, field)}")
    b.add_argument("--competition", default=COMPETITION)
    b.add_argument("--python-version", default=BuildSettings.python_version,
                   help="the Kaggle image's Python, for the wheels (default: this interpreter's)")
    b.add_argument("--machine-shape", default=None,
                   help="kernel-metadata machine_shape (kaggle documents NvidiaTeslaT4, NvidiaTeslaP100, Tpu1VmV38; "
                        "no L4 value: choose GPU L4 x4 in the notebook editor)")
    b.add_argument("--submit-args", default="", help="more stages.submit options for the notebook's run, one string "
                   "(e.g. '--ttt-config configs/ttt_nvarc.yaml'; see python -m stages.submit --help), checked "
                   "now: not " + ", ".join(f"--{d.replace('_', '-')}" for d in NOTEBOOK_SETS) + " (the notebook's)")
    s = sub.add_parser("push", help="create or version the datasets, then push the notebook")
    s.add_argument("dir", help="a folder written by `build`")
    s.add_argument("--dry-run", action="store_true", help="print what would be uploaded and where, upload nothing")
    s.add_argument("--notes", default="stages.kaggle push", help="dataset version notes")
    return p.parse_args(argv)


NOTEBOOK_SETS = ("out", "budget_s", "checkpoint", "weights", "kaggle_root", "device")
"""stages.submit options the notebook passes itself (submission/kaggle_notebook.py): never in --submit-args."""


def checked_submit_args(text: str) -> list[str]:
    """--submit-args as the notebook will pass them, checked now (a typo would cost a Kaggle run with no
    submission.json): stages.submit's own parser accepts them, none is one the notebook sets, and the
    --ttt-config presets (paths inside the code dataset) load with the --set overrides."""
    def refuse(message):
        raise KaggleError(f"--submit-args: {message}")

    try:
        argv = shlex.split(text)
    except ValueError as e:
        refuse(f"{text!r}: {e}")
    p = submit.parser()
    p.error = refuse
    unset = object()  # not a string: argparse would convert it with the option's type
    p.set_defaults(**dict.fromkeys(NOTEBOOK_SETS, unset))
    parsed = p.parse_args(["--checkpoint", "", *argv])  # the notebook's own (required) --checkpoint first
    parsed.checkpoint = unset if parsed.checkpoint == [""] else parsed.checkpoint
    if given := [f"--{d.replace('_', '-')}" for d in NOTEBOOK_SETS if getattr(parsed, d) is not unset]:
        refuse(f"{', '.join(given)}: the notebook sets {'it' if len(given) == 1 else 'them'} itself")
    for preset in parsed.ttt_config:
        if Path(preset).is_absolute() or not (ROOT / preset).is_file():
            refuse(f"--ttt-config {preset}: no such file in the code dataset (a path relative to the repository)")
    try:
        load_config([ROOT / c for c in parsed.ttt_config], parsed.set)
    except ConfigError as e:
        refuse(f"--ttt-config {' '.join(parsed.ttt_config)} with --set {' '.join(parsed.set)}: {e}")
    return argv


def build(args) -> int:
    owner = args.owner or configured_username() or PLACEHOLDER_OWNER
    names = KaggleNames(owner, args.code_slug, args.weights_slug, args.wheels_slug, args.kernel_slug, args.competition)
    ensemble = members(args.checkpoint, args.weights)  # checks the weights: one per checkpoint, each > 0
    weights = [m.weight for m in ensemble] if args.weights else None
    settings = BuildSettings(names, args.budget_s, not args.no_wheels, args.python_version, args.machine_shape,
                             checked_submit_args(args.submit_args), weights)
    written = build_all(args.out, [Checkpoint.open(c) for c in args.checkpoint], settings, git_sha())
    if owner == PLACEHOLDER_OWNER:
        print(f"warning: owner is the placeholder {PLACEHOLDER_OWNER}; rebuild with --owner before pushing",
              file=sys.stderr)
    print(json.dumps(written))
    return 0


def push_cmd(args) -> int:
    plan = upload_plan(args.dir)
    source = credentials_source()
    if args.dry_run or source is None:
        reason = "--dry-run" if args.dry_run else "no Kaggle credentials configured (~/.kaggle/kaggle.json, " \
                                                  "~/.config/kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)"
        print(f"dry run ({reason}): nothing is uploaded. A push would, in this order:")
        print(describe_plan(plan))
        return 0
    print(f"pushing with the credentials in {source}")
    push(plan, args.notes)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return build(args) if args.command == "build" else push_cmd(args)
    except KaggleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    run(main)
