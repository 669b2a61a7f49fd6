"""A/B accuracy of one departure from the official computation: the same flow run twice from the same
checkpoint and seeds, plainly (A) and with the departure (B), scored by stages.score --compare.

    python -m bench.ab --checkpoint CK --challenges F --solutions S --b "compute.crop=true"      # predict only
    python -m bench.ab --checkpoint CK --challenges F --solutions S --ttt-config configs/demo_ttt.yaml \\
        --set train.steps=200 --b "compute.crop=true compute.crop_groups=8 data.max_offset=1"    # ttt -> predict
    python -m bench.ab ... --b "predict.adaptive_halting=true" --label "adaptive halting"

The flow is the stages as a user runs them, as subprocesses: with --ttt-config, `stages.ttt` (the presets,
then --set, then B's keys) then `stages.predict` on the TTT run; without, `stages.predict` on the checkpoint.
`--set` and B's `key=value` settings go to every stage of the flow (stages.predict takes --set too; a key a
stage does not use changes nothing there), `--b-ttt-flags` / `--b-predict-flags` add raw flags on B's side.
Both sides use the same seeds (the configs' own), so B differs from A by the departure alone. Each side runs
in OUT/<hash of its commands>/ and is reused when its commands are unchanged (several departures share one A).

Prints, per side, pass@2 (stages.score), seconds of each stage, and the first attempts' finer agreement with
the truth (right shape; cells right where the shape is right: what moves when pass@2 is 0 either way), then
the tasks B gained and lost against A (stages.score --compare) and on how many test inputs the attempts
changed at all, and one JSON line last.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.common import emit
from pipeline.data.tasks import write_json_atomic
from stages._cli import fail

ROOT = Path(__file__).resolve().parents[1]


def _stage(args: list[str], log: Path) -> float:
    """Run `python -m stages...` from the repo root; its output goes to `log`. Returns the wall seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(args) + "\n")
        f.flush()
        r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if r.returncode != 0:
        fail(RuntimeError(f"{shlex.join(args)} failed (exit {r.returncode}): see {log}"))
    return time.perf_counter() - t0


def flow_commands(args, sets: list[str], ttt_flags: list[str], predict_flags: list[str], side: Path) -> list[list[str]]:
    """The stage commands of one side, writing into `side`."""
    model = args.checkpoint
    cmds = []
    if args.ttt_config:
        cmds.append(["stages.ttt", "--checkpoint", model, "--challenges", args.challenges, "--out", str(side / "ttt"),
                     "--config", *args.ttt_config, *ttt_flags, "--set", "train.progress=false", *sets])
        model = str(side / "ttt")
    cmds.append(["stages.predict", "--checkpoint", model, "--challenges", args.challenges, "--out",
                 str(side / "submission.json"), "--no-progress", *predict_flags, *(["--set", *sets] if sets else [])])
    return cmds


def run_side(args, name: str, sets: list[str], ttt_flags: list[str], predict_flags: list[str]) -> dict:
    """Run (or reuse) one side; returns its commands, seconds per stage and submission path."""
    key = json.dumps([args.checkpoint, args.challenges, args.ttt_config, sets, ttt_flags, predict_flags])
    side = Path(args.out) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    done = side / "side.json"
    if done.exists():
        result = json.loads(done.read_text())
        print(f"{name}: reusing {side}", file=sys.stderr)
        return result
    side.mkdir(parents=True, exist_ok=True)
    cmds = flow_commands(args, sets, ttt_flags, predict_flags, side)
    seconds = {}
    for cmd in cmds:
        print(f"{name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        seconds[cmd[0].split(".")[1]] = round(_stage(cmd, side / "log.txt"), 1)
    result = {"side": str(side), "commands": [shlex.join(["python", "-m", *c]) for c in cmds], "seconds": seconds,
              "submission": str(side / "submission.json")}
    write_json_atomic(done, result)
    return result


def score(solutions: str, submission: str, compare: str | None = None) -> dict:
    """stages.score's JSON line (pass@2; with `compare`, the other's score and the tasks gained and lost)."""
    cmd = [sys.executable, "-m", "stages.score", "--solutions", solutions, "--submission", submission]
    r = subprocess.run(cmd + (["--compare", compare] if compare else []), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        fail(RuntimeError(f"stages.score failed (exit {r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1]}"))
    return json.loads(r.stdout.strip().splitlines()[-1])


def first_attempts(solutions: dict, submission: dict) -> dict:
    """The first attempts against the truth: how many have the right shape, and the fraction of cells right
    over those (a finer signal than pass@2 for a model that solves nothing)."""
    shapes = inputs = cells = right = 0
    for task, truths in solutions.items():
        for k, truth in enumerate(truths):
            inputs += 1
            entries = submission.get(task) or []
            guess = entries[k].get("attempt_1") if k < len(entries) and isinstance(entries[k], dict) else None
            if not guess or len(guess) != len(truth) or any(len(a) != len(b) for a, b in zip(guess, truth)):
                continue
            shapes += 1
            cells += sum(len(row) for row in truth)
            right += sum(a == b for ga, ta in zip(guess, truth) for a, b in zip(ga, ta))
    return {"inputs": inputs, "right_shape": shapes, "cells_right": round(right / cells, 4) if cells else None}


def changed_inputs(a: dict, b: dict) -> tuple[int, int]:
    """Test inputs whose first attempt / whose pair of attempts differ between two submissions."""
    first = both = 0
    for task, entries in a.items():
        for x, y in zip(entries, b.get(task) or []):
            first += x.get("attempt_1") != y.get("attempt_1")
            both += x != y
    return first, both


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the checkpoint both sides start from")
    p.add_argument("--challenges", required=True, help="Kaggle-format challenges (the flow never reads solutions)")
    p.add_argument("--solutions", required=True, help="their solutions (only the scorer reads them)")
    p.add_argument("--ttt-config", nargs="+", default=None, help="TTT presets: the flow is ttt -> predict")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of both sides")
    p.add_argument("--b", default="", help="B's departure: 'key=value ...' added to every stage's --set")
    p.add_argument("--b-ttt-flags", default="", help="B only: raw flags for stages.ttt")
    p.add_argument("--b-predict-flags", default="", help="B only: raw flags for stages.predict (e.g. --crop)")
    p.add_argument("--label", default="", help="the departure's name in the printed row")
    p.add_argument("--out", default="runs/ab/sides", help="folder of the sides (reused when unchanged)")
    args = p.parse_args(argv)
    b_sets = shlex.split(args.b)
    if not (b_sets or args.b_ttt_flags or args.b_predict_flags):
        fail(ValueError("give the departure: --b 'key=value ...' and/or --b-ttt-flags / --b-predict-flags"))
    for path in (args.checkpoint, args.challenges, args.solutions, *(args.ttt_config or [])):
        if not Path(path).exists():
            fail(FileNotFoundError(f"{path} does not exist"))
    a = run_side(args, "a", list(args.set), [], [])
    b = run_side(args, "b", [*args.set, *b_sets], shlex.split(args.b_ttt_flags), shlex.split(args.b_predict_flags))
    solutions = json.loads(Path(args.solutions).read_text())
    for side in (a, b):
        side["pass@2"] = score(args.solutions, side["submission"])["score"]
        side["first_attempts"] = first_attempts(solutions, json.loads(Path(side["submission"]).read_text()))
    cmp = score(args.solutions, b["submission"], compare=a["submission"])
    changed = changed_inputs(*(json.loads(Path(side["submission"]).read_text()) for side in (a, b)))
    label = args.label or " ".join(b_sets + shlex.split(args.b_ttt_flags) + shlex.split(args.b_predict_flags))
    for name, side in (("A (official)", a), (f"B ({label})", b)):
        fa = side["first_attempts"]
        print(f"{name}: pass@2 {side['pass@2']:.4f}, seconds {side['seconds']}, first attempts: "
              f"{fa['right_shape']}/{fa['inputs']} right shape, {fa['cells_right']} of their cells right",
              file=sys.stderr)
    print(f"B vs A: {len(cmp['gained'])} tasks gained {cmp['gained']}, {len(cmp['lost'])} lost {cmp['lost']}; "
          f"attempts changed on {changed[1]} test inputs (the first attempt on {changed[0]})", file=sys.stderr)
    emit({"bench": "ab", "label": label, "checkpoint": args.checkpoint, "challenges": args.challenges,
          "ttt_config": args.ttt_config, "set": args.set, "b": b_sets, "a": a, "b_side": b,
          "gained": cmp["gained"], "lost": cmp["lost"], "changed_first": changed[0], "changed_attempts": changed[1]})


if __name__ == "__main__":
    main()
