"""Checkpoint ensembles: several models' votes pooled into one ranked list per test input.

Each member predicts with its own views and votes as usual, keeping POOL_CANDIDATES grids per test input; the
pooled rank of a grid is the weighted sum of its vote shares (votes / the member's valid views), so a member
with more views does not outvote the others by count alone; ties go to the vote-weighted mean confidence, then
to the earlier member. A member that failed (None) costs only its own share: the others still pool.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from pipeline.checkpoint import load_for_prediction
from pipeline.computation import describe
from pipeline.config import ConfigError
from pipeline.prediction.challenges import ChallengeRun, predict_challenges
from pipeline.prediction.infer import PredictOptions, TestPrediction
from pipeline.layout import Checkpoint, CheckpointError
from pipeline.runtime import Runtime
from pipeline.data.sources import LoadResult

log = logging.getLogger(__name__)

POOL_CANDIDATES = 8
"""Grids each member keeps per test input for the pool: a member's third choice can be the pool's second."""


@dataclass(frozen=True)
class Member:
    checkpoint: str
    weight: float = 1.0


def members(checkpoints: list[str], weights: list[float] | None) -> list[Member]:
    """The ensemble named on a command line; `weights` (one per checkpoint, > 0) default to 1 each."""
    weights = weights or [1.0] * len(checkpoints)
    if len(weights) != len(checkpoints):
        raise ConfigError(f"{len(weights)} weights for {len(checkpoints)} checkpoints: give one per checkpoint")
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise ConfigError(f"ensemble weights must be finite and > 0, got {weights}")
    return [Member(c, float(w)) for c, w in zip(checkpoints, weights)]


def split_views(total: int, weights: list[float], quantum: int = 1) -> list[int]:
    """`total` views per test input shared among members in proportion to their weights, each a multiple of
    `quantum` and at least `quantum`: the quanta by largest remainder (ties to the earlier member), so the sum is
    total rounded down to a quantum, or quantum * len(weights) where that is more."""
    units = total // quantum
    share = [units * w / sum(weights) for w in weights]
    out = [int(s) for s in share]
    for i in sorted(range(len(out)), key=lambda i: (out[i] - share[i], i))[:units - sum(out)]:
        out[i] += 1
    return [max(1, u) * quantum for u in out]


def share_of_rest(weights: list[float], i: int) -> float:
    """Member i's fraction of the time left when it starts: its weight among it and the members after it, so
    time an earlier member did not use (or could not: it failed) goes to the later ones by weight."""
    return weights[i] / sum(weights[i:])


def predict_members(ms: list[Member], valid: LoadResult, rt: Runtime, overrides: list[str], views: int | None,
                    use_ema: bool = True, deadline: float | None = None, show_progress: bool = True) -> ChallengeRun:
    """Each member predicts the valid tasks with its share of `views` per test input (default: the first
    member's predict.augs) and of the time left before `deadline`; the pooled run ranks their votes. A member
    that cannot be loaded or fails is logged and costs only its share; if every member fails to load, the
    first error is raised."""
    runs: list[ChallengeRun | None] = []
    k = 0
    first_error: Exception | None = None
    for i, m in enumerate(ms):
        try:
            ckpt = Checkpoint.open(m.checkpoint)
            total = views or ckpt.config.predict.augs
            share = split_views(total, [x.weight for x in ms])[i]
            loaded = load_for_prediction(ckpt, rt.device, use_ema, overrides + [f"predict.augs={share}"])
        except (CheckpointError, ConfigError, OSError, RuntimeError, ValueError) as e:
            log.error("ensemble member %s cannot be loaded (%s): its share of the views is lost", m.checkpoint, e)
            first_error = first_error or e
            runs.append(None)
            continue
        k = k or loaded.config.predict.top_k  # the attempts the submission keeps: the first member's
        wide = dataclasses.replace(loaded.config.predict, top_k=max(k, POOL_CANDIDATES))
        opts = PredictOptions.of(loaded.config, rt, predict=wide)
        left = None
        if deadline is not None:  # this member's share of the time still left
            now = time.perf_counter()
            left = now + (deadline - now) * share_of_rest([x.weight for x in ms], i)
        log.info("ensemble member %d/%d %s: weight %g, %d views per test input; %s", i + 1, len(ms), m.checkpoint,
                 m.weight, share, describe(loaded.departures))
        try:
            runs.append(predict_challenges(loaded, valid, opts, rt, left, show_progress=show_progress))
        except Exception as e:  # noqa: BLE001 - a failing member must not cost the others
            log.exception("ensemble member %s failed (%s): its share of the views is lost", m.checkpoint, e)
            runs.append(None)
        del loaded
    if all(r is None for r in runs) and first_error is not None:
        raise first_error
    return pool(runs, [m.weight for m in ms], k)


def pool(runs: list[ChallengeRun | None], weights: list[float], k: int) -> ChallengeRun:
    """One ChallengeRun whose attempts are the top `k` grids of the weighted pool of the members' votes."""
    live = [(run, w) for run, w in zip(runs, weights) if run is not None]
    out = ChallengeRun([], {})
    if not live:
        return out
    cands: dict[tuple[str, int], dict[bytes, list]] = {}
    meta: dict[tuple[str, int], list] = {}
    for m, (run, w) in enumerate(live):
        out.failed_ranks.update(run.failed_ranks)
        for r in run.results:
            key = (r.task_id, r.test_index)
            row = meta.setdefault(key, [0, 0, 0.0, 0.0, 0])  # valid views, views, steps x views, seconds, members
            row[0] += r.valid_views
            row[1] += r.views
            row[2] += r.mean_steps * r.views
            row[3] += r.seconds
            row[4] += 1
            grids = cands.setdefault(key, {})
            for rank, (g, v, c) in enumerate(zip(r.attempts, r.votes, r.confidence)):
                g = np.asarray(g)
                gk = bytes(np.array(g.shape, np.int64)) + g.astype(np.int64).tobytes()
                # [grid, score, votes, confidence x votes, first (member, rank)]
                e = grids.setdefault(gk, [g, 0.0, 0, 0.0, (m, rank)])
                e[1] += w * v / max(r.valid_views, 1)
                e[2] += v
                e[3] += c * v
    for key, grids in cands.items():
        ranked = sorted(grids.values(), key=lambda e: (-e[1], -(e[3] / max(e[2], 1)), e[4]))[:k]
        valid, views, steps, seconds, _ = meta[key]
        out.results.append(TestPrediction(key[0], key[1], [e[0] for e in ranked], [e[2] for e in ranked],
                                          [e[3] / max(e[2], 1) for e in ranked], valid, views,
                                          steps / max(views, 1), seconds))
    predicted = {(r.task_id, r.test_index) for r in out.results if r.attempts}
    for run, _ in live:  # a fallback stands only where no member predicted the input
        for key, why in run.fallbacks.items():
            if key not in predicted:
                out.fallbacks.setdefault(key, why)
    return out
