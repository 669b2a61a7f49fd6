"""Memory bounds that matter at ARC size: the held-out evaluation streams its views in fixed-size batches, so
its peak does not grow with the number of evaluation inputs (at ARC size 768 views at once took >20 GB on
CPU; see BENCHMARKS.md, "Memory"). Measured as the peak resident set while evaluating, sampled in the
background by bench.memory's sampler."""
import ctypes
import gc

import torch

from bench.memory import RssSampler
from conftest import ROOT
from pipeline.config import ModelConfig, PredictConfig
from pipeline.prediction.infer import PredictOptions, evaluate_heldout
from pipeline.nn.model import TRM
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.synthetic import synthetic_tasks

MB = 2**20


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS, so a phase starts from what is live: otherwise pages the
    allocator kept from the phase before can hide one phase's peak (seen: 0 MB for 8 inputs) and
    fragmentation can inflate the next (85 MB for 64)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the repeats below still damp the noise
        pass


def eval_peak_mb(model, packed, ids, cfg, n_inputs: int, rss: RssSampler, repeats: int = 3) -> float:
    """Peak RSS above the level before the call, over one held-out evaluation of n_inputs inputs; the least
    of `repeats` runs, since allocator noise only ever adds to a peak."""
    rises = []
    for r in range(repeats):
        release_free_memory()
        name = f"{n_inputs}/{cfg.batch_size}/{r}"
        with rss.phase(name):
            out = evaluate_heldout(model, packed, ids, PredictOptions(cfg, 5, torch.device("cpu")), n_inputs)
        assert out["inputs"] == n_inputs
        rises.append(rss.phases[name]["rss_peak_mb"] - rss.phases[name]["rss_start_mb"])
    return min(rises)


def test_heldout_evaluation_memory_does_not_grow_with_the_number_of_inputs():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tasks = synthetic_tasks("tasks=16,seed=0,size=4,demos=2,tests=4,fixed=1", train_on_test=False)
    packed = pack_tasks(tasks)
    ids = PerTaskIds(packed.num_tasks, dihedral=True, colour_perm=True)
    # Wide for its length, so that a batch's activations (~0.4 MB per view) dwarf everything per input.
    model = TRM(ModelConfig(hidden=512, heads=8, seq_len=25, puzzle_emb_len=1, puzzle_emb_ndim=512, h_cycles=1,
                            l_cycles=1, halt_max_steps=1), ids.num_ids)
    streamed = PredictConfig(augs=8, batch_size=16, translate=False)
    at_once = PredictConfig(augs=8, batch_size=512, translate=False)  # every view in one batch
    assert (packed.test_out >= 0).all() and not packed.test_trainable.any() and len(packed.test_out) == 64
    with RssSampler(interval=0.001) as rss:
        for cfg in (streamed, at_once):
            eval_peak_mb(model, packed, ids, cfg, 8, rss, repeats=1)  # warm up allocator and kernels
        few = eval_peak_mb(model, packed, ids, streamed, 8, rss)
        many = eval_peak_mb(model, packed, ids, streamed, 64, rss)
        control = eval_peak_mb(model, packed, ids, at_once, 64, rss, repeats=1)
    # 64 inputs x 8 views streamed in batches of 16 need no more than 8 inputs do (a few KB per view for the
    # views' tokens, predictions and votes); the control shows the measurement sees a batch of 512 views.
    print(f"eval peak over start: 8 inputs {few:.1f} MB, 64 inputs {many:.1f} MB, 64 at once {control:.1f} MB")
    assert many - few < 25, (few, many, control)
    assert control - many > 200, (few, many, control)


def test_cpu_prediction_batch_is_bounded_in_tokens(monkeypatch):
    """At ARC length (900 + 16 tokens) CPU prediction (held-out evaluation, stages.predict, submit) runs
    CPU_BATCH_TOKENS // 916 views at once, whatever predict.batch_size says; a short sequence keeps the
    configured batch, and so does a GPU."""
    import pipeline.prediction.infer as infer

    seen = []
    real = infer.predict_stream

    def spy(model, inputs, vecs, batch_size, *args, **kw):
        seen.append(batch_size)
        return real(model, inputs, vecs, batch_size, *args, **kw)

    monkeypatch.setattr(infer, "predict_stream", spy)
    packed = pack_tasks(synthetic_tasks("tasks=2,seed=0,size=4,demos=2,tests=1,fixed=1", train_on_test=False))
    ids = PerTaskIds(packed.num_tasks)
    model = TRM(ModelConfig(hidden=16, heads=1, seq_len=900, puzzle_emb_ndim=16, h_cycles=1, l_cycles=1,
                            halt_max_steps=1), ids.num_ids).eval()
    evaluate_heldout(model, packed, ids, PredictOptions(PredictConfig(batch_size=768, augs=2), 30, torch.device("cpu")))
    assert seen == [infer.CPU_BATCH_TOKENS // 916] == [17]
    want = 768
    assert infer.model_batch(PredictConfig(batch_size=768), torch.device("cpu"), 4 + 16) == want
    assert infer.model_batch(PredictConfig(batch_size=768), torch.device("cuda"), 916) == 768


def test_a_checkpoint_save_holds_the_puzzle_table_once(tmp_path):
    """Saving a checkpoint neither copies the table in memory (at e823bfc the EMA state dict cloned it: +2.3 GB
    at ARC size) nor stores it twice on disk."""
    from pipeline.training.build import build_run
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime

    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path}", "train.progress=false"])
    run = build_run(cfg, init_runtime("cpu", "float32", 0), eval_fn=None)
    run.model.puzzle_emb = torch.ones(1_000_000, cfg.model.puzzle_emb_ndim)  # 256 MB: a million-id table
    table_mb = run.model.puzzle_emb.nbytes / MB
    run.trainer.prepare()
    run.trainer.train_step()
    with RssSampler(interval=0.001) as rss:
        gc.collect()
        with rss.phase("save"):
            run.trainer.save()
        with rss.phase("control"):  # what one copy of the table looks like to the sampler
            copy = run.model.puzzle_emb.clone()
    del copy
    rise = {k: v["rss_peak_mb"] - v["rss_start_mb"] for k, v in rss.phases.items()}
    assert rise["save"] < table_mb / 4 and rise["control"] > table_mb * 0.9, rise
    ckpt = next((tmp_path / "ckpt").glob("step-*"))
    assert (ckpt / "model.safetensors").stat().st_size > table_mb * MB
    assert (ckpt / "ema.safetensors").stat().st_size < table_mb * MB / 10


PEAK_OVER_BUDGET = 1.7
"""The bar of the next test, set from its spread (dev-cpu, 2 cores, load average 4.6-6.5 from other jobs):
healthy, 16 runs: 1.232-1.328x (6 alone: 1.245-1.322; 6 beside a busy 2-thread numpy matmul loop:
1.232-1.328; 4 beside two busy 1-thread loops: 1.242-1.313). Broken: one more copy of the table at save
(a clone in save_tensors) 2.078-2.279x over 3 runs; the EMA shadowing the table 3.23-3.28x; every evaluation
view in one batch 4.8-6.0x. 1.7 is midway between the highest healthy (1.33) and the lowest broken (2.08)
peak: 0.37x either side, ~4x the healthy runs' range of 0.10x."""


def test_a_training_run_at_the_arc_settings_holds_one_table_and_a_streamed_evaluation(tmp_path):
    """bench.memory's phases (build, training steps, held-out evaluation with the EMA swapped in, checkpoint save)
    at the ARC config (AdamATan2, EMA, K=1000 augmentations per task, a 512-wide puzzle table) with the table
    reduced to 64 tasks (64k ids, 125 MB) and a small trunk and canvas, so the table dominates the budget
    (trunk + optimiser + one table): the run's peak over its start stays under PEAK_OVER_BUDGET that budget.
    A second copy of the table anywhere (an EMA of it, a clone at save) adds 1x; an evaluation whose memory
    grows with its 128 inputs x 16 views (all in one batch) adds more. (The full ARC config, where a training
    step's activations are ~1x the budget: 2.0x measured, BENCHMARKS.md "Memory".)"""
    from bench.memory import budget, measure
    from pipeline.training.build import build_run
    from pipeline.config import load_config
    from pipeline.runtime import init_runtime

    def arc_config(tasks: int, run_dir) -> object:
        return load_config(ROOT / "configs" / "arc2_4xh100.yaml", [
            f'data.sources=["synthetic:tasks={tasks},seed=0,size=4,demos=3,tests=2,fixed=1#demos"]',
            "data.canvas=5", "model.seq_len=25", "model.hidden=64", "model.heads=2", "model.puzzle_emb_len=8",
            "model.h_cycles=1", "model.l_cycles=1", "model.halt_max_steps=2", "train.global_batch=8",
            "data.eval_inputs=0", "data.eval_views=16", "predict.batch_size=64", "train.progress=false",
            f"run_dir={run_dir}"])

    torch.set_num_threads(1)
    rt = init_runtime("cpu", "float32", 0)
    with RssSampler(interval=0.002) as rss:
        warm = build_run(arc_config(4, tmp_path / "warm"), rt)  # kernels compiled, allocator warmed
        warm.trainer.prepare()
        measure(rss, warm.trainer, 1)
        del warm
        release_free_memory()
        rss.phases.clear()  # the warm-up's
        start_mb = rss.proc.memory_info().rss / MB
        with rss.phase("build"):
            run = build_run(arc_config(64, tmp_path / "run"), rt)
            run.trainer.prepare()
        metrics = measure(rss, run.trainer, 2)
        b = budget(run.model, run.trainer.opt)
    peak_mb = max(p["rss_peak_mb"] for p in rss.phases.values())
    print(f"run peak over start: {peak_mb - start_mb:.1f} MB = {(peak_mb - start_mb) / b['budget_mb']:.3f}x the "
          f"budget ({b['budget_mb']:.1f} MB)")
    assert run.data.ids.num_ids > 64_000 and b["table_mb"] > 0.95 * b["budget_mb"] and metrics["eval/inputs"] == 128
    assert peak_mb - start_mb <= PEAK_OVER_BUDGET * b["budget_mb"], (peak_mb - start_mb, b, rss.phases)
