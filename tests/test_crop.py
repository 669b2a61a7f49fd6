"""Task-sized sequences (compute.crop): a cropped step is the full-canvas step with the padding outside the
rectangle masked out of attention (positions kept), the rectangle covers what a batch uses, bucketing and
bounded translation in the sampler, and prediction under crop decodes and votes as without it.
pytest tests/test_crop.py"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline.nn.model as model_mod
from pipeline.nn.act import IGNORE, empty_carry, supervision_step, token_ce
from pipeline.config import ComputeConfig, DataConfig, ModelConfig, PredictConfig
from pipeline.nn.crop import Crop, by_size, own_rectangles, rect_crop, size_groups, step_crop, used_extents, view_extents
from pipeline.data.encode import encode, last_offset
from pipeline.prediction.infer import PredictOptions, PredictTasks, ViewSpec, make_views, predict_tests
from pipeline.nn.model import TRM
from pipeline.data.packed import pack_tasks, task_sides
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.sampler import IndependentSampler, make_sampler
from pipeline.data.synthetic import synthetic_tasks
from pipeline.data.tasks import Task
from pipeline.training.train import to_torch

CANVAS = 8


def _model(pos="rope", crop=False, crop_groups=1, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, layers=2, h_cycles=2, l_cycles=2, halt_max_steps=3, seq_len=CANVAS ** 2,
                      puzzle_emb_len=2, puzzle_emb_ndim=48, pos_encodings=pos, **kw)
    m = TRM(cfg, 3, ComputeConfig(crop=crop, crop_groups=crop_groups))
    with torch.no_grad():
        m.puzzle_emb.normal_()
        m.q_head.weight.normal_(0, 0.1)
    return m


def _masked_full_step(m, inputs, vecs, y, z, keep, monkeypatch):
    """The uncropped step with every key outside `keep` masked out of attention (queries there still run)."""
    allowed = torch.zeros(m.cfg.total_len, dtype=torch.bool)
    allowed[keep] = True
    real = F.scaled_dot_product_attention

    def masked(q, k, v, **kw):
        return real(q, k, v, attn_mask=allowed.expand(q.shape[-2], -1))

    monkeypatch.setattr(model_mod.F, "scaled_dot_product_attention", masked)
    out = m(inputs, vecs, y, z)
    monkeypatch.setattr(model_mod.F, "scaled_dot_product_attention", real)
    return out


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_a_cropped_step_is_the_full_step_with_the_padding_masked_out(pos, monkeypatch):
    m = _model(pos)
    B, rows, cols = 3, 5, 4
    inputs = torch.randint(2, 12, (B, CANVAS ** 2), dtype=torch.int32)
    vecs = m.puzzle_emb[[1, 2, 1]]
    y, z = m.initial_state(B, torch.float32)
    y, z = y + 0.1 * torch.randn_like(y), z + 0.1 * torch.randn_like(z)  # a carried state, not the initial one
    keep = m.keep_index(rows, cols)
    assert keep[:2].tolist() == [0, 1] and keep[2:7].tolist() == [2, 3, 4, 5, 2 + CANVAS]  # full-canvas numbering
    yc, zc, lc, qc, _ = m(inputs, vecs, y, z, Crop(keep))
    yf, zf, lf, qf, _ = _masked_full_step(m, inputs, vecs, y, z, keep, monkeypatch)
    cells = keep[2:] - 2
    torch.testing.assert_close(yc[:, keep], yf[:, keep], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(zc[:, keep], zf[:, keep], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lc[:, cells], lf[:, cells], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(qc, qf, rtol=1e-4, atol=1e-3)
    outside = torch.ones(m.cfg.total_len, dtype=torch.bool)
    outside[keep] = False
    assert torch.equal(yc[:, outside], y[:, outside]) and torch.equal(zc[:, outside], z[:, outside])
    out_cells = outside[2:]
    assert (lc[:, out_cells] == 0).all() and (lc[:, out_cells].argmax(-1) == 0).all()  # PAD outside
    # Without masking, the padding changes the answer: the crop is an approximation, not a reshuffle.
    assert not torch.allclose(m(inputs, vecs, y, z)[0][:, keep], yc[:, keep], atol=1e-3)


def test_crop_is_rejected_where_it_cannot_work():
    with pytest.raises(ValueError, match="mlp_t"):
        ComputeConfig(crop=True).check(ModelConfig(seq_len=25, mlp_t=True))
    with pytest.raises(ValueError, match="square"):
        ComputeConfig(crop=True).check(ModelConfig(seq_len=24))


def _encoded(grids_in, grids_out, offsets, canvas=CANVAS):
    tasks = [Task(f"t{i}", [(a, b)], []) for i, (a, b) in enumerate(zip(grids_in, grids_out))]
    packed = pack_tasks(tasks)
    n = len(tasks)
    r0, c0 = np.array(offsets).T
    # u in the middle of the offset's interval: floor(u * (canvas - size + 1)) = offset
    hs = np.maximum(packed.heights[packed.ex_in], packed.heights[packed.ex_out])
    ws = np.maximum(packed.widths[packed.ex_in], packed.widths[packed.ex_out])
    enc = encode(packed, packed.ex_in, packed.ex_out, np.zeros(n, np.int64), np.tile(np.arange(10, dtype=np.uint8), (n, 1)),
                 (r0 + 0.5) / (canvas - hs + 1), (c0 + 0.5) / (canvas - ws + 1), canvas)
    assert (enc["r0"] == r0).all() and (enc["c0"] == c0).all()
    enc["puzzle_ids"] = np.ones(n, np.int64)
    return to_torch(enc, torch.device("cpu"))


def test_the_training_rectangle_covers_grids_borders_and_offsets():
    one = np.ones
    b = _encoded([one((2, 3), np.uint8), one((1, 1), np.uint8)], [one((4, 1), np.uint8), one((2, 2), np.uint8)],
                 [(0, 0), (1, 3)])
    # pair 0: rows 0..3 + border row 4 -> 5; cols 0..2 + border col 3 -> 4. pair 1: rows 1..2 + border -> 4,
    # cols 3..4 + border -> 6.
    assert used_extents(b["inputs"], b["labels"], CANVAS, IGNORE).tolist() == [[5, 4], [4, 6]]
    full = _encoded([one((7, 8), np.uint8)], [one((8, 8), np.uint8)], [(0, 0)])
    assert used_extents(full["inputs"], full["labels"], CANVAS, IGNORE).tolist() == [[CANVAS, CANVAS]]  # no border


def test_a_training_step_under_crop_runs_the_used_rectangle_only(monkeypatch):
    m = _model(crop=True)
    b = _encoded([np.ones((2, 2), np.uint8)] * 2, [np.ones((3, 2), np.uint8)] * 2, [(0, 0), (1, 0)])
    seen = []
    real = TRM.forward

    def spy(self, inputs, vecs, y, z, crop=None):
        seen.append(crop)
        return real(self, inputs, vecs, y, z, crop)

    monkeypatch.setattr(TRM, "forward", spy)
    carry, loss, metrics, preds = supervision_step(m, empty_carry(m, b, torch.float32), b,
                                                   lambda ids: m.puzzle_emb[ids])
    assert [len(k.keep) for k in seen] == [2 + 5 * 3] and torch.equal(seen[0].keep, m.keep_index(5, 3))
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert (preds.view(2, CANVAS, CANVAS)[:, 5:, :] == 0).all() and (preds.view(2, CANVAS, CANVAS)[:, :, 3:] == 0).all()


def test_bounded_translation_and_size_buckets_in_the_sampler():
    tasks = [Task(f"s{s}", [(np.ones((s, s), np.uint8), np.ones((s, s), np.uint8))] * 2, []) for s in (1, 2, 3, 5, 6, 7, 9, 10)]
    packed = pack_tasks(tasks)
    assert task_sides(packed).tolist() == [1, 2, 3, 5, 6, 7, 9, 10]
    cfg = DataConfig(canvas=12, max_offset=2, bucket_steps=5, size_buckets=4, sampler="independent")
    s = IndependentSampler(packed, PerTaskIds(len(tasks)), cfg, 16, seed=0)
    assert [b.tolist() for b in s.buckets] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    drawn = np.zeros(len(tasks))
    for step in range(400):
        b = s.batch_at(step)
        assert (b["r0"] <= 2).all() and (b["c0"] <= 2).all()
        t = b["puzzle_ids"] - 1
        assert set(t.tolist()) <= set(s.bucket_at(step).tolist())  # one bucket per step
        assert s.bucket_at(step) is s.bucket_at(5 * (step // 5))  # ... and per run of bucket_steps
        np.add.at(drawn, t, 1)
    assert drawn.min() > 0.5 * drawn.mean()  # every size still trained on
    free = make_sampler(packed, PerTaskIds(len(tasks)), DataConfig(canvas=12), 16, seed=0)
    assert max(free.batch_at(k)["r0"].max() for k in range(50)) > 2  # the official translation: anywhere


def test_training_translation_reaches_the_canvas_edge_and_a_view_keeps_its_answer_border():
    """The one bounded-offset rule (pipeline.data.encode.last_offset): a training pair may sit flush with the canvas
    edge, its EOS border falling off (the official builder: randint(0, 30 - size + 1)), with data.max_offset or
    without; a prediction view keeps its answer's border inside (extent = answer + 1)."""
    packed = pack_tasks([Task("g3", [(np.ones((3, 3), np.uint8), np.ones((3, 3), np.uint8))] * 2, [])])
    for max_offset in (0, 50):  # 50 bounds the offset by more than the canvas leaves
        s = make_sampler(packed, PerTaskIds(1), DataConfig(canvas=5, max_offset=max_offset), 64, seed=0)
        r0 = np.concatenate([s.batch_at(k)["r0"] for k in range(20)])
        assert (r0.min(), r0.max()) == (0, 5 - 3), max_offset
    assert last_offset(3, 5) == 2 and last_offset(3 + 1, 5) == 1  # a 3x3 answer's border stays inside
    assert last_offset(3, 30, max_offset=1) == 1 and last_offset(6, 5) == 0


def _up3(g):
    return np.kron(g, np.ones((3, 3), dtype=np.uint8))


class _Oracle(TRM):
    """A TRM that predicts each view's true answer canvas (looked up by its input tokens) and, like the real
    model, nothing but PAD outside the rectangle it is asked to run; records the rectangles."""

    def __init__(self, answers: dict, canvas: int, crop: bool):
        super().__init__(ModelConfig(hidden=8, heads=1, layers=1, seq_len=canvas * canvas, puzzle_emb_len=0,
                                     puzzle_emb_ndim=0, halt_max_steps=1), 1, ComputeConfig(crop=crop))
        self.answers, self.crops = answers, []

    def forward(self, inputs, puzzle_vecs, y, z, crop=None):
        self.crops.append(None if crop is None else len(crop.keep))  # positions run (no prefix here)
        target = torch.stack([self.answers[bytes(r.to(torch.uint8).numpy())] for r in inputs]).long()
        if crop is not None:
            inside = torch.zeros(len(inputs), self.cfg.seq_len, dtype=torch.bool)
            inside[:, crop.keep] = True if crop.own is None else crop.own  # each view's own rectangle
            target = torch.where(inside, target, 0)
        logits = F.one_hot(target, self.cfg.vocab_size).float()
        q = torch.ones(len(inputs))
        return y, z, logits, q, -q


def test_prediction_under_crop_decodes_a_3x_answer_like_the_full_canvas():
    """The 3x-upscale case of the decode issue: every translated view's rectangle holds the bounded answer,
    so cropped prediction gives the same votes and attempts as the full canvas, on smaller rectangles."""
    canvas = 16
    rng = np.random.default_rng(1)
    demos = [rng.integers(0, 10, s).astype(np.uint8) for s in [(1, 2), (2, 1), (2, 2)]]
    x = rng.integers(1, 10, (3, 2)).astype(np.uint8)
    task = Task("up3", [(g, _up3(g)) for g in demos], [x], [_up3(x)], train_on_test=False)
    packed = pack_tasks([task])
    cfg = PredictConfig(augs=24, batch_size=5, translate=True, top_k=2)
    tests = PredictTasks(packed, np.zeros(1, np.int64), PerTaskIds(1))
    views = make_views(tests, np.arange(1), ViewSpec(cfg.augs, canvas, 0, True))
    # each view's true answer canvas, encoded as the training labels would be
    n = len(views.inputs)
    swap = np.isin(views.dihedral, [1, 3, 6, 7])
    rows, cols = np.where(swap, 6, 9), np.where(swap, 9, 6)  # the 9x6 answer, as the view places it
    lab = encode(packed, np.full(n, packed.test_in[0]), np.full(n, packed.test_out[0]), views.dihedral, views.perms,
                 (views.r0 + 0.5) / (canvas - rows + 1), (views.c0 + 0.5) / (canvas - cols + 1), canvas)
    assert (lab["r0"] == views.r0).all() and (lab["c0"] == views.c0).all()
    answers = {bytes(i): torch.from_numpy(a) for i, a in zip(views.inputs, lab["labels"])}
    results = {}
    for crop in (False, True):
        oracle = _Oracle(answers, canvas, crop).eval()
        [p] = predict_tests(oracle, tests, np.arange(1), PredictOptions(cfg, canvas, torch.device("cpu")))
        results[crop] = (p, oracle.crops)
    (full, full_crops), (cropped, crops) = results[False], results[True]
    assert all(c is None for c in full_crops) and any(c is not None for c in crops)
    assert np.array_equal(cropped.attempts[0], _up3(x)) and cropped.votes == full.votes
    assert all(np.array_equal(a, b) for a, b in zip(cropped.attempts, full.attempts))
    assert cropped.valid_views == full.valid_views == cfg.augs
    assert min(c for c in crops if c) < canvas * canvas  # some rectangles are smaller than the canvas
    # every view's rectangle holds its answer and border: the view's own extent is inside it
    assert (views.extents[:, 0] >= views.r0 + rows + 1).all() and (views.extents[:, 1] >= views.c0 + cols + 1).all()


def test_view_extents_cover_input_answer_and_border_or_the_whole_axis():
    ext = view_extents(np.array([3, 3]), np.array([2, 2]), np.array([[9, 6], [0, 6]]), np.array([0, 1]),
                       np.array([2, 0]), np.array([1, 4]), 30)
    assert ext.tolist() == [[12, 8], [7, 30]]  # rot90 swaps axes: answer 6x9 -> rows 6+1; unknown width -> 30


class _RandomHalts(TRM):
    """Records which views (their number is input token 0) each step runs and on which positions; halts at
    random, so slots are refilled at different steps."""

    def __init__(self):
        super().__init__(ModelConfig(hidden=8, heads=1, layers=1, seq_len=CANVAS * CANVAS, puzzle_emb_len=0,
                                     puzzle_emb_ndim=0, halt_max_steps=6), 1, ComputeConfig(crop=True))
        self.log, self.rng = [], np.random.default_rng(0)

    def forward(self, inputs, vecs, y, z, crop=None):
        self.log.append((inputs[:, 0].long().numpy().copy(), crop.keep.numpy().copy()))
        q = torch.from_numpy(self.rng.normal(size=len(inputs))).float()
        return y, z, torch.zeros(len(inputs), CANVAS * CANVAS, 12), q, -q


def test_streaming_prediction_crops_every_step_to_cover_its_live_views():
    """predict_stream keeps a host copy of which view each slot runs (refills happen at different steps);
    every step's rectangle must cover the extent of every view still running in it."""
    from pipeline.nn.act import predict_stream

    for trial in range(10):
        rng = np.random.default_rng(trial)
        N, B = int(rng.integers(5, 40)), int(rng.integers(1, 9))
        ext = np.stack([rng.integers(1, CANVAS + 1, N), rng.integers(1, CANVAS + 1, N)], 1)
        ext = ext[by_size(ext)[::-1]]  # as run_views streams them
        inputs = torch.zeros(N, CANVAS * CANVAS, dtype=torch.int32)
        inputs[:, 0] = torch.arange(N)
        m = _RandomHalts().eval()
        _, _, steps = predict_stream(m, inputs, None, B, None, True, extents=ext)
        seen = np.zeros(N, np.int64)
        for views, keep in m.log:
            rows, cols = keep.max() // CANVAS + 1, keep % CANVAS
            assert len(keep) == rows * (cols.max() + 1)
            for v in views:
                seen[v] += 1
                if seen[v] <= steps[v]:  # the view is live in this step
                    assert ext[v, 0] <= rows and ext[v, 1] <= cols.max() + 1, (trial, v)
        assert (seen >= steps.numpy()).all() and (steps.numpy() >= 1).all()


def test_a_run_resumes_with_crop_switched_on(tmp_path):
    """compute.crop changes the compute, not the weights or the (full-size) carry: a run folder trained without
    it continues under the presets' crop settings (they must not strand a run); another model or optimiser
    is refused with a clear error."""
    from pipeline.training.build import build_run
    from pipeline.checkpoint import CheckpointError
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime
    from conftest import ROOT

    def fit(steps, *extra):
        cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path}", f"train.steps={steps}",
                          "train.ckpt_every=2", "train.eval_every=0", "train.progress=false", *extra])
        return build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None).trainer.fit()

    fit(2)
    assert fit(4, "compute.crop=true", "compute.crop_groups=8", "data.max_offset=1")["step"] == 4  # as the presets
    with pytest.raises(CheckpointError, match="another model"):
        fit(6, "model.l_cycles=3")
    with pytest.raises(CheckpointError, match="train.optimizer"):  # its state would not load: say so
        fit(6, "train.optimizer=muon")


def test_the_submit_calibration_times_every_size_bucket_under_crop(tmp_path, monkeypatch):
    """Under crop a TTT step costs what its size bucket costs, so the planner's step time is the mean over
    buckets, each timed with every slot from it."""
    from pipeline.submit.calibration import calibrate_ttt
    from pipeline.training.ttt import ttt_dataset
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime
    from conftest import ROOT

    tasks = [Task(f"s{s}", [(np.ones((s, s), np.uint8), np.ones((s, s), np.uint8))] * 3, [np.ones((s, s), np.uint8)])
             for s in (1, 2, 5, 6)]
    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", ["data.canvas=8", "model.seq_len=64", "compute.crop=true",
                      "data.max_offset=1", "data.bucket_steps=50", "data.size_buckets=2", "data.sampler=independent",
                      "train.global_batch=8",
                      "train.progress=false"])
    crops, pins = [], []
    real = TRM.forward

    def spy(self, inputs, vecs, y, z, crop=None):
        crops.append(crop)
        return real(self, inputs, vecs, y, z, crop)

    monkeypatch.setattr(TRM, "forward", spy)
    real_batch = IndependentSampler.batch_at
    monkeypatch.setattr(IndependentSampler, "batch_at", lambda self, step, bucket=None: (pins.append(bucket), real_batch(self, step, bucket))[1])
    startup, step_s, save_s = calibrate_ttt(cfg, init_runtime("cpu", "float32", 0), lambda: ttt_dataset(cfg, tasks, None),
                                            tmp_path / "cal", steps=2)
    assert step_s > 0 and startup >= 0 and save_s > 0
    assert {0, 1} <= set(pins)
    areas = [64 if k is None else len(k.keep) - 1 for k in crops]
    assert min(areas) <= 4 * 4 and max(areas) >= 7 * 7  # the small bucket's rectangles and the large one's


def test_the_submit_calibration_times_the_official_samplers_batches_under_crop(tmp_path):
    """Without size buckets (the official sampler: a checkpoint's default) the calibration times the batches as
    they come; it once called the bucketed path and crashed (a TypeError that no TTT error handler catches)."""
    from pipeline.submit.calibration import calibrate_ttt
    from pipeline.training.ttt import ttt_dataset
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime
    from conftest import ROOT

    tasks = [Task(f"s{s}", [(np.ones((s, s), np.uint8), np.ones((s, s), np.uint8))] * 3, [np.ones((s, s), np.uint8)])
             for s in (1, 2, 5, 6)]
    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", ["data.canvas=8", "compute.crop=true", "data.max_offset=1",
                      "data.sampler=official", "train.global_batch=8", "train.progress=false"])
    startup, step_s, save_s = calibrate_ttt(cfg, init_runtime("cpu", "float32", 0), lambda: ttt_dataset(cfg, tasks, None),
                                            tmp_path / "cal", steps=2)
    assert step_s > 0 and startup >= 0 and save_s > 0


def test_size_groups_run_each_group_on_its_own_rectangle():
    ext = np.array([[8, 8], [2, 3], [7, 6], [3, 2], [2, 2]])
    groups = size_groups(ext, 2, "cpu")
    assert [(g.tolist(), rect) for g, rect in groups] == [([1, 3, 4], (3, 3)), ([0, 2], (8, 8))]
    assert size_groups(ext, 1, "cpu") == (8, 8)
    m = _model()
    B = 5
    inputs = torch.randint(2, 12, (B, CANVAS ** 2), dtype=torch.int32)
    vecs = m.puzzle_emb[[1, 2, 1, 2, 1]]
    y, z = m.initial_state(B, torch.float32)
    k33, k54 = m.keep_index(3, 3), m.keep_index(5, 4)
    grouped = m(inputs, vecs, y, z, [(torch.tensor([1, 3, 4]), Crop(k33)), (torch.tensor([0, 2]), Crop(k54))])
    small = m(inputs[[1, 3, 4]], vecs[[1, 3, 4]], y[[1, 3, 4]], z[[1, 3, 4]], Crop(k33))
    large = m(inputs[[0, 2]], vecs[[0, 2]], y[[0, 2]], z[[0, 2]], Crop(k54))
    for i in range(5):  # every output back in slot order, each slot as its own group computed it
        torch.testing.assert_close(grouped[i][[1, 3, 4]], small[i])
        torch.testing.assert_close(grouped[i][[0, 2]], large[i])


def test_a_training_step_in_size_groups(monkeypatch):
    m = _model(crop=True, crop_groups=2)
    b = _encoded([np.ones((1, 1), np.uint8), np.ones((5, 5), np.uint8), np.ones((1, 2), np.uint8)],
                 [np.ones((1, 1), np.uint8), np.ones((6, 6), np.uint8), np.ones((1, 2), np.uint8)], [(0, 0)] * 3)
    seen = []
    real = TRM._step

    def spy(self, inputs, vecs, y, z, keep, own=None):
        seen.append((len(inputs), len(keep) - 2))
        return real(self, inputs, vecs, y, z, keep, own)

    monkeypatch.setattr(TRM, "_step", spy)
    carry, loss, metrics, preds = supervision_step(m, empty_carry(m, b, torch.float32), b,
                                                   lambda ids: m.puzzle_emb[ids])
    assert sorted(seen) == [(1, 7 * 7), (2, 2 * 3)]
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_a_compiled_step_under_crop_compiles_a_few_graphs_for_every_size_and_group_pattern(monkeypatch):
    """runtime.compile_model compiles the model's per-group step for dynamic shapes: rectangles of every size,
    in 1 to 4 size groups, run on a handful of graphs, far below the recompile limit (8) after which torch
    falls back to eager (a compiled forward over the group list recompiled per pattern and hit it)."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    import pipeline.runtime as runtime

    torch._dynamo.reset()
    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(runtime.torch, "compile", lambda fn, **kw: real(fn, backend=counter, **kw))
    m = _model(crop=True)
    wrapped = runtime.compile_model(m, m)
    assert wrapped is m  # under crop the step inside is compiled, not the module
    B = 16
    inputs = torch.randint(2, 12, (B, CANVAS ** 2), dtype=torch.int32)
    vecs = m.puzzle_emb[torch.ones(B, dtype=torch.long)]
    y, z = m.initial_state(B, torch.float32)
    rng = np.random.default_rng(0)
    for step in range(24):
        ext = np.stack([rng.integers(1, CANVAS + 1, B), rng.integers(1, CANVAS + 1, B)], 1)
        wrapped(inputs, vecs, y, z, step_crop(ext, 1 + step % 4, m))
    assert 1 <= counter.frame_count <= 4, counter.frame_count
    torch._dynamo.reset()


def test_the_prediction_calibration_scales_the_timed_inputs_to_all_inputs_under_crop():
    """The timed inputs (the first few) can be far smaller or larger than the rest: under crop the per-view
    time is scaled by the FLOPs of all inputs' view rectangles over the timed ones'."""
    from pipeline.submit.calibration import _crop_cost_ratio

    small = [Task(f"s{k}", [(np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8))], [np.ones((2, 2), np.uint8)])
             for k in range(2)]
    large = [Task(f"l{k}", [(np.ones((7, 7), np.uint8), np.ones((7, 7), np.uint8))], [np.ones((7, 7), np.uint8)])
             for k in range(2)]
    packed = pack_tasks(small + large)
    m = _model(crop=True)
    tests, spec = PredictTasks(packed, np.full(4, -1), PerTaskIds(4)), ViewSpec(8, CANVAS)
    up = _crop_cost_ratio(m, tests, np.arange(2), spec)  # timed the small ones: the rest cost more
    down = _crop_cost_ratio(m, tests, np.arange(2, 4), spec)
    assert up > 1.5 and down < 0.8
    f = lambda tokens: m.flops_per_step(1, tokens, train=False)  # noqa: E731  a view costs its forward
    assert up == pytest.approx((f(9) + f(64)) / 2 / f(9))


# -- a view's answer is a function of the view (issue 18) ------------------------------------------------------
def _own(rows, cols, rect, prefix=2):
    return own_rectangles(np.array([[rows, cols]]), rect, prefix, "cpu")


def test_an_example_computes_the_same_alone_beside_a_larger_one_and_in_another_order():
    """Under crop each example attends only to its own rectangle (+ the prefix): its logits, halting logit and
    carried state are what it computes alone, next to a larger example (whose rectangle the batch runs) and in
    either order; outside its own rectangle its state is untouched and its logits are the 0 fill."""
    m = _model(crop=True)
    torch.manual_seed(1)
    inputs = torch.randint(2, 12, (2, CANVAS ** 2), dtype=torch.int32)
    vecs = m.puzzle_emb[[1, 2]]
    y, z = m.initial_state(2, torch.float32)
    y, z = y + 0.1 * torch.randn_like(y), z + 0.1 * torch.randn_like(z)  # a carried state
    small, large = (3, 2), (6, 7)
    alone = m(inputs[:1], vecs[:1], y[:1], z[:1], Crop(m.keep_index(*small)))
    ext = np.array([small, large])
    beside = m(inputs, vecs, y, z, rect_crop(ext, m))
    swapped = m(inputs[[1, 0]], vecs[[1, 0]], y[[1, 0]], z[[1, 0]], rect_crop(ext[[1, 0]], m))
    for i in range(5):
        torch.testing.assert_close(beside[i][:1], alone[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(swapped[i][1:], alone[i], rtol=1e-5, atol=1e-5)
    inside = torch.zeros(m.cfg.total_len, dtype=torch.bool)
    inside[m.keep_index(*small)] = True
    assert torch.equal(beside[0][0, ~inside], y[0, ~inside]) and torch.equal(beside[1][0, ~inside], z[0, ~inside])
    assert (beside[2][0, ~inside[2:]] == 0).all()
    # the unmasked covering rectangle (before issue 18) gives the small example another answer
    unmasked = m(inputs, vecs, y, z, Crop(m.keep_index(*large)))
    assert not torch.allclose(unmasked[2][:1], alone[2], atol=1e-3)
    assert _own(*large, large) is None and _own(*small, large).sum() == 2 + 3 * 2


def test_a_training_slot_computes_the_same_beside_larger_slots_and_in_any_size_group():
    """The ACT step under crop: a slot's logits, loss and halting logit do not depend on the other slots of the
    batch or on compute.crop_groups."""
    b1 = _encoded([np.ones((2, 2), np.uint8)], [np.ones((2, 3), np.uint8)], [(0, 0)])
    b3 = _encoded([np.ones((2, 2), np.uint8), np.ones((6, 5), np.uint8), np.ones((1, 1), np.uint8)],
                  [np.ones((2, 3), np.uint8), np.ones((7, 6), np.uint8), np.ones((4, 4), np.uint8)],
                  [(0, 0), (0, 1), (2, 3)])
    outs = []
    for groups, batch in ((1, b1), (1, b3), (2, b3), (3, b3)):
        m = _model(crop=True, crop_groups=groups)
        carry, loss, metrics, preds = supervision_step(m, empty_carry(m, batch, torch.float32), batch,
                                                       lambda ids: m.puzzle_emb[ids], training=False)
        ce = token_ce(m(carry.inputs, m.puzzle_emb[carry.puzzle_ids], *m.initial_state(len(batch["inputs"]),
                                                                                         torch.float32),
                        step_crop(used_extents(carry.inputs, carry.labels, CANVAS, IGNORE), groups, m))[2][:1],
                      carry.labels[:1], "stablemax")
        outs.append((carry.y[:1], carry.z[:1], preds[:1], ce))
    for y, z, preds, ce in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z, outs[0][1], rtol=1e-5, atol=1e-5)
        assert torch.equal(preds, outs[0][2])
        torch.testing.assert_close(ce, outs[0][3], rtol=1e-5, atol=1e-6)


def _varied_tasks(n=6, seed=3):
    rng = np.random.default_rng(seed)
    tasks = []
    for k in range(n):
        h, w = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        demos = [(rng.integers(0, 10, (h, w)).astype(np.uint8), rng.integers(0, 10, (h, w)).astype(np.uint8))
                 for _ in range(2)]
        tests = [rng.integers(0, 10, (h, w)).astype(np.uint8) for _ in range(int(rng.integers(1, 3)))]
        tasks.append(Task(f"v{k}", demos, tests))
    return tasks


@pytest.mark.parametrize("adaptive", [False, True])
def test_prediction_under_crop_is_the_same_for_any_batch_size_and_shard(adaptive):
    """Views of test inputs of many sizes, streamed in batches of 1 and 64 (all in one covering rectangle) and
    split over two 'shards' in the other order: every view's prediction, halting confidence (to float
    rounding: batch 64 vs 1 moves it ~1e-5) and steps, and so every attempt, are the same (the crop's covering
    rectangle changes with the batch, each view's own rectangle does not)."""
    from pipeline.nn.act import predict_stream

    m = _model(crop=True)
    with torch.no_grad():
        m.q_head.bias.fill_(0.0)  # views halt at different steps under adaptive halting
    packed = pack_tasks(_varied_tasks())
    rows = np.arange(len(packed.test_task))
    task_to_ckpt = np.full(packed.num_tasks, -1)
    tests = PredictTasks(packed, task_to_ckpt, PerTaskIds(packed.num_tasks))
    views = make_views(tests, rows, ViewSpec(4, CANVAS, 0, True))
    assert len({tuple(e) for e in views.extents}) > 4  # views of many sizes
    inputs = torch.from_numpy(views.inputs)
    vecs = m.puzzle_emb[torch.ones(len(inputs), dtype=torch.long)]
    ref = predict_stream(m, inputs, vecs, 1, adaptive=adaptive, extents=views.extents)
    order = torch.from_numpy(by_size(views.extents)[::-1].copy())
    got = predict_stream(m, inputs[order], vecs[order], 64, adaptive=adaptive, extents=views.extents[order])
    back = torch.argsort(order)
    assert torch.equal(got[0][back], ref[0]) and torch.equal(got[2][back], ref[2])
    torch.testing.assert_close(got[1][back], ref[1], rtol=1e-4, atol=1e-5)
    cfg = [PredictConfig(augs=4, batch_size=bs, translate=True, adaptive_halting=adaptive) for bs in (64, 5)]
    attempts = []
    for pcfg, shards in ((cfg[0], [rows]), (cfg[1], [rows[len(rows) // 2:], rows[:len(rows) // 2]])):
        preds = [p for shard in shards
                 for p in predict_tests(m, tests, shard, PredictOptions(pcfg, CANVAS, torch.device("cpu")))]
        attempts.append({(p.task_id, p.test_index): [a.tolist() for a in p.attempts] for p in preds})
    assert attempts[0] == attempts[1] and len(attempts[0]) == len(rows)
