"""The official TRM evaluator as an oracle (../shared/fixtures/official_decode_vote, written by its
evaluators/arc.py): our decoding and our two attempts against what it makes of the same predicted canvases.
pytest tests/test_official_decode_vote.py (also selected by -k official)."""
import gzip
import json

import numpy as np
import torch
import torch.nn.functional as F

from kernels.inverse import decode_view, hash_views
from kernels.reference import decode_ref, encode_grid_ref
from pipeline.config import ModelConfig, PredictConfig
from pipeline.prediction.infer import PredictOptions, Views, run_views, vote
from pipeline.nn.model import TRM
from submission.format import build_submission
from conftest import SHARED, needs_shared

FIXTURES = SHARED / "fixtures" / "official_decode_vote"
needs_fixtures = needs_shared(FIXTURES)
CANVAS = 30


def _load(name: str) -> list:
    with gzip.open(FIXTURES / name, "rt") as f:
        return json.load(f)


def _tokens(hex_canvas: str) -> np.ndarray:
    return np.array([int(c, 16) for c in hex_canvas], dtype=np.uint8)


def _perm(digits: str) -> np.ndarray:
    return np.array([int(c) for c in digits], dtype=np.uint8)


def _official_confidence(q_halt_logits: list) -> np.ndarray:
    """sigmoid of the float32 halting logit computed in float64, as evaluators/arc.py does."""
    return torch.sigmoid(torch.tensor(q_halt_logits, dtype=torch.float32).double()).numpy()


@needs_fixtures
def test_official_decode_matches_every_case():
    cases = _load("decode.json.gz")
    assert len(cases) == 610
    tokens = np.stack([_tokens(c["tokens"]) for c in cases])
    d = np.array([c["dihedral"] for c in cases], dtype=np.int64)
    perms = np.stack([_perm(c["perm"]) for c in cases])
    zeros = np.zeros(len(cases), dtype=np.int64)
    hashes = np.empty(len(cases), np.uint64)
    hs, ws = np.empty(len(cases), np.int64), np.empty(len(cases), np.int64)
    hash_views(tokens, zeros, zeros, d, perms, CANVAS, hashes, hs, ws)
    by_grid: dict = {}
    for n, case in enumerate(cases):
        ours = decode_view(tokens[n], 0, 0, d[n], perms[n], CANVAS)
        ref = decode_ref(tokens[n], 0, 0, d[n], perms[n], CANVAS)
        if case["official"] == []:  # an empty crop: an invalid view that casts no vote
            assert ours.shape == (0, 0) and ref is None and hs[n] == 0, case["case"]
            continue
        assert ours.tolist() == case["official"], case["case"]
        assert ref.tolist() == case["official"], case["case"]
        assert (hs[n], ws[n]) == ours.shape, case["case"]
        by_grid.setdefault(ours.tobytes() + bytes(ours.shape), set()).add(int(hashes[n]))
    # Equal grids hash equally whatever the view (the hash is what votes).
    assert all(len(h) == 1 for h in by_grid.values())
    assert len({next(iter(h)) for h in by_grid.values()}) == len(by_grid)


def _official_ranking(case: dict) -> list:
    """The official evaluator's ranking of one test input, written independently of our kernels: every view's
    crop (empty ones included, as []) grouped by grid, sorted by (count, mean confidence) descending, a stable
    sort keeping first-seen order on exact ties."""
    stats: dict = {}
    for view, q in zip(case["views"], _official_confidence(case["q_halt_logits"])):
        grid = decode_ref(_tokens(view["tokens"]), 0, 0, view["dihedral"], _perm(view["perm"]), CANVAS)
        grid = [] if grid is None else grid.tolist()
        s = stats.setdefault(json.dumps(grid), [0, 0.0, grid])
        s[0] += 1
        s[1] += float(q)
    ranked = sorted(stats.values(), key=lambda s: (s[0], s[1] / s[0]), reverse=True)
    return [s[2] for s in ranked]


class _Scripted(TRM):
    """A TRM whose step returns given predictions and halting logits: the last input token is the view's
    number (< 32), the canvas before it is what the view predicts. Halts after one step."""

    def __init__(self, q_halt_logits: list):
        super().__init__(ModelConfig(hidden=8, heads=1, layers=1, seq_len=CANVAS * CANVAS + 1, puzzle_emb_len=0,
                                     puzzle_emb_ndim=0, halt_max_steps=1, vocab_size=32), 1)
        self.register_buffer("q_table", torch.tensor(q_halt_logits, dtype=torch.float32))

    def forward(self, inputs, puzzle_vecs, y, z, crop=None):
        logits = F.one_hot(inputs.long(), self.cfg.vocab_size).float()
        q = self.q_table[inputs[:, -1].long()]
        return y, z, logits, q, -q


def _our_entry(case: dict) -> dict:
    """Our two attempts through the pipeline path: run_views (the halting confidence) and vote() on the views,
    then the one submission writer."""
    views = case["views"]
    n = len(views)
    canvases = np.stack([_tokens(v["tokens"]) for v in views])
    inputs = np.concatenate([canvases, np.arange(n, dtype=np.uint8)[:, None]], axis=1)
    zeros = np.zeros(n, dtype=np.int64)
    v = Views(inputs, zeros, np.array([x["dihedral"] for x in views], np.int64),
              np.stack([_perm(x["perm"]) for x in views]), zeros, zeros, np.array([0, n], np.int64))
    preds, conf, _ = run_views(_Scripted(case["q_halt_logits"]), v,
                               PredictOptions(PredictConfig(batch_size=16), CANVAS, torch.device("cpu")), lambda ids: None)
    np.testing.assert_array_equal(preds[:, :-1], canvases)
    [(ranked, _)] = vote(v, preds, conf, CANVAS, 2)
    sub, _ = build_submission({"t": {"test": [{"input": case["input"]}]}}, {("t", 0): [g for g, _, _ in ranked]})
    return sub["t"][0]


@needs_fixtures
def test_official_vote_attempts_match_with_the_two_documented_exceptions():
    cases = _load("vote.json.gz")
    assert len(cases) == 300
    exact = empty_skipped = single_fallback = 0
    for i, case in enumerate(cases):
        official, ours = case["official"], _our_entry(case)
        ranking = _official_ranking(case)
        # The oracle reproduces the official attempts (a single distinct grid fills both).
        assert [official["attempt_1"], official["attempt_2"]] == (ranking + ranking)[:2], i
        if [] not in ranking[:2] and len(ranking) >= 2:
            assert ours == official, i
            exact += 1
            continue
        # Exception 1: an empty grid never becomes an attempt; the next candidate moves up.
        # Exception 2: with one distinct (non-empty) grid, the second attempt is the writer's fallback.
        cands = [g for g in ranking if g != []]
        fallback = case["input"] if case["input"] not in cands[:1] else [[0]]
        expected = (cands + [fallback, [[0]]])[:2]
        assert ours == {"attempt_1": expected[0], "attempt_2": expected[1]}, i
        empty_skipped += [] in ranking[:2]
        single_fallback += len(cands) == 1
    assert empty_skipped == 16  # the fixture README: 16 official entries submit an empty grid
    assert exact > 200 and single_fallback > 0  # both paths are exercised


def test_official_vote_confidence_is_the_float64_sigmoid():
    """Two grids with one vote each and halting logits whose float32 sigmoids are both 1.0: only the float64
    sigmoid (official) ranks the second, more confident grid first."""
    a = encode_grid_ref(np.array([[1]]), 0, 0, CANVAS)
    b = encode_grid_ref(np.array([[2]]), 0, 0, CANVAS)
    hexs = ["".join("%x" % t for t in g) for g in (a, b)]
    case = {"input": [[5]], "q_halt_logits": [20.0, 25.0],
            "views": [{"tokens": h, "dihedral": 0, "perm": "0123456789"} for h in hexs]}
    assert _our_entry(case) == {"attempt_1": [[2]], "attempt_2": [[1]]}
