"""The official batch composition (pipeline/data/sampler.py OfficialSampler): on the official build with the official
seeding it replays the 40 batches of ../shared/fixtures/trm_official_trajectory (puzzle ids and the very rows of the
build each batch took); epochs, drop-last and the run length are the official ones; offsets are fixed per version
with one example at the top-left; a resumed sampler continues exactly."""
import json

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED, needs_shared
from pipeline.config import ConfigError, DataConfig, load_config
from pipeline.data.official_build import official_id_table, decode_row, load_official_build, read_identifiers
from pipeline.data.dataset import Dataset, build_dataset
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerAugmentationIds, PerTaskIds
from pipeline.data.sampler import OfficialSampler, batch_ends, iteration_order, make_sampler
from pipeline.data.tasks import Task
from pipeline.data.versions import per_augmentation_ids
from pipeline.runtime import init_runtime
from pipeline.training.build import build_run

BUILD = SHARED / "fixtures" / "official_build_mini"
TRAJ = SHARED / "fixtures" / "trm_official_trajectory"


@pytest.fixture(scope="module")
def official():
    """An `official:DIR` source as a run loads it (build_dataset: the build's tasks under the build's own id
    table), the fixture's sampler over it (its seed, batch and epochs_per_iter) and the build's train arrays."""
    fx = json.loads((TRAJ / "fixture.json").read_text())
    cfg = DataConfig(sources=[f"official:{BUILD}"], canvas=30)
    data = build_dataset(cfg, seed=fx["seed"])
    table = official_id_table(read_identifiers(BUILD))
    assert table.task_ids == data.packed.task_ids  # the build's groups in the build's order
    assert data.ids.state_dict()["offsets"].tolist() == table.ids.offsets.tolist()  # the build's versions
    sampler = make_sampler(data.packed, data.ids, cfg, fx["global_batch_size"], fx["seed"],
                           epochs_per_iter=fx["epochs_per_iter"])
    train = {k: np.load(BUILD / "train" / f"all__{k}.npy") for k in ("inputs", "labels", "puzzle_identifiers",
                                                                       "puzzle_indices")}
    return fx, sampler, table, train


@needs_shared(BUILD)
@needs_shared(TRAJ)
def test_the_sampler_replays_the_official_batches_on_the_official_build(official):
    fx, sampler, table, train = official
    traj = np.load(TRAJ / "trajectory.npz")
    puzzle_of = {int(pid): p for p, pid in enumerate(train["puzzle_identifiers"])}
    for k in range(1, fx["steps"] + 1):
        tasks, versions, example, _ = sampler.plan()
        official_ids = table.rows[1 + table.ids.offsets[tasks] + versions]
        np.testing.assert_array_equal(official_ids, traj[f"batch{k}.puzzle_identifiers"], err_msg=f"batch {k}")
        rows = [train["puzzle_indices"][puzzle_of[int(i)]] + e for i, e in zip(official_ids, example)]
        np.testing.assert_array_equal(train["inputs"][rows], traj[f"batch{k}.inputs"], err_msg=f"batch {k} rows")
        labels = traj[f"batch{k}.labels"]
        np.testing.assert_array_equal(train["labels"][rows], np.where(labels < 0, 0, labels), err_msg=f"batch {k}")


@needs_shared(BUILD)
@needs_shared(TRAJ)
def test_the_official_run_length_and_the_encoded_grids(official):
    fx, _, table, train = official
    tasks, _ = load_official_build(BUILD)
    packed = pack_tasks(tasks)
    s = OfficialSampler(packed, table.ids, DataConfig(sources=["official"], canvas=30), 8, 0, epochs_per_iter=200)
    assert s.mean_examples() == fx["metadata"]["mean_puzzle_examples"]
    assert s.total_steps(fx["hyperparameters"]["epochs"]) == fx["total_steps"]
    # what the sampler encodes is the build's grid of that version and example (placed by our own offsets)
    batch, plan = s.batch_at(0), OfficialSampler(packed, table.ids, s.cfg, 8, 0, epochs_per_iter=200).plan()
    puzzle_of = {int(pid): p for p, pid in enumerate(train["puzzle_identifiers"])}
    for j, (i, e) in enumerate(zip(table.rows[batch["puzzle_ids"]], plan[2])):
        row = train["inputs"][train["puzzle_indices"][puzzle_of[int(i)]] + e]
        np.testing.assert_array_equal(decode_row(batch["inputs"][j], 30), decode_row(row, 30))


def _tasks(sizes):
    return [Task(f"t{i}", [(np.full((2, 2), i % 9 + 1, np.uint8), np.full((2, 2), i % 9 + 1, np.uint8))] * n, [])
            for i, n in enumerate(sizes)]


def test_each_epoch_visits_every_task_once_in_clumps_and_drops_the_last_incomplete_batch():
    sizes = [3, 5, 4, 6, 2, 3, 5]
    packed = pack_tasks(_tasks(sizes))
    s = OfficialSampler(packed, PerTaskIds(len(sizes)), DataConfig(sources=["x"], canvas=6), 8, seed=3,
                        epochs_per_iter=4)
    _, order = iteration_order(3, 1, len(sizes), 4)
    assert all(sorted(order[e * 7:(e + 1) * 7]) == list(range(7)) for e in range(4))  # without replacement
    ends = batch_ends(np.asarray(sizes)[order], 8)
    seen = []
    for _ in range(len(ends)):
        tasks, _, example, visit = s.plan()
        assert len(tasks) == 8
        for v in np.unique(visit):  # a visit: one task's examples together, each once, truncated only at the end
            ex = example[visit == v]
            assert len(set(tasks[visit == v])) == 1 and len(set(ex.tolist())) == len(ex)
            assert len(ex) == sizes[tasks[visit == v][0]] or v == visit.max()
        seen.append(tasks)
    assert s.iteration == 1 and sum(sizes) * 4 // 8 > len(ends)  # truncation wastes examples: fewer batches
    s.plan()
    assert s.iteration == 2  # the rest of iteration 1 could not fill a batch: dropped, iteration 2 begins


def test_offsets_are_fixed_per_version_with_one_example_at_the_top_left():
    grids = [np.arange(9, dtype=np.uint8).reshape(3, 3) % (k + 2) + 1 for k in range(4)]  # four distinct examples
    packed = pack_tasks([Task("a", [(g, g) for g in grids], [])])
    ids = per_augmentation_ids(packed, 3, 0)
    s = OfficialSampler(packed, ids, DataConfig(sources=["x"], canvas=30), 4, seed=0, epochs_per_iter=1)
    where = {}
    for _ in range(40):
        b = next(s)
        for pid, r, c, row in zip(b["puzzle_ids"], b["r0"], b["c0"], b["inputs"]):
            where.setdefault((int(pid), decode_row(row, 30).tobytes()), set()).add((int(r), int(c)))
    assert len(where) == 4 * (ids.num_ids - 1)  # every example of every version was drawn ...
    assert all(len(spots) == 1 for spots in where.values())  # ... always at its own offset
    for pid in range(1, ids.num_ids):  # exactly one example of each version at the top-left, as the builder's
        assert sum(spots == {(0, 0)} for (p, _), spots in where.items() if p == pid) == 1, pid
    fresh = OfficialSampler(packed, ids, DataConfig(sources=["x"], canvas=30, fresh_offsets=True), 4, 0)
    spots = {(int(r), int(c)) for _ in range(40) for r, c in zip(*(lambda b: (b["r0"], b["c0"]))(next(fresh)))}
    assert len(spots) > 2 * len(where)  # the departure: a new offset at every draw


@pytest.mark.parametrize("kind", ["official", "independent"])
def test_a_resumed_sampler_continues_exactly_and_ranks_slice_one_global_batch(kind):
    sizes = [3, 5, 4, 6, 2]
    packed = pack_tasks(_tasks(sizes))
    cfg = DataConfig(sources=["x"], canvas=6, sampler=kind)
    ids = PerTaskIds(len(sizes))
    a = make_sampler(packed, ids, cfg, 6, seed=1, epochs_per_iter=2)
    first = [next(a) for _ in range(12)]  # crosses iterations (3 to 4 batches each)
    b = make_sampler(packed, ids, cfg, 6, seed=1, epochs_per_iter=2)
    for _ in range(5):
        next(b)
    state = json.loads(json.dumps(b.state_dict()))  # as a checkpoint stores it
    c = make_sampler(packed, ids, cfg, 6, seed=1, epochs_per_iter=2)
    c.load_state_dict(state)
    for k in range(5, 12):
        got = next(c)
        for key in ("inputs", "labels", "puzzle_ids"):
            np.testing.assert_array_equal(got[key], first[k][key], err_msg=f"{kind} batch {k}")
    again = make_sampler(packed, ids, cfg, 6, seed=1, epochs_per_iter=2)
    np.testing.assert_array_equal(again.batch_at(7)["inputs"], first[7]["inputs"])
    parts = [make_sampler(packed, ids, cfg, 6, 1, r, 3, 2).batch_at(7) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), first[7]["inputs"])


def test_train_epochs_give_the_official_length_schedule_and_evaluation_points(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo_cpu.yaml",
                      [f"run_dir={tmp_path}", "data.sampler=official", "train.epochs=6", "train.eval_interval=2",
                       "train.global_batch=64",
                       "train.progress=false"])
    run = build_run(cfg, init_runtime("cpu", "float32", 0))
    s, t = run.sampler, run.trainer
    assert s.epochs_per_iter == 2
    assert t.schedule_steps == int(6 * 8 * 2000 / 64) == 1500  # 8 tasks of 2000 demonstrations, one version each
    ends = s.iteration_end_steps(3)
    assert sorted(t.eval_steps) == ends and run.cfg.train.steps == ends[-1] < 1500
    assert ends == [sum(len(batch_ends(s.sizes[iteration_order(0, i, 8, 2)[1]], 64)) for i in range(1, k + 1))
                    for k in (1, 2, 3)]


def _reference_batches(group_sizes, versions, batch, seed, epochs_per_iter, iterations):
    """The official PuzzleDataset walk written out from its description (puzzle_dataset.py `_iter_train`,
    `_sample_batch`): groups shuffled per epoch by Philox(seed + iteration), one version per visit, its examples
    by the global numpy generator's choice, the last incomplete batch of each iteration dropped."""
    subsets = np.random.RandomState(seed)
    out = []
    for it in range(1, iterations + 1):
        rng = np.random.Generator(np.random.Philox(seed=seed + it))
        order = np.concatenate([rng.permutation(len(group_sizes)) for _ in range(epochs_per_iter)])
        start = 0
        while start < len(order):
            rows, size = [], 0
            while start < len(order) and size < batch:
                g = order[start]
                v = rng.integers(0, versions[g])
                start += 1
                take = min(group_sizes[g], batch - size)
                rows += [(g, v, e) for e in subsets.choice(group_sizes[g], take, replace=False)]
                size += take
            if size < batch:
                break
            out.append(rows)
    return out


def test_batches_across_iterations_equal_the_official_walk():
    sizes = [3, 5, 4, 6, 2, 7]
    packed = pack_tasks(_tasks(sizes))
    ids = per_augmentation_ids(packed, 4, 0)
    s = OfficialSampler(packed, ids, DataConfig(sources=["x"], canvas=6), 8, seed=5, epochs_per_iter=3)
    want = _reference_batches(sizes, ids.counts, 8, 5, 3, 4)
    for k, rows in enumerate(want):
        tasks, versions, example, _ = s.plan()
        assert list(zip(tasks.tolist(), versions.tolist(), example.tolist())) == \
            [(int(g), int(v), int(e)) for g, v, e in rows], f"batch {k} (iteration {s.iteration})"
    assert s.iteration == 4


def test_the_arc_presets_run_the_official_epochs_unless_steps_are_asked_for():
    cfg = load_config(ROOT / "configs" / "arc2_4xh100.yaml")
    assert (cfg.train.epochs, cfg.train.eval_interval, cfg.data.sampler) == (100_000, 10_000, "official")
    short = load_config(ROOT / "configs" / "arc2_4xh100.yaml", ["train.steps=2"])
    assert (short.train.epochs, short.train.steps) == (0, 2)
    both = load_config(ROOT / "configs" / "arc2_4xh100.yaml", ["train.steps=2", "train.epochs=20000"])
    assert both.train.epochs == 20000
    with pytest.raises(ConfigError, match="multiple of train.eval_interval"):  # as pretrain.py asserts
        load_config(ROOT / "configs" / "arc2_4xh100.yaml", ["train.epochs=25000"])


def test_an_iteration_is_sized_to_fill_batches_and_a_set_too_small_for_one_is_refused():
    packed = pack_tasks(_tasks([3]))  # one task of 3 demonstrations (TTT of one task) against a batch of 64
    s = make_sampler(packed, PerTaskIds(1), DataConfig(sources=["x"], canvas=6), 64, seed=0, run_steps=10)
    assert s.epochs_per_iter == -(-10 * 64 // 3)  # the whole run in one iteration
    for _ in range(10):
        assert len(next(s)["inputs"]) == 64
    assert make_sampler(packed, PerTaskIds(1), s.cfg, 64, seed=0).epochs_per_iter == 22  # at least one batch
    with pytest.raises(ValueError, match="fewer than the global batch"):
        make_sampler(packed, PerTaskIds(1), s.cfg, 64, seed=0, epochs_per_iter=2)


def test_a_run_capped_at_total_steps_makes_the_official_ema_updates_of_the_iterations_rest(tmp_path):
    """total_steps counts examples per version (2.8 here: a 10-example task with one version, a 2-example one with
    nine), the iterations' batches examples per visit (6): the run reaches total_steps early, and pretrain.py still
    updates the EMA after each remaining batch (weights unchanged) before its last evaluation."""
    tasks = [Task("big", [(np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8))] * 10, []),
             Task("small", [(np.full((2, 2), 2, np.uint8), np.full((2, 2), 2, np.uint8))] * 2, [])]
    packed = pack_tasks(tasks)
    ids = PerAugmentationIds(np.zeros(10, np.int64), np.tile(np.arange(10, dtype=np.uint8), (10, 1)),
                             np.array([0, 1, 10]))
    sets = [f"run_dir={tmp_path / 'a'}", "data.sampler=official", "data.canvas=5", "data.eval_inputs=-1",
            "train.epochs=4", "train.eval_interval=2", "train.global_batch=8", "train.ema_decay=0.9",
            "train.progress=false", "model.hidden=32", "model.heads=2", "model.puzzle_emb_ndim=32"]
    runs = []
    for folder in ("a", "b"):
        cfg = load_config(ROOT / "configs" / "demo_cpu.yaml", [*sets, f"run_dir={tmp_path / folder}"])
        runs.append(build_run(cfg, init_runtime("cpu", "float32", 0), data=Dataset(tasks, packed, ids, [])))
    a, b = runs
    ends = a.sampler.iteration_end_steps(2)
    assert a.trainer.schedule_steps == int(4 * 2 * 2.8 / 8) == a.cfg.train.steps == 2 < ends[-1]
    assert a.trainer.ema_tail == ends[-1] - 2 > 0
    a.trainer.fit()
    b.trainer.ema_tail = 0  # the same run without the tail, then the tail's updates by hand
    b.trainer.fit()
    for _ in range(ends[-1] - 2):
        b.trainer.ema.update(b.model)
    for name, shadow in a.trainer.ema.shadow.items():
        assert torch.equal(shadow, b.trainer.ema.shadow[name]), name
    assert not torch.equal(a.trainer.ema.shadow["lm_head.weight"], a.model.lm_head.weight)  # still an average
