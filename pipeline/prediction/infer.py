"""Inference over augmented views: build N views of each test input (the training kernels), run the model
(all N_sup steps, as the official evaluation, unless predict.adaptive_halting), invert every view with the
numba kernels and vote (count, then mean halting confidence), keeping the top k grids per test input."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from kernels import view_sizes
from kernels.inverse import decode_view, hash_views
from kernels.vote import vote_topk
from pipeline.nn.act import predict_stream, unwrap
from pipeline.config import PredictConfig, RunConfig
from pipeline.nn.crop import by_size, view_extents
from pipeline.data.encode import encode, last_offset
from pipeline.nn.model import new_task_row
from pipeline.data.packed import PackedTasks
from pipeline.data.puzzle_ids import PuzzleIdScheme, random_perms
from pipeline.runtime import Runtime, autocast_for

log = logging.getLogger(__name__)


@dataclass
class TestPrediction:
    task_id: str
    test_index: int
    attempts: list[np.ndarray] = field(default_factory=list)
    votes: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    valid_views: int = 0
    views: int = 0
    mean_steps: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class PredictTasks:
    """Packed tasks to predict and what the model knows of them: `task_to_ckpt[k]` is the checkpoint's task index of
    packed task k, or -1 for a task the model never saw (it then gets the mean puzzle embedding and random
    augmentations); `ids` is the checkpoint's puzzle-id scheme."""
    packed: PackedTasks
    task_to_ckpt: np.ndarray
    ids: PuzzleIdScheme


@dataclass(frozen=True)
class ViewSpec:
    """How the views of a test input are drawn: how many, on which canvas, from which seed (the run's `seed`),
    translated or not (predict.translate) and at most how far (data.max_offset, the training's range)."""
    n_views: int
    canvas: int
    seed: int = 0
    translate: bool = False
    max_offset: int = 0


@dataclass(frozen=True)
class PredictOptions:
    """What prediction needs besides the model and the tasks: the predict section, the views' canvas, seed
    and translation bound, whether to compile, and where it runs. `PredictOptions.of` takes them from a run's
    config, so that no setting is kept in step by hand."""
    cfg: PredictConfig
    canvas: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    seed: int = 0
    max_offset: int = 0
    compile: bool | str = False

    @classmethod
    def of(cls, run: RunConfig, rt: Runtime, predict: PredictConfig | None = None) -> PredictOptions:
        """The options of run config `run` on runtime `rt`, with `predict` instead of run.predict if given."""
        return cls(predict or run.predict, run.data.canvas, rt.device, rt.dtype, run.seed, run.data.max_offset,
                   run.compute.compile)

    def views(self, n_views: int | None = None) -> ViewSpec:
        return ViewSpec(n_views or self.cfg.augs, self.canvas, self.seed, self.cfg.translate, self.max_offset)


@dataclass
class Views:
    inputs: np.ndarray
    puzzle_ids: np.ndarray
    dihedral: np.ndarray
    perms: np.ndarray
    r0: np.ndarray
    c0: np.ndarray
    seg_starts: np.ndarray
    extents: np.ndarray | None = None
    """[N, 2] canvas rows and columns each view needs, its answer included (pipeline/nn/crop.py)."""


def _axis_bound(d_in: np.ndarray, d_out: np.ndarray, n: int) -> int:
    """Largest output size along one axis for a test input of size n, from the demonstrations' (input, output)
    sizes along that axis: the maximum over the relations that hold for every demonstration (a constant
    output, a constant ratio, a constant difference such as the same size) and over the demonstrations'
    outputs (a relation that two demonstrations happen to share can be wrong), never less than n; 0 when
    no relation holds."""
    guesses = []
    if (d_out == d_out[0]).all():
        guesses.append(int(d_out[0]))
    if (d_out * d_in[0] == d_out[0] * d_in).all():
        guesses.append(-(-int(d_out[0]) * n // int(d_in[0])))
    if (d_out - d_in == d_out[0] - d_in[0]).all():
        guesses.append(n + int(d_out[0] - d_in[0]))
    return max(guesses + [n, int(d_out.max())]) if guesses else 0


def answer_bound(packed: PackedTasks, t: int) -> tuple[int, int]:
    """(rows, cols) the answer to packed test input t can need, in the task's own frame, judged from its
    task's examples only (never its own output); 0 on an axis where no size relation fits every example."""
    k = packed.test_task[t]
    ex = slice(packed.task_ex_start[k], packed.task_ex_start[k] + packed.task_ex_count[k])
    gi, go = packed.ex_in[ex], packed.ex_out[ex]
    keep = gi != packed.test_in[t]
    gi, go = gi[keep], go[keep]
    if len(gi) == 0:
        return 0, 0
    ti = packed.test_in[t]
    return (_axis_bound(packed.heights[gi], packed.heights[go], int(packed.heights[ti])),
            _axis_bound(packed.widths[gi], packed.widths[go], int(packed.widths[ti])))


def _view_offsets(bound: tuple[int, int], dihedral: np.ndarray, draws: np.ndarray, canvas: int,
                  max_offset: int = 0) -> np.ndarray:
    """Offsets [2, n] from uniform draws [2, n]: along each axis, anywhere that leaves room for the bounded
    answer (transformed by the view's dihedral) plus its EOS border, and at most max_offset (0 = no limit);
    0 where the bound is unknown (0)."""
    out = np.empty_like(draws, dtype=np.int64)
    for axis, size in enumerate(view_sizes(*bound, dihedral)):
        room = np.where(size > 0, last_offset(size + 1, canvas, max_offset), 0)  # the answer and its border inside
        out[axis] = (draws[axis] * (room + 1)).astype(np.int64)
    return out


def make_views(tasks: PredictTasks, test_rows: np.ndarray, spec: ViewSpec) -> Views:
    """Views of packed test inputs `test_rows` (a task the model never saw gets random augmentations).
    Translated views leave room for the answer and move at most spec.max_offset."""
    packed, task_to_ckpt, ids = tasks.packed, tasks.task_to_ckpt, tasks.ids
    canvas, translate, seed, max_offset = spec.canvas, spec.translate, spec.seed, spec.max_offset
    d_all, p_all, id_all, in_all, off_all, counts, bounds = [], [], [], [], [], [], []
    requested = spec.n_views
    for t in test_rows:
        # Every view depends on (seed, test input) only, so sharding and chunking never change results.
        k = packed.test_task[t]
        rng = np.random.default_rng([seed, int(t)])
        n_views = requested
        if task_to_ckpt[k] >= 0 and not translate and hasattr(ids, "counts"):
            # Untranslated, a fixed augmentation table has only so many distinct views: each votes once (as
            # the official evaluation), instead of wrapping around and voting twice.
            n_views = min(requested, int(ids.counts[task_to_ckpt[k]]))
        counts.append(n_views)
        if task_to_ckpt[k] >= 0:
            pid, d, perms = ids.views(int(task_to_ckpt[k]), n_views, rng)
        else:
            d = np.concatenate([[0], rng.integers(0, 8, n_views - 1)]).astype(np.int64)
            perms = random_perms(rng, n_views)
            perms[0] = np.arange(10)
            pid = np.full(n_views, -1, dtype=np.int64)
        draws = rng.random((2, n_views)) if translate else np.zeros((2, n_views))
        draws[:, 0] = 0.0  # view 0: untranslated
        bound = answer_bound(packed, t)
        off_all.append(_view_offsets(bound, d, draws, canvas, max_offset))
        bounds.append(np.tile(np.asarray(bound, np.int64), (n_views, 1)))
        d_all.append(d), p_all.append(perms), id_all.append(pid)
        in_all.append(np.full(n_views, packed.test_in[t], dtype=np.int64))
    n = int(sum(counts))
    d, perms, ins = np.concatenate(d_all), np.concatenate(p_all), np.concatenate(in_all)
    off = np.concatenate(off_all, axis=1)
    # The encoder draws offset floor(draws * (canvas - size + 1)) from the input's own size; hand it the draws that
    # lands on our offset (the middle of its interval, so rounding cannot move it).
    sizes = np.stack(view_sizes(packed.heights[ins], packed.widths[ins], d))
    draws = (off + 0.5) / (canvas - sizes + 1)
    enc = encode(packed, ins, np.full(n, -1), d, perms, draws[0], draws[1], canvas)
    assert (enc["r0"] == off[0]).all() and (enc["c0"] == off[1]).all()
    extents = view_extents(packed.heights[ins], packed.widths[ins], np.concatenate(bounds), d, enc["r0"], enc["c0"],
                           canvas)
    return Views(enc["inputs"], np.concatenate(id_all), d, perms, enc["r0"], enc["c0"],
                 np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), extents)


def puzzle_table_lookup(table: torch.Tensor):
    """ids -> puzzle vectors; id -1 (unknown task) gets the row a new task starts from (model.new_task_row,
    TRM's re-init rule)."""
    if table.shape[1] == 0:
        return lambda ids: None
    mean = new_task_row(table)

    def lookup(ids: torch.Tensor) -> torch.Tensor:
        return torch.where((ids < 0)[:, None], mean, table[ids.clamp_min(0)])

    return lookup


CPU_BATCH_TOKENS = 16384
"""Tokens per model batch of prediction on CPU. Activations grow with the batch (~35 KB per token at hidden
512: predict.batch_size=768 views of 916 tokens took >20 GB) while CPU throughput does not, so on CPU a
batch holds at most this many tokens (17 views at ARC size); GPUs keep predict.batch_size."""


def model_batch(cfg: PredictConfig, device: torch.device, total_len: int) -> int:
    """Views per model batch: predict.batch_size, bounded to CPU_BATCH_TOKENS tokens on CPU."""
    if device.type == "cpu":
        return min(cfg.batch_size, max(1, CPU_BATCH_TOKENS // total_len))
    return cfg.batch_size


def run_views(model, views: Views, opts: PredictOptions, lookup=None):
    """Predictions, halting confidence and steps of every view, in the views' order. Under compute.crop the
    views run largest rectangle first, so that the slots of a batch hold views of similar size (each view
    computes on its own rectangle: the order changes the speed, not the answers)."""
    trm, cfg, device = unwrap(model), opts.cfg, opts.device
    lookup = lookup or puzzle_table_lookup(trm.puzzle_emb)
    order = np.arange(len(views.inputs))
    extents = None
    if trm.compute.crop and views.extents is not None:
        order = by_size(views.extents)[::-1]
        extents = views.extents[order]
    inputs = torch.from_numpy(views.inputs[order]).to(device)
    vecs = lookup(torch.from_numpy(views.puzzle_ids[order]).to(device))
    with autocast_for(device, opts.dtype):
        preds, conf, steps = predict_stream(model, inputs, vecs, model_batch(cfg, device, trm.cfg.total_len),
                                            cfg.max_steps or None, cfg.adaptive_halting, extents=extents,
                                            dtype=opts.dtype)
    back = np.argsort(order)
    return preds.cpu().numpy()[back], conf.double().cpu().numpy()[back], steps.cpu().numpy()[back]


def vote(views: Views, preds: np.ndarray, conf: np.ndarray, canvas: int, k: int):
    """Per test input: list of (grid, votes, mean confidence), best first, and the number of valid views."""
    N = len(preds)
    hashes = np.empty(N, dtype=np.uint64)
    hs, ws = np.empty(N, dtype=np.int64), np.empty(N, dtype=np.int64)
    hash_views(preds, views.r0, views.c0, views.dihedral, views.perms, canvas, hashes, hs, ws)
    valid = hs > 0
    G = len(views.seg_starts) - 1
    rows, counts, cf = np.empty((G, k), np.int64), np.empty((G, k), np.int64), np.empty((G, k), np.float64)
    vote_topk(views.seg_starts, hashes, valid, conf, k, rows, counts, cf)
    out = []
    for g in range(G):
        ranked = [(decode_view(preds[r], views.r0[r], views.c0[r], views.dihedral[r], views.perms[r], canvas),
                   int(counts[g, j]), float(cf[g, j])) for j, r in enumerate(rows[g]) if r >= 0]
        n_valid = int(valid[views.seg_starts[g]:views.seg_starts[g + 1]].sum())
        out.append((ranked, n_valid))
    return out


def predict_tests(model, tasks: PredictTasks, test_rows: np.ndarray, opts: PredictOptions,
                  progress=None) -> list[TestPrediction]:
    """Predict top-k grids for packed test inputs, chunked so that at most predict.chunk_views views are in
    memory. `progress(n_inputs, n_views)` is called after each chunk."""
    cfg, packed = opts.cfg, tasks.packed
    per_chunk = max(1, cfg.chunk_views // cfg.augs)
    lookup = puzzle_table_lookup(unwrap(model).puzzle_emb)
    results = []
    for s in range(0, len(test_rows), per_chunk):
        rows = test_rows[s:s + per_chunk]
        t0 = time.perf_counter()
        views = make_views(tasks, rows, opts.views())
        preds, conf, steps = run_views(model, views, opts, lookup)
        voted = vote(views, preds, conf, opts.canvas, cfg.top_k)
        dt = (time.perf_counter() - t0) / len(rows)
        for j, t in enumerate(rows):
            ranked, n_valid = voted[j]
            seg = slice(views.seg_starts[j], views.seg_starts[j + 1])
            results.append(TestPrediction(packed.task_ids[packed.test_task[t]], int(packed.test_index[t]),
                                          [g for g, _, _ in ranked],
                                          [c for _, c, _ in ranked], [f for _, _, f in ranked], n_valid,
                                          int(seg.stop - seg.start),
                                          float(steps[seg].mean()), dt))
        if progress is not None:
            progress(len(rows), int(views.seg_starts[-1]))
    return results


def evaluate_heldout(model, packed: PackedTasks, ids: PuzzleIdScheme, opts: PredictOptions, max_inputs: int = 0,
                     rows: np.ndarray | None = None, show_progress: bool = False) -> dict:
    """pass@1 / pass@k (k = predict.top_k) and token accuracy (the share of each truth's cells the first attempt
    gets right, 0 for a wrong shape) on held-out test inputs (known outputs never trained on), with the tasks'
    own puzzle ids: `rows` of the test table, else the first `max_inputs` (0 = all). Empty dict when there are
    none. Views stream through the model in batches of predict.batch_size (CPU: at most CPU_BATCH_TOKENS
    tokens), so memory does not grow with the inputs. `show_progress`: a bar of inputs done with its time
    estimate."""
    if rows is None:
        rows = np.flatnonzero((packed.test_out >= 0) & ~packed.test_trainable)
        if max_inputs:
            rows = rows[:max_inputs]
    if len(rows) == 0:
        return {}
    cfg = opts.cfg
    log.info("held-out evaluation: %d test inputs x %d views (data.eval_inputs=-1 turns it off)", len(rows), cfg.augs)
    bar = None
    if show_progress:
        bar = tqdm(total=len(rows), desc="eval", unit="input", dynamic_ncols=True, mininterval=1.0)
    was_training = model.training
    model.eval()
    preds = predict_tests(model, PredictTasks(packed, np.arange(packed.num_tasks), ids), rows, opts,
                          (lambda n_inputs, n_views: bar.update(n_inputs)) if bar is not None else None)
    model.train(was_training)
    if bar is not None:
        bar.close()
    hits1 = hitsk = 0
    cells = 0.0  # the truth's cells the first attempt gets right (none when its shape is wrong)
    for t, p in zip(rows, preds):
        truth = packed.grid(packed.test_out[t])
        ok = [a.shape == truth.shape and bool((a == truth).all()) for a in p.attempts]
        hits1 += bool(ok[:1] and ok[0])
        hitsk += any(ok)
        if p.attempts and p.attempts[0].shape == truth.shape:
            cells += float((p.attempts[0] == truth).mean())
    n = len(rows)
    return {"pass@1": hits1 / n, f"pass@{cfg.top_k}": hitsk / n, "token_accuracy": cells / n, "inputs": n,
            "mean_steps": float(np.mean([p.mean_steps for p in preds]))}
