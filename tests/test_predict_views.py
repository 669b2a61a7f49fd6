"""Prediction views leave room for the answer, and a grid clipped by the canvas edge never votes:
pytest tests/test_predict_views.py"""
import numpy as np

from kernels.inverse import decode_view
from kernels.reference import augment_grid_ref, encode_grid_ref
from pipeline.prediction.infer import PredictTasks, ViewSpec, Views, answer_bound, make_views, vote
from pipeline.data.packed import pack_tasks
from pipeline.data.puzzle_ids import PerTaskIds
from pipeline.data.tasks import Task

CANVAS = 12  # small, so that a 3x upscale of the test input cannot go just anywhere


def _up3(g: np.ndarray) -> np.ndarray:
    return np.kron(g, np.ones((3, 3), dtype=np.uint8))


def _upscale_task():
    """Output = input upscaled 3x; demos of several shapes, the test input 3x2 -> answer 9x6."""
    rng = np.random.default_rng(0)
    demos = [rng.integers(0, 10, s).astype(np.uint8) for s in [(1, 2), (2, 1), (2, 2)]]
    x = rng.integers(1, 10, (3, 2)).astype(np.uint8)
    return Task("up3", [(g, _up3(g)) for g in demos], [x], [_up3(x)], train_on_test=False), _up3(x)


def _views(task, n_views=64, translate=True):
    packed = pack_tasks([task])
    return packed, make_views(PredictTasks(packed, np.zeros(1, np.int64), PerTaskIds(1)), np.arange(1),
                              ViewSpec(n_views, CANVAS, 0, translate))


def test_answer_bound_from_the_demonstrations():
    task, truth = _upscale_task()
    packed = pack_tasks([task])
    assert answer_bound(packed, 0) == truth.shape
    same = Task("same", [(np.ones((2, 3), np.uint8), np.ones((2, 3), np.uint8))], [np.ones((4, 5), np.uint8)])
    assert answer_bound(pack_tasks([same]), 0) == (4, 5)
    # Widths 14 -> 26 and 12 -> 24 share a difference, but the answer to width 11 is 26 wide (ARC 45a5af55).
    sq = Task("sq", [(np.ones((14, 14), np.uint8), np.ones((26, 26), np.uint8)),
                     (np.ones((12, 12), np.uint8), np.ones((24, 24), np.uint8))], [np.ones((11, 11), np.uint8)])
    assert answer_bound(pack_tasks([sq]), 0) == (26, 26)
    sizes = [(1, 3), (2, 2), (3, 1)]  # no size relation holds for every demonstration
    odd = Task("odd", [(np.ones((s, s), np.uint8), np.ones((o, o), np.uint8)) for s, o in sizes],
               [np.ones((2, 2), np.uint8)])
    assert answer_bound(pack_tasks([odd]), 0) == (0, 0)
    _, views = _views(odd)
    assert (views.r0 == 0).all() and (views.c0 == 0).all()  # unsure: no translation


def test_every_translated_view_can_hold_a_3x_answer():
    task, truth = _upscale_task()
    packed, views = _views(task)
    n = len(views.r0)
    assert set(views.dihedral.tolist()) == set(range(8))
    assert (views.r0 > 0).any() and (views.c0 > 0).any()  # the views are translated
    preds = np.empty((n, CANVAS * CANVAS), np.uint8)
    for v in range(n):
        r0, c0, d, perm = int(views.r0[v]), int(views.c0[v]), int(views.dihedral[v]), views.perms[v]
        x = augment_grid_ref(task.test_inputs[0], d, perm)
        np.testing.assert_array_equal(views.inputs[v], encode_grid_ref(x, r0, c0, CANVAS))
        answer = augment_grid_ref(truth, d, perm)
        assert r0 + answer.shape[0] < CANVAS and c0 + answer.shape[1] < CANVAS  # room for it and its EOS border
        preds[v] = encode_grid_ref(answer, r0, c0, CANVAS)
        np.testing.assert_array_equal(decode_view(preds[v], r0, c0, d, perm, CANVAS), truth)
    [(ranked, n_valid)] = vote(views, preds, np.full(n, 0.5), CANVAS, 2)
    assert n_valid == n and ranked[0][1] == n
    np.testing.assert_array_equal(ranked[0][0], truth)


def test_a_grid_clipped_by_the_canvas_edge_does_not_vote():
    task, truth = _upscale_task()
    n = 8
    d = np.zeros(n, np.int64)
    perms = np.tile(np.arange(10, dtype=np.uint8), (n, 1))
    # Views 0-1 untranslated; views 2-7 at offsets that clip the 9x6 answer (as offsets drawn from the 3x2
    # input alone allow), where the model writes as much of it as fits.
    r0 = np.array([0, 0, 5, 5, 5, 0, 0, 0])
    c0 = np.array([0, 0, 0, 0, 0, 8, 8, 8])
    preds = np.empty((n, CANVAS * CANVAS), np.uint8)
    for v in range(n):
        big = encode_grid_ref(truth, r0[v], c0[v], 2 * CANVAS).reshape(2 * CANVAS, 2 * CANVAS)
        preds[v] = big[:CANVAS, :CANVAS].reshape(-1)
    views = Views(preds, np.zeros(n, np.int64), d, perms, r0, c0, np.array([0, n]))
    [(ranked, n_valid)] = vote(views, preds, np.full(n, 0.5), CANVAS, 2)
    assert n_valid == 2 and len(ranked) == 1 and ranked[0][1] == 2
    np.testing.assert_array_equal(ranked[0][0], truth)


def test_untranslated_views_of_a_fixed_table_vote_once_each():
    """With a per-augmentation table of 3 versions and 8 views asked for, untranslated prediction runs each
    version once (as the official evaluation) instead of wrapping around; translated views may repeat one."""
    from pipeline.data.puzzle_ids import PerAugmentationIds

    task, _ = _upscale_task()
    two = Task("two", task.train, task.test_inputs + task.test_inputs, train_on_test=False)
    packed = pack_tasks([task, two])
    ids = PerAugmentationIds(np.array([0, 4, 5, 0, 1]), np.tile(np.arange(10, dtype=np.uint8), (5, 1)),
                             np.array([0, 3, 5]))
    rows = np.arange(3)
    tests = PredictTasks(packed, np.arange(2), ids)
    views = make_views(tests, rows, ViewSpec(8, CANVAS, 0, False))
    assert list(views.seg_starts) == [0, 3, 5, 7]
    assert list(views.puzzle_ids) == [1, 2, 3, 4, 5, 4, 5] and list(views.dihedral[:3]) == [0, 4, 5]
    assert list(make_views(tests, rows, ViewSpec(8, CANVAS, 0, True)).seg_starts) == [0, 8, 16, 24]
