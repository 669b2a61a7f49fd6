"""The whole hidden-test flow inside a compute budget: fallback -> calibrate -> plan -> TTT -> predict -> vote
-> write, with a valid submission on disk at every moment.

    python -m stages.submit --checkpoint runs/arc2/pretrain                      # on Kaggle: finds the test file
    python -m stages.submit --checkpoint CK --challenges FILE --out S.json --budget-s 3600
    python -m stages.submit ... --ttt-config configs/ttt_nvarc.yaml --set train.global_batch=256
    python -m stages.submit ... --ttt-config configs/ttt_full.yaml configs/ttt_fast.yaml --steps-fraction 0.5
    python -m stages.submit ... --ttt-steps 2000 --views 256                     # a pinned, reproducible plan
    python -m stages.submit --checkpoint runs/a runs/b --weights 2 1 ...         # an ensemble: votes pooled
    torchrun --nproc-per-node 4 -m stages.submit ...                             # one process per GPU

Finds the challenges (--challenges, else `arc-agi_test_challenges.json` under --kaggle-root;
pipeline/data/kaggle_input.py), writes the all-fallback submission to --out before importing torch, then runs the
budgeted flow (pipeline/submit/submit_flow.py; the plan's arithmetic in pipeline/submit/budget.py; README, "Budgeted
submission"), ending with a `summary: {...}` line and OUT.plan.json. The stage re-executes itself with
PYTHONHASHSEED=0, so a pinned plan (--ttt-steps, --views) gives the same submission on a rerun.

Several checkpoints make an ensemble: each member in turn calibrates, plans, test-time trains (seed --seed + its
index, so one checkpoint named twice makes two TTT runs) and predicts inside its share of the time left and of
the views, by --weights; after each member the pooled votes (pipeline/prediction/ensemble.py) replace the
submission, and OUT.plan.json lists every member's plan and outcome. A member that cannot be opened or fails
costs only its share.

Exit status: 0 when a valid submission was written, even if a stage fell back (the summary says which);
2 for bad input (no test file, unreadable JSON, bad checkpoint or config: one line; whatever was written
before, the fallback at least, stays valid). Under torchrun each rank ends with os._exit once its output is
flushed, so no thread left at interpreter exit can change its status.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from stages._cli import fail, positive_int, run

STARTED = time.time()


def reexec_with_fixed_hash_seed() -> None:
    """Python's string hashing is seeded per process unless PYTHONHASHSEED is set: re-run ourselves with it
    fixed (same pid, so torchrun keeps tracking the worker), and with cuBLAS's reproducible workspace."""
    if os.environ.get("PYTHONHASHSEED") == "0":
        return
    os.environ["PYTHONHASHSEED"] = "0"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ["TRM_SUBMIT_STARTED"] = repr(STARTED)  # the budget counts from the first start
    os.execv(sys.executable, [sys.executable, "-m", "stages.submit", *sys.argv[1:]])


def parser() -> argparse.ArgumentParser:
    """stages.submit's options (stages.kaggle checks a notebook's --submit-args with it at build time)."""
    scratch = Path(os.environ.get("TRM_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "trm")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="pretrained run folder or checkpoint folder; several: an ensemble")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="ensemble: one weight per checkpoint, for its votes and its share of time and views "
                        "(default 1 each)")
    p.add_argument("--challenges", help="challenges file (default: arc-agi_test_challenges.json under --kaggle-root)")
    p.add_argument("--kaggle-root", default="/kaggle/input", help="Kaggle input root searched without --challenges")
    p.add_argument("--out", default="/kaggle/working/submission.json", help="submission to write")
    p.add_argument("--budget-s", type=float, default=6 * 3600.0, help="wall-clock seconds for this whole command")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ttt-config", nargs="+", default=["configs/ttt_full.yaml"],
                   help="TTT presets (deltas over the checkpoint's config, in order: a recipe, then e.g. "
                        "configs/ttt_fast.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for TTT and prediction")
    p.add_argument("--work-dir", default=str(scratch / "submit"), help="TTT run and calibration scratch")
    p.add_argument("--policy", default="ttt_first", choices=["ttt_first", "views_first"],
                   help="which gets time first beyond the view floor: TTT steps (McGovern) or views")
    p.add_argument("--margin", type=float, default=0.15, help="fraction of the budget left unplanned")
    p.add_argument("--views-floor", type=positive_int, default=256)
    p.add_argument("--views-max", type=positive_int, default=1000)
    p.add_argument("--views-min", type=positive_int, default=8)
    p.add_argument("--ttt-max-steps", type=int, default=0, help="most TTT steps (0: the preset's train.steps)")
    p.add_argument("--ttt-min-steps", type=int, default=100, help="fewer steps than this fit: no TTT")
    p.add_argument("--steps-fraction", type=float, default=1.0,
                   help="with predict.adaptive_halting only: expected fraction of the N_sup steps a view runs "
                        "(1: the worst case; lower plans more views)")
    p.add_argument("--ttt-steps", type=int, default=None, help="pin the TTT steps (0: no TTT)")
    p.add_argument("--views", type=positive_int, default=None, help="pin the views per test input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="torch deterministic kernels (slower on GPU)")
    p.add_argument("--progress", action="store_true", help="progress bars (off: Kaggle logs stay short)")
    return p


def parse_args(argv=None):
    return parser().parse_args(argv)


def fallback_first(argv=None):
    """Parse, find and read the challenges, and (rank 0) write the all-fallback submission, importing nothing
    heavy: a valid file is on disk even if importing torch fails. Returns (args, challenges path)."""
    from pipeline.data.kaggle_input import count_inputs, find_test_challenges
    from pipeline.data.tasks import read_task_map, write_json_atomic
    from submission.format import build_submission

    args = parse_args(argv)
    if args.challenges:
        path, how = Path(args.challenges), "--challenges"
    else:
        path, how = find_test_challenges(args.kaggle_root)
    challenges = read_task_map(path)
    tasks, inputs = count_inputs(challenges)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"challenges: {path} ({how}): {tasks} tasks, {inputs} test inputs", flush=True)
        write_json_atomic(args.out, build_submission(challenges, {})[0])
        print(f"fallback submission written to {args.out} ({time.time() - started_at():.1f}s)", flush=True)
    return args, path


def started_at() -> float:
    return float(os.environ.get("TRM_SUBMIT_STARTED", STARTED))


def main(argv=None, early=None) -> int:
    args, path = early or fallback_first(argv)
    from pipeline.submit.budget import Policy
    from pipeline.submit.submit_flow import SubmitJob, run_submit

    from pipeline.config import ConfigError
    from pipeline.prediction.ensemble import members

    try:
        policy = Policy(order=args.policy, margin=args.margin, views_floor=min(args.views_floor, args.views_max),
                        views_max=args.views_max, views_min=min(args.views_min, args.views_floor, args.views_max),
                        ttt_max_steps=args.ttt_max_steps, ttt_min_steps=args.ttt_min_steps,
                        predict_steps_fraction=args.steps_fraction, pinned_steps=args.ttt_steps,
                        pinned_views=args.views)
    except ValueError as e:
        raise ConfigError(f"budget policy: {e}") from e
    job = SubmitJob(challenges=path, out=Path(args.out), members=members(args.checkpoint, args.weights),
                    budget_s=args.budget_s, started=started_at(), work_dir=Path(args.work_dir), device=args.device,
                    ttt_preset=args.ttt_config, overrides=args.set, policy=policy, progress=args.progress,
                    deterministic=args.deterministic, seed=args.seed)
    return run_submit(job)


def cli() -> None:
    """`python -m stages.submit`: the re-exec, the fallback before torch, then the flow."""
    reexec_with_fixed_hash_seed()
    from pipeline.data.tasks import DataError

    try:
        early = fallback_first()
    except DataError as e:  # before torch is imported
        fail(e)

    if "LOCAL_RANK" not in os.environ:
        run(lambda argv: main(argv, early))  # exits
    try:  # under torchrun: once the flow returns, nothing may change the exit status (a gloo/NCCL thread at exit)
        run(lambda argv: main(argv, early))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
