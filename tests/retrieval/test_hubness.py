"""Hubness correction: the bias against a slow loop, its effect on rankings and reports, the
folded index against the explicit formula, and the run's bank on disk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.problems import EmitError
from emit.retrieval.distances import score_matrix
from emit.retrieval.evaluate import evaluate_embeddings
from emit.retrieval.fold import apply_bias, fold_candidates, fold_queries
from emit.retrieval.hubness import (
    HubnessBank,
    bank_bias,
    biases,
    build_bank,
    corrects,
    describe,
    resolve,
)
from emit.retrieval.layout import BANK_FILE


def slow_bias(candidates: np.ndarray, bank: np.ndarray, beta: float, metric: str) -> np.ndarray:
    """(1/beta) log sum_b exp(beta s(b, c)), one pair at a time (max-shifted so exp cannot overflow)."""
    out = []
    for c in candidates.astype(np.float64):
        scores = []
        for b in bank.astype(np.float64):
            scores.append(float(c @ b) if metric == "ip" else -float(((c - b) ** 2).sum()))
        top = max(scores)
        out.append(top + math.log(sum(math.exp(beta * (s - top)) for s in scores)) / beta)
    return np.array(out)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("chunk", [1, 3, 2048])
def test_bias_matches_a_slow_loop(metric: str, chunk: int) -> None:
    rng = np.random.default_rng(0)
    candidates = rng.standard_normal((7, 5)).astype(np.float32)
    bank = rng.standard_normal((11, 5)).astype(np.float32)
    for beta in (0.5, 20.0):
        got = bank_bias(candidates, bank, beta=beta, metric=metric, chunk=chunk)
        np.testing.assert_allclose(got, slow_bias(candidates, bank, beta, metric), rtol=1e-9, atol=1e-9)


def test_bias_limits_and_errors() -> None:
    # large beta: the best bank score; a bank of one: exactly that score
    c = np.array([[1.0, 0.0]], dtype=np.float32)
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    assert bank_bias(c, bank, beta=1e4, metric="ip")[0] == pytest.approx(1.0, abs=1e-3)
    assert bank_bias(c, bank[1:2], beta=3.0, metric="ip")[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(EmitError, match="beta must be positive"):
        bank_bias(c, bank, beta=0.0)
    for bad in (-1.0, math.inf, math.nan):  # inf gave NaN biases and "beta": Infinity in the JSON
        with pytest.raises(EmitError, match="--hubness-beta"):
            bank_bias(c, bank, beta=bad)
    with pytest.raises(EmitError, match="empty"):
        bank_bias(c, bank[:0], beta=1.0)
    with pytest.raises(EmitError, match=r"\(N, D\) and \(M, D\)"):
        bank_bias(c, np.zeros((2, 3), np.float32))


def test_directions_pick_the_side_they_correct() -> None:
    assert corrects("image_to_text", "texts") and not corrects("image_to_text", "images")
    assert corrects("text_to_image", "images") and not corrects("text_to_image", "texts")
    assert corrects("both", "texts") and corrects("both", "images") and not corrects("none", "texts")
    with pytest.raises(EmitError, match="unknown hubness direction"):
        corrects("sideways", "texts")
    with pytest.raises(EmitError, match="needs a bank"):
        biases(np.zeros((1, 2)), np.zeros((1, 2)), None, "both")
    # 'auto' is measured for cosine models only
    assert resolve("auto", "ip") == "both" and resolve("auto", "l2") == "none"
    assert resolve("image_to_text", "l2") == "image_to_text"
    assert biases(np.zeros((1, 2)), np.zeros((1, 2)), None, "auto", metric="l2") == (None, None)
    assert describe(None, "none", 20.0) == {"direction": "none"}


@settings(max_examples=60, deadline=None)
@given(scores=arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 8)),
                     elements=st.floats(-10, 10, allow_nan=False)),
       constant=st.floats(-100, 100, allow_nan=False))
def test_an_equal_bias_for_every_candidate_changes_no_ranking(scores: np.ndarray, constant: float) -> None:
    corrected = apply_bias(scores, np.full(scores.shape[1], constant))
    np.testing.assert_array_equal(np.argsort(-corrected, axis=1, kind="stable"),
                                  np.argsort(-(scores - constant), axis=1, kind="stable"))
    np.testing.assert_allclose(corrected, scores - constant)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), metric=st.sampled_from(["ip", "l2"]), k=st.integers(1, 9),
       spread=st.floats(0.0, 5.0))
def test_the_folded_index_ranks_by_the_explicit_formula(seed: int, metric: str, k: int,
                                                         spread: float) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    from emit.retrieval.index import build_index, recall_against_exact

    rng = np.random.default_rng(seed)
    candidates = rng.standard_normal((9, 4)).astype(np.float32)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(9) * spread
    explicit = apply_bias(score_matrix(queries, candidates, metric), bias)  # higher = better
    index = build_index(candidates, [f"c{i}" for i in range(9)], metric=metric, bias=bias,
                        hubness={"beta": 1.0})
    scores, rows = index.search_positions(queries, k)
    # the k best corrected scores, in order (compared as scores: near-ties may swap rows)
    best = -np.sort(-explicit, axis=1)[:, :k]
    reported = scores if metric == "ip" else -scores  # l2 reports distance + bias
    np.testing.assert_allclose(reported, best, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(explicit, rows, axis=1), best, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(index.bias(), bias, atol=1e-3)
    np.testing.assert_allclose(index.vectors(), candidates, atol=1e-6)
    assert recall_against_exact(index, queries, k) == pytest.approx(1.0)  # exact against itself
    if metric == "ip":  # the plain scores are still there for queries of the rows' own modality
        plain, _ = index.search_positions(queries, k, corrected=False)
        np.testing.assert_allclose(plain, -np.sort(-(queries @ candidates.T), axis=1)[:, :k], atol=1e-4)
    else:
        with pytest.raises(EmitError, match="--hubness none"):
            index.search_positions(queries, k, corrected=False)


def test_fold_shapes() -> None:
    x, shift = fold_candidates(np.eye(2), [0.5, -1.0], "l2")
    assert shift == 1.0 and x.shape == (2, 3) and np.allclose(x[:, 2] ** 2, [1.5, 0.0])
    assert fold_queries(np.ones(2), "ip").tolist() == [[1.0, 1.0, 1.0]]
    assert fold_queries(np.ones(2), "ip", corrected=False).tolist() == [[1.0, 1.0, 0.0]]


def test_evaluation_corrects_one_direction_only() -> None:
    # Image I0 has captions c0 and c1, I1 has c2. Caption c1 is a hub: it sits close to both
    # images, so it wins image -> text for I1, although it belongs to I0.
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [0.75, 0.66], [0.2, 0.6]])
    of = [0, 0, 1]
    plain = evaluate_embeddings(texts, images, of, metric="ip")
    assert plain["image_to_text"]["R@1"] == 50.0  # I1 ranks the hub c1 first
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])  # typical image queries
    text_bias = bank_bias(texts, bank, beta=10.0, metric="ip")
    fixed = evaluate_embeddings(texts, images, of, metric="ip", text_bias=text_bias)
    assert fixed["image_to_text"]["R@1"] == 100.0
    assert fixed["text_to_image"] == plain["text_to_image"]  # a per-text bias cannot reorder a text's images
    # the image-side bias leaves image -> text alone
    image_bias = bank_bias(images, texts, beta=10.0, metric="ip")
    other = evaluate_embeddings(texts, images, of, metric="ip", image_bias=image_bias)
    assert other["image_to_text"] == plain["image_to_text"]
    with pytest.raises(EmitError, match="one bias per column"):
        evaluate_embeddings(texts, images, of, metric="ip", text_bias=[1.0])


class _Model:
    """What the bank needs of a RetrievalModel: vectors and an identity."""

    def __init__(self, name: str = "m") -> None:
        self.name = name

    def image_vectors(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) * 2

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    def identity(self) -> dict:
        return {"name": self.name}


def test_bank_keeps_training_rows_round_trips_and_refuses_another_model(tmp_path: Path) -> None:
    model = _Model()
    feats = np.arange(20, dtype=np.float32).reshape(10, 2)
    bank = build_bank(model, feats, [3, 1, 3, 7], ["a cat", "a dog", "a cat"])  # type: ignore[arg-type]
    np.testing.assert_array_equal(bank.images, feats[[1, 3, 7]] * 2)  # each training image once
    assert bank.texts.tolist() == [[5, 2], [5, 1]]  # each distinct text once
    small = build_bank(model, feats, range(10), [f"t{i}" for i in range(10)], max_rows=4)  # type: ignore[arg-type]
    assert small.images.shape == (4, 2) and small.texts.shape == (4, 2)
    bank.save(tmp_path)
    back = HubnessBank.load(tmp_path, model)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.images, bank.images)
    assert back.identity() == bank.identity() and back.identity()["images"] == 3
    with pytest.raises(EmitError, match="another model"):
        HubnessBank.load(tmp_path, _Model("other"))  # type: ignore[arg-type]
    (tmp_path / BANK_FILE).unlink()
    with pytest.raises(EmitError, match="Rerun the same `emit retrieval train`"):
        HubnessBank.load(tmp_path, model)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_take_the_folded_rows(kind: str) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    from emit.retrieval.index import build_index, recall_against_exact

    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    bias = rng.standard_normal(400) * 0.3
    params = {"nlist": 4, "nprobe": 4} if kind == "ivf" else {}  # IVF visiting every list is exact
    index = build_index(x, [str(i) for i in range(400)], kind, "ip", bias=bias, hubness={"beta": 1.0},
                        **params)
    assert recall_against_exact(index, q, 5) >= (1.0 if kind == "ivf" else 0.9)
    _, rows = index.search_positions(q, 1)
    best = np.argmax(apply_bias(q @ x.T, bias), axis=1)
    assert (rows[:, 0] == best).mean() >= (1.0 if kind == "ivf" else 0.9)
