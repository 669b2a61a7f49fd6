"""Numba kernels against their plain-NumPy references: pytest tests/test_kernels.py"""
import numpy as np
import pytest

from kernels import DIHEDRAL_SWAPS_AXES
from kernels.augment import encode_pairs
from kernels.dihedral import swaps_axes
from kernels.inverse import decode_view, hash_views
from kernels.reference import augment_grid_ref, decode_ref, dihedral_ref, encode_grid_ref, vote_ref
from kernels.vote import vote_topk
from pipeline.data.puzzle_ids import random_perms
from pipeline.data.packed import pack_tasks
from pipeline.data.tasks import Task

SHAPES = [(1, 1), (30, 30), (1, 30), (30, 1), (3, 7), (12, 5)]


def _pack(grids):
    t = Task("t", [(g, g) for g in grids], [grids[0]])
    return pack_tasks([t])


def _encode(packed, idx, d, perms, u, canvas=30):
    n = len(idx)
    ins, labs = np.empty((n, canvas * canvas), np.uint8), np.empty((n, canvas * canvas), np.uint8)
    r0, c0 = np.empty(n, np.int64), np.empty(n, np.int64)
    encode_pairs(packed.cells, packed.starts, packed.heights, packed.widths, idx, np.full(n, -1), d, perms,
                 u[0], u[1], canvas, ins, labs, r0, c0)
    return ins, labs, r0, c0


@pytest.mark.parametrize("shape", SHAPES)
def test_encode_matches_reference_and_inverse_roundtrips(shape):
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, size=shape).astype(np.uint8) for _ in range(8)]
    packed = _pack(grids)
    n = 8 * 4
    idx = packed.ex_in[np.arange(n) % 8]
    d = np.arange(n) % 8
    perms = random_perms(rng, n)
    u = rng.random((2, n))
    ins, labs, r0, c0 = _encode(packed, idx, d, perms, u)
    assert (labs == 0).all()  # no output given -> label canvas is all PAD
    for b in range(n):
        g = grids[b % 8]
        aug = augment_grid_ref(g, d[b], perms[b])
        assert 0 <= r0[b] <= 30 - aug.shape[0] and 0 <= c0[b] <= 30 - aug.shape[1]
        np.testing.assert_array_equal(ins[b], encode_grid_ref(aug, r0[b], c0[b], 30))
        back = decode_view(ins[b], r0[b], c0[b], d[b], perms[b], 30)
        ref = decode_ref(ins[b], r0[b], c0[b], d[b], perms[b], 30)
        if (r0[b] > 0 and r0[b] + aug.shape[0] == 30) or (c0[b] > 0 and c0[b] + aug.shape[1] == 30):
            assert back.shape == (0, 0) and ref is None  # translated into the edge: no room for the border
            continue
        np.testing.assert_array_equal(back, g)  # inverse(forward(g)) == g
        np.testing.assert_array_equal(ref, g)


def test_background_colour_is_fixed_and_translation_off_is_top_left():
    rng = np.random.default_rng(1)
    perms = random_perms(rng, 100)
    assert (perms[:, 0] == 0).all() and all(sorted(p) == list(range(10)) for p in perms)
    g = np.array([[0, 1], [2, 3]], np.uint8)
    packed = _pack([g])
    ins, _, r0, c0 = _encode(packed, np.array([0]), np.array([0]), perms[:1], np.zeros((2, 1)))
    assert r0[0] == 0 and c0[0] == 0 and ins[0, 0] == 2  # colour 0 -> token 2 at (0, 0)


def test_output_label_shares_the_input_offset():
    a = np.ones((2, 3), np.uint8)
    b = np.full((4, 1), 5, np.uint8)
    packed = pack_tasks([Task("t", [(a, b)], [a])])
    n = 1
    ins, labs = np.empty((n, 900), np.uint8), np.empty((n, 900), np.uint8)
    r0, c0 = np.empty(n, np.int64), np.empty(n, np.int64)
    encode_pairs(packed.cells, packed.starts, packed.heights, packed.widths, packed.ex_in[:1], packed.ex_out[:1],
                 np.array([0]), np.tile(np.arange(10, dtype=np.uint8), (1, 1)), np.array([0.999]), np.array([0.999]),
                 30, ins, labs, r0, c0)
    assert r0[0] == 30 - 4 and c0[0] == 30 - 3  # room for the larger of the two grids
    np.testing.assert_array_equal(labs[0], encode_grid_ref(b, r0[0], c0[0], 30))


def _decodes(tokens, r0=0, c0=0):
    """decode_view and decode_ref agree; returns the grid as a list ([] when invalid)."""
    ours = decode_view(tokens, r0, c0, 0, np.arange(10, dtype=np.uint8), 30)
    ref = decode_ref(tokens, r0, c0, 0, np.arange(10), 30)
    assert (ref is None) == (ours.size == 0)
    if ref is not None:
        np.testing.assert_array_equal(ours, ref)
    return ours.tolist()


def test_decoding_follows_the_official_crop_and_rejects_clipped_views():
    g = np.arange(12, dtype=np.int64).reshape(3, 4) % 10
    assert _decodes(np.zeros(900, np.uint8)) == []  # all PAD: no grid at all
    t = encode_grid_ref(g, 0, 0, 30).copy()
    t[0] = 0
    assert _decodes(t) == []  # a non-colour at the top-left corner: empty crop
    t = encode_grid_ref(g, 0, 0, 30).copy()
    t[4] = t[30 + 4] = t[60 + 4] = 0  # PAD instead of the EOS column: the border is not needed
    assert _decodes(t) == g.tolist()
    t[30 + 2] = 1  # EOS inside row 1: rows are cut to the narrowest so far, largest area wins
    assert _decodes(t) == [[0, 1], [4, 5], [8, 9]]
    t = encode_grid_ref(g, 5, 7, 30)
    assert _decodes(t, 5, 7) == g.tolist()
    assert _decodes(encode_grid_ref(np.ones((3, 30), np.int64), 0, 0, 30)) == np.ones((3, 30)).tolist()
    # A translated grid that runs into the canvas edge was clipped there: it must not vote.
    assert _decodes(encode_grid_ref(np.ones((3, 5), np.int64), 2, 25, 30), 2, 25) == []
    assert _decodes(encode_grid_ref(np.ones((5, 3), np.int64), 25, 0, 30), 25, 0) == []
    assert _decodes(encode_grid_ref(np.ones((5, 3), np.int64), 24, 0, 30), 24, 0) == np.ones((5, 3)).tolist()


def test_crop_matches_reference_on_damaged_canvases():
    """Kernel (both hash_views paths and decode_view) against the NumPy twin on grids with damaged cells and
    borders at random offsets, including grids that touch the canvas edge."""
    rng = np.random.default_rng(5)
    n, canvas = 1500, 30
    tokens, r0, c0 = np.zeros((n, canvas * canvas), np.uint8), np.zeros(n, np.int64), np.zeros(n, np.int64)
    d, perms = rng.integers(0, 8, n), random_perms(rng, n)
    for v in range(n):
        g = rng.integers(0, 10, rng.integers(1, 31, 2))
        r0[v], c0[v] = rng.integers(0, 31 - g.shape[0]) * (v % 3 > 0), rng.integers(0, 31 - g.shape[1]) * (v % 3 > 0)
        t = encode_grid_ref(g, r0[v], c0[v], canvas).reshape(canvas, canvas).copy()
        for _ in range(rng.integers(0, 4)):  # damage cells in and around the grid with any token
            i, j = r0[v] + rng.integers(0, g.shape[0] + 1), c0[v] + rng.integers(0, g.shape[1] + 1)
            t[min(i, canvas - 1), min(j, canvas - 1)] = rng.integers(0, 12)
        tokens[v] = t.reshape(-1)
    hashes, hs, ws = np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64)
    hash_views(tokens, r0, c0, d, perms, canvas, hashes, hs, ws)
    seen: dict = {}
    for v in range(n):
        ref = decode_ref(tokens[v], r0[v], c0[v], d[v], perms[v], canvas)
        ours = decode_view(tokens[v], r0[v], c0[v], d[v], perms[v], canvas)
        if ref is None:
            assert ours.shape == (0, 0) and hs[v] == 0
            continue
        np.testing.assert_array_equal(ours, ref)
        assert (hs[v], ws[v]) == ref.shape
        assert seen.setdefault(ref.tobytes() + bytes(ref.shape), hashes[v]) == hashes[v]
    assert 0 < sum(hs == 0) < n // 2


def test_dihedral_axis_swaps_agree():
    assert all(swaps_axes(d) == DIHEDRAL_SWAPS_AXES[d] for d in range(8))
    g = np.zeros((2, 3))
    assert all((dihedral_ref(g, d).shape == (3, 2)) == DIHEDRAL_SWAPS_AXES[d] for d in range(8))


def test_hash_and_vote_match_reference():
    rng = np.random.default_rng(3)
    canvas, G, V = 30, 5, 40
    truths = [rng.integers(0, 10, size=rng.integers(1, 12, 2)).astype(np.uint8) for _ in range(G)]
    rows, d, perms, r0, c0, conf, grids = [], [], [], [], [], [], []
    for g in range(G):
        alts = [truths[g], (truths[g] + 1) % 10, truths[g][:1]]
        for _ in range(V):
            choice = alts[rng.choice(3, p=[0.5, 0.3, 0.2])]
            dd, pp = int(rng.integers(8)), random_perms(rng, 1)[0]
            aug = augment_grid_ref(choice, dd, pp)
            rr, cc = int(rng.integers(0, 31 - aug.shape[0])), int(rng.integers(0, 31 - aug.shape[1]))
            tok = encode_grid_ref(aug, rr, cc, canvas)
            if rng.random() < 0.1:
                tok = np.zeros_like(tok)  # an invalid view
            elif rng.random() < 0.3:  # a damaged cell in or around the grid (PAD, EOS or another colour)
                tok = tok.copy()
                i, j = rr + rng.integers(0, aug.shape[0] + 1), cc + rng.integers(0, aug.shape[1] + 1)
                tok[min(i, canvas - 1) * canvas + min(j, canvas - 1)] = rng.integers(0, 12)
            rows.append(tok), d.append(dd), perms.append(pp), r0.append(rr), c0.append(cc)
            conf.append(float(rng.random()))
            grids.append(decode_ref(tok, rr, cc, dd, pp, canvas))
    tokens, d, perms = np.stack(rows), np.array(d), np.stack(perms)
    r0, c0, conf = np.array(r0), np.array(c0), np.array(conf)
    N = len(tokens)
    hashes, hs, ws = np.empty(N, np.uint64), np.empty(N, np.int64), np.empty(N, np.int64)
    hash_views(tokens, r0, c0, d, perms, canvas, hashes, hs, ws)
    for n in range(N):
        assert (grids[n] is None) == (hs[n] == 0)
        if grids[n] is not None:
            assert grids[n].shape == (hs[n], ws[n])
    seg = np.arange(0, N + 1, V)
    k = 2
    top_rows, top_counts, top_conf = np.empty((G, k), np.int64), np.empty((G, k), np.int64), np.empty((G, k))
    vote_topk(seg, hashes, hs > 0, conf, k, top_rows, top_counts, top_conf)
    for g in range(G):
        ref = vote_ref(grids[g * V:(g + 1) * V], list(conf[g * V:(g + 1) * V]), k)
        for j, (grid, count, mean) in enumerate(ref):
            r = top_rows[g, j]
            np.testing.assert_array_equal(decode_view(tokens[r], r0[r], c0[r], d[r], perms[r], canvas), grid)
            assert top_counts[g, j] == count and top_conf[g, j] == pytest.approx(mean)
        assert top_counts[g, 0] > 0


def test_vote_tie_break_by_confidence():
    canvas = 30
    a, b = np.ones((2, 2), np.int64), np.full((2, 2), 2, np.int64)
    toks = np.stack([encode_grid_ref(x, 0, 0, canvas) for x in (a, b, a, b)])
    conf = np.array([0.1, 0.9, 0.2, 0.8])  # 2 votes each; b is more confident
    n = 4
    z = np.zeros(n, np.int64)
    perms = np.tile(np.arange(10, dtype=np.uint8), (n, 1))
    hashes, hs, ws = np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64)
    hash_views(toks, z, z, z, perms, canvas, hashes, hs, ws)
    rows, counts, cf = np.empty((1, 2), np.int64), np.empty((1, 2), np.int64), np.empty((1, 2))
    vote_topk(np.array([0, n]), hashes, hs > 0, conf, 2, rows, counts, cf)
    assert list(rows[0]) == [1, 0] and list(counts[0]) == [2, 2]
