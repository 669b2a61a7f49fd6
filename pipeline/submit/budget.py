"""The compute budget of the hidden-test flow as pure arithmetic: the policy that splits it between TTT steps and
views per test input, the measured costs it plans with (Calibration, measured by pipeline/submit/calibration.py), the
plan, and the deadlines that hold each stage to its share. Nothing here runs a model or imports torch."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Literal

VIEW_QUANTUM = 8
PREDICT_ERROR_P90 = 1.17
"""Prediction's actual seconds over its calibrated projection, 90th percentile of 12 demo runs beside a CPU hog
on the shared 2-core machine (python -m bench.calibration, BENCHMARKS.md; median 0.96, max 2.31). TTT can
take half the margin (its deadline), so prediction keeps the other half: inputs are cut off when
(error - 1) x prediction's share of the budget exceeds margin / 2. Measured on CPU only and applied to every
plan, GPU ones included (no GPU run has measured it: a GPU's error under Kaggle's load may differ)."""


@dataclass(kw_only=True)
class Policy:
    """How the budget is split between TTT steps and views per test input. `ttt_first` follows McGovern's ARC-AGI-2
    TTT report (arXiv 2511.02886: 256 and 512 views scored about the same, while more TTT steps kept paying): views
    start at `views_floor`, TTT gets the rest up to the recipe's length, and only time left after that raises the
    views toward `views_max`; when even the floor does not fit beside `ttt_min_steps`, the views go down toward
    `views_min` first (TTT is what makes TRM score on unseen tasks at all). `views_first` is the opposite order,
    for comparison. Steps are rounded down to a multiple of `step_quantum` (from 10 quanta up) and views to a
    multiple of 8, so small timing differences between reruns rarely change the plan (and so the submission)."""
    order: Literal["ttt_first", "views_first"] = "ttt_first"
    margin: float = 0.15
    """Fraction of the budget never planned (calibration error, the hidden file's slower tasks). 15% covers
    the 90th-percentile prediction error (PREDICT_ERROR_P90) for plans whose prediction takes up to 44% of
    the budget (margin / 2 >= 0.17 x share; the Kaggle flow's is ~35%); `margin_for` says what a plan needs."""
    views_floor: int = 256
    views_max: int = 1000
    views_min: int = 8
    ttt_max_steps: int = 0
    """Most TTT steps (0 = the TTT preset's train.steps, the recipe's length)."""
    ttt_min_steps: int = 100
    """Fewer planned steps than this are not worth a TTT run: the pretrained model predicts instead."""
    step_quantum: int = 50
    predict_steps_fraction: float = 1.0
    """Expected fraction of the N_sup steps a view runs: 1.0 under the official evaluation (every view runs
    them all); lower only with predict.adaptive_halting, where 1.0 is the worst case (no view ever cut off)."""
    write_reserve_s: float = 2.0
    """Seconds kept at the end for gathering and writing the submission (plus 0.5% of the budget)."""
    chunk_fraction: float = 0.01
    """Seconds per chunk of test inputs in prediction, as a fraction of the budget (up to twice that where the
    chunk's last model batch fills better): the granularity of prediction's deadline."""
    pinned_steps: int | None = None
    """TTT steps kept as given (--ttt-steps; 0 = no TTT) instead of planned: a reproducible plan."""
    pinned_views: int | None = None
    """Views per test input kept as given (--views) instead of planned."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError("margin must be in [0, 1)")
        if not 1 <= self.views_min <= self.views_floor <= self.views_max:
            raise ValueError("views must satisfy 1 <= views_min <= views_floor <= views_max")
        if not 0.0 < self.predict_steps_fraction <= 1.0:
            raise ValueError("predict_steps_fraction must be in (0, 1]")


@dataclass
class Calibration:
    """Measured seconds on this file and these devices (the slowest rank's, under torchrun)."""
    ttt_startup_s: float = 0.0
    """Build, warm start, wrap and the first step (torch.compile on GPU): paid again by the real run."""
    ttt_step_s: float = 0.0
    ttt_save_s: float = 0.0
    predict_startup_s: float = 0.0
    """Loading the model and the first batch beyond a steady one (compile on GPU): paid again after TTT."""
    view_s: float = 0.0
    """Seconds per view on one rank, every view run for all N_sup steps."""
    inputs_per_rank: int = 0
    """Test inputs the slowest rank predicts (they are sharded over ranks)."""
    batch: int = 0
    """Views per model batch (pipeline.prediction.infer.model_batch: predict.batch_size, fewer on CPU; 0 = unknown, no
    batch rounding)."""
    max_chunk_views: int = 65536
    """predict.chunk_views: views held in memory at once (bounds a chunk)."""
    ttt_error: str | None = None

    def merge(self, other: "Calibration") -> "Calibration":
        """The slower of two ranks' measurements."""
        timed = {f.name: max(getattr(self, f.name), getattr(other, f.name))
                 for f in dataclasses.fields(self) if f.name != "ttt_error"}
        return Calibration(**timed, ttt_error=self.ttt_error or other.ttt_error)


@dataclass
class Plan:
    budget_s: float
    ttt_steps: int
    views: int
    ckpt_every: int
    seconds: dict = field(default_factory=dict)
    """Planned seconds per stage: setup (spent before planning), ttt, predict, write, margin."""
    why: str = ""


def _round_down(x: float, q: int) -> int:
    return int(max(0, math.floor(x / q) * q))


def write_reserve(policy: Policy, budget_s: float) -> float:
    return policy.write_reserve_s + 0.005 * budget_s


def ttt_seconds(cal: Calibration, steps: int, ckpt_every: int) -> float:
    if steps <= 0:
        return 0.0
    return cal.ttt_startup_s + steps * cal.ttt_step_s + (steps // max(ckpt_every, 1) + 1) * cal.ttt_save_s


def chunk_inputs(cal: Calibration, views: int, policy: Policy, budget_s: float) -> int:
    """Test inputs per prediction chunk: about `chunk_fraction` of the budget, up to twice that where the
    chunk's last model batch fills better (every view of a chunk finishes before the next chunk starts, so
    that batch runs part-empty: with 1000 views and batches of 768, 3 inputs leave 2% empty, 4 inputs 15%),
    at least one input, at most what memory (predict.chunk_views) and the inputs allow. Chunking never
    changes results."""
    per_input = views * cal.view_s * policy.predict_steps_fraction
    target = policy.chunk_fraction * budget_s
    cap = max(1, min(cal.max_chunk_views // views, cal.inputs_per_rank))
    lo = max(1, min(int(target / per_input) if per_input > 0 else cap, cap))
    hi = max(lo, min(int(2 * target / per_input) if per_input > 0 else cap, cap))
    if cal.batch <= 0:
        return lo
    return min(range(lo, hi + 1), key=lambda c: ((-(-c * views // cal.batch) * cal.batch - c * views) / (c * views), c))


def predict_seconds(cal: Calibration, views: int, policy: Policy, budget_s: float) -> float:
    """Prediction on the slowest rank, every view running all N_sup steps (times predict_steps_fraction):
    chunk by chunk, each rounded up to whole model batches (the batch-run a chunk's last views need)."""
    n, per_view = cal.inputs_per_rank, cal.view_s * policy.predict_steps_fraction
    if cal.batch <= 0 or n <= 0:
        return cal.predict_startup_s + n * views * per_view
    c = chunk_inputs(cal, views, policy, budget_s)
    batches = (n // c) * -(-c * views // cal.batch) + -(-(n % c) * views // cal.batch)
    return cal.predict_startup_s + batches * cal.batch * per_view


def views_that_fit(cal: Calibration, seconds: float, policy: Policy, cap: int, budget_s: float) -> int:
    """Most views per test input whose prediction fits `seconds` (`cap`, else a multiple of 8, else fewer),
    0 if not even one view fits."""
    for v in (cap, *range(cap - cap % VIEW_QUANTUM, VIEW_QUANTUM - 1, -VIEW_QUANTUM), *range(VIEW_QUANTUM - 1, 0, -1)):
        if predict_seconds(cal, v, policy, budget_s) <= seconds:
            return v
    return 0


def steps_that_fit(cal: Calibration, seconds: float, policy: Policy, cap: int, ckpt_every: int) -> int:
    room = seconds - cal.ttt_startup_s - cal.ttt_save_s
    if room <= 0 or cal.ttt_error:
        return 0
    per_step = cal.ttt_step_s + cal.ttt_save_s / max(ckpt_every, 1)
    n = room / per_step if per_step > 0 else cap
    q = policy.step_quantum
    return min(cap, _round_down(n, q if n >= 10 * q else 1))  # short runs are not rounded away


def make_plan(policy: Policy, cal: Calibration, budget_s: float, spent_s: float, max_steps: int,
              ckpt_every: int) -> Plan:
    """TTT steps and views per test input that end the flow inside budget_s less the margin, given the
    seconds already spent (setup and calibration), for a TTT recipe of `max_steps` saving every `ckpt_every`.
    The policy's pinned values are kept as they are (a reproducible plan)."""
    pinned_steps, pinned_views = policy.pinned_steps, policy.pinned_views
    cap = policy.ttt_max_steps or max_steps
    margin_s = policy.margin * budget_s
    avail = budget_s - margin_s - spent_s - write_reserve(policy, budget_s)
    vmax = policy.views_max
    if pinned_steps is not None and pinned_views is not None:
        steps, views, why = pinned_steps, pinned_views, "pinned"
    elif pinned_steps is not None:
        steps = pinned_steps
        room = avail - ttt_seconds(cal, steps, ckpt_every)
        views = max(1, views_that_fit(cal, room, policy, vmax, budget_s))
        why = "steps pinned, views fill the rest"
    elif pinned_views is not None:
        views = pinned_views
        steps = steps_that_fit(cal, avail - predict_seconds(cal, views, policy, budget_s), policy, cap, ckpt_every)
        why = "views pinned, TTT fills the rest"
    elif cal.ttt_error:
        steps, views, why = 0, max(1, views_that_fit(cal, avail, policy, vmax, budget_s)), "TTT cannot run: views only"
    elif policy.order == "views_first":
        views = max(1, views_that_fit(cal, avail - ttt_seconds(cal, policy.ttt_min_steps, ckpt_every), policy, vmax,
                                      budget_s))
        steps = steps_that_fit(cal, avail - predict_seconds(cal, views, policy, budget_s), policy, cap, ckpt_every)
        why = "views first (up to views_max), TTT gets the rest"
    else:
        steps, views, why = _ttt_first(policy, cal, avail, cap, ckpt_every, budget_s)
    if 0 < steps < min(policy.ttt_min_steps, cap) and pinned_steps is None:
        steps, why = 0, why + f"; fewer than {policy.ttt_min_steps} TTT steps fit: no TTT"
        if pinned_views is None:
            views = max(1, views_that_fit(cal, avail, policy, vmax, budget_s))
    seconds = {"setup": spent_s, "ttt": ttt_seconds(cal, steps, ckpt_every),
               "predict": predict_seconds(cal, views, policy, budget_s), "write": write_reserve(policy, budget_s),
               "margin": margin_s}
    return Plan(budget_s, steps, views, ckpt_every, seconds, why)


def _ttt_first(policy: Policy, cal: Calibration, avail: float, cap: int, ckpt_every: int,
               budget_s: float) -> tuple[int, int, str]:
    floor = policy.views_floor

    def predict(v):
        return predict_seconds(cal, v, policy, budget_s)

    steps = steps_that_fit(cal, avail - predict(floor), policy, cap, ckpt_every)
    if steps >= cap:  # the recipe is complete: what is left raises the views
        left = avail - ttt_seconds(cal, cap, ckpt_every)
        return cap, max(floor, views_that_fit(cal, left, policy, policy.views_max, budget_s)), \
            "TTT recipe complete at the view floor; the rest raised the views"
    if steps >= policy.ttt_min_steps:
        return steps, floor, "views at the floor, TTT gets the rest"
    # Not even the floor beside a minimal TTT run: fewer views (TTT is what makes unseen tasks score).
    room = avail - ttt_seconds(cal, min(policy.ttt_min_steps, cap), ckpt_every)
    views = views_that_fit(cal, room, policy, floor, budget_s)
    if views >= policy.views_min:
        steps = steps_that_fit(cal, avail - predict(views), policy, cap, ckpt_every)
        return steps, views, "short budget: views below the floor to keep a minimal TTT run"
    views = max(1, views_that_fit(cal, avail, policy, floor, budget_s))
    return 0, views, "too short for TTT: the pretrained model predicts"


def margin_for(plan: Plan) -> float:
    """The margin that keeps this plan's prediction whole at the 90th-percentile calibration error."""
    return 2 * (PREDICT_ERROR_P90 - 1) * plan.seconds["predict"] / plan.budget_s


def collective_timeout_s(budget_s: float) -> float:
    """How long a collective of the flow may wait for the other ranks: the longest legitimate wait is a rank
    ahead by up to two prediction chunks at the final gather (each about `chunk_fraction` of the budget,
    up to twice that) or by rank 0's checkpoint save; 5% of the budget, at least 5 minutes. A rank stuck
    longer ends the wait with an error instead of holding the others until the notebook's watchdog."""
    return max(300.0, 0.05 * budget_s)


@dataclass
class Deadlines:
    """Absolute wall-clock times (time.time()) of the flow: the end of the budget and the TTT share."""
    end: float
    ttt: float
    """TTT's Stop deadline: its planned end plus half the margin."""
    ttt_planned_end: float
    margin_s: float
    write_s: float

    def predict_seconds_left(self, now: float | None = None) -> float:
        """Seconds prediction may plan for: to the end, less the writing reserve and the margin, of which
        a TTT overrun may have used up to half (so prediction keeps at least its planned share, and gets
        whatever TTT saved)."""
        now = now or time.time()
        kept = self.margin_s - min(max(0.0, now - self.ttt_planned_end), self.margin_s / 2)
        return self.end - self.write_s - kept - now

    def predict_deadline(self, chunk_s: float) -> float:
        """time.perf_counter() value after which prediction starts no new chunk: the end less the writing
        reserve and twice a chunk's estimated seconds (a loaded machine runs slower than calibrated), but never
        earlier than half the margin before that (where a chunk on plan may still start)."""
        wall = self.end - self.write_s - min(2 * chunk_s, self.margin_s / 2)
        return time.perf_counter() + (wall - time.time())


def deadlines(plan: Plan, started: float, now: float | None = None) -> Deadlines:
    """The shares of a plan made at `now` for a flow that started at `started`."""
    now = now or time.time()
    s = plan.seconds
    end = started + plan.budget_s
    planned_end = now + s["ttt"]
    # never later than what keeps prediction its planned seconds and the other half of the margin (a plan whose
    # TTT does not fit the budget, pinned --ttt-steps, would otherwise leave prediction no chunk to start)
    return Deadlines(end, min(planned_end, end - s["write"] - s["predict"] - s["margin"]) + s["margin"] / 2,
                     planned_end, s["margin"], s["write"])
