"""The whole hidden-test flow inside a compute budget: fallback -> calibrate -> plan -> TTT -> predict -> vote
-> write, with a valid submission on disk at every moment.

    python -m stages.submit --checkpoint runs/arc2/pretrain                      # on Kaggle: finds the test file
    python -m stages.submit --checkpoint CK --challenges FILE --out S.json --budget-s 3600
    python -m stages.submit ... --ttt-config configs/ttt_nvarc.yaml --set train.global_batch=256
    python -m stages.submit ... --ttt-config configs/ttt_full.yaml configs/ttt_fast.yaml --steps-fraction 0.5
    python -m stages.submit ... --ttt-steps 2000 --views 256                     # a pinned, reproducible plan
    torchrun --nproc-per-node 4 -m stages.submit ...                             # one process per GPU

1. Finds the challenges (--challenges, else `arc-agi_test_challenges.json` under --kaggle-root: the 2025 and
   2026 layouts, else a recursive search; pipeline/kaggle_input.py) and says which file and how many tasks
   and test inputs; writes the all-fallback submission to --out atomically before importing torch.
2. Calibrates TTT and prediction on that file and these devices, and plans TTT steps and views per test input
   to end inside the budget less --margin (pipeline/budget.py: the policy, McGovern's "views at a floor of
   256, TTT steps to the recipe's length, then views up to 1000", and each stage's share); prints the plan.
3. TTT (pipeline/ttt.py, presets --ttt-config < --set), stopped at a step boundary past its share; predict with
   the latest TTT checkpoint (pipeline/hidden.py); replaces the submission atomically; prints the seconds per
   stage and a last `summary: {...}` line, and writes the plan and the actual seconds to OUT.plan.json.
   Everything computes as the checkpoint was trained, evaluated officially (all N_sup steps, untranslated
   views), unless --ttt-config / --set ask for a departure: printed in one line and kept in OUT.plan.json.

Exit status: 0 when a valid submission was written, even if a stage fell back (the summary says which);
2 for bad input (no test file, unreadable JSON, bad checkpoint or config: one line; whatever was written
before, the fallback at least, stays valid). Under torchrun a rank that fails takes the process group down
and rank 0 finishes alone (the others exit 0 so that torchrun lets it), and the summary's `failed_ranks`
says which rank failed and why (pipeline/submit_flow.py); each rank ends with os._exit once its output is
flushed, so no thread left at interpreter exit can change its status.

Determinism: Python's hash seed is fixed by re-executing with PYTHONHASHSEED=0 (unless already 0), every
generator is seeded (--seed), views depend only on (seed, test input) and TTT batches on (seed, step), so a
rerun with the same plan gives the same submission on CPU (--deterministic adds torch's deterministic GPU
kernels). The plan comes from timings; it is rounded (steps to 50, views to 8) and --ttt-steps/--views pin it.
The TTT run lives in --work-dir (default $TRM_SCRATCH_DIR/submit, else /tmp/trm/submit, never the output
folder), named after the challenges, checkpoint and settings: a rerun after a kill resumes it.
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
    p.add_argument("--checkpoint", required=True, help="pretrained run folder or checkpoint folder")
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
    from pipeline.kaggle_input import count_inputs, find_test_challenges
    from pipeline.tasks import DataError, read_json, write_json_atomic
    from submission.format import build_submission

    args = parse_args(argv)
    if args.challenges:
        path, how = Path(args.challenges), "--challenges"
    else:
        path, how = find_test_challenges(args.kaggle_root)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object mapping task ids to tasks")
    tasks, inputs = count_inputs(raw)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"challenges: {path} ({how}): {tasks} tasks, {inputs} test inputs", flush=True)
        write_json_atomic(args.out, build_submission(raw, {})[0])
        print(f"fallback submission written to {args.out} ({time.time() - started_at():.1f}s)", flush=True)
    return args, path


def started_at() -> float:
    return float(os.environ.get("TRM_SUBMIT_STARTED", STARTED))


def main(argv=None, early=None) -> int:
    args, path = early or fallback_first(argv)
    from pipeline.budget import Policy
    from pipeline.submit_flow import SubmitJob, run_submit

    from pipeline.config import ConfigError

    try:
        policy = Policy(order=args.policy, margin=args.margin, views_floor=min(args.views_floor, args.views_max),
                        views_max=args.views_max, views_min=min(args.views_min, args.views_floor, args.views_max),
                        ttt_max_steps=args.ttt_max_steps, ttt_min_steps=args.ttt_min_steps,
                        predict_steps_fraction=args.steps_fraction)
    except ValueError as e:
        raise ConfigError(f"budget policy: {e}") from e
    job = SubmitJob(challenges=path, out=Path(args.out), checkpoint=args.checkpoint, budget_s=args.budget_s,
                    started=started_at(), work_dir=Path(args.work_dir), device=args.device,
                    ttt_preset=args.ttt_config, overrides=args.set, policy=policy, ttt_steps=args.ttt_steps,
                    views=args.views, progress=args.progress, deterministic=args.deterministic, seed=args.seed)
    return run_submit(job)


def cli() -> None:
    """`python -m stages.submit`: the re-exec, the fallback before torch, then the flow."""
    reexec_with_fixed_hash_seed()
    from pipeline.tasks import DataError

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
