"""Metrics: hand-computed cases, and every vectorised retrieval metric against a slow loop."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.metrics import (
    _ranking,
    calibration_error,
    confused_pairs,
    coverage_scores,
    exact_matches,
    map_at_r,
    mean_average_precision,
    median_rank,
    pairing_scores,
    paper_map_at_r,
    recall_at_k,
    risk_coverage_curve,
)

# --------------------------------------------------------------------------- pairing


def test_pairing_scores_hand_computed() -> None:
    truth = {
        "a": ["黑色", "白色"],  # both right
        "b": ["黑色", "白色", "红色"],  # one wrong
        "c": [None, None],  # nothing known: not scored at all
        "d": ["蓝色"],  # missing from pred: all wrong
    }
    pred = {"a": ["黑色", "白色"], "b": ["黑色", "红色", "红色"], "c": ["黑色", "黑色"]}
    s = pairing_scores(pred, truth)
    assert s["images"] == 6 and s["correct"] == 4
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["products"] == 3 and s["exact"] == 1
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["missing_products"] == ["d"]
    assert s["per_size"] == {
        1: {"accuracy": 0.0, "exact_match": 0.0, "images": 1, "products": 1},
        2: {"accuracy": 1.0, "exact_match": 1.0, "images": 2, "products": 1},
        3: {"accuracy": pytest.approx(2 / 3), "exact_match": 0.0, "images": 3, "products": 1},
    }
    assert list(s["per_size"]) == [1, 2, 3]  # sorted by size


def test_pairing_empty_predictions_are_wrong_and_unknown_truth_is_skipped() -> None:
    truth = {"p": ["黑色", "白色", None, "红色"]}
    s = pairing_scores({"p": [None, "", "白色", "红色"]}, truth)
    assert (s["images"], s["correct"]) == (3, 1)  # the unknown image is not scored
    assert s["exact_match"] == 0.0
    assert s["per_size"][4]["images"] == 3  # size = the product's listed images
    # a product is exactly right when all its *known* images are right
    assert pairing_scores({"p": ["黑色", "白色", "乱", "红色"]}, truth)["exact_match"] == 1.0


def test_pairing_nothing_to_score_gives_none_not_nan() -> None:
    s = pairing_scores({}, {"p": [None, None]})
    assert s["accuracy"] is None and s["exact_match"] is None
    assert s["images"] == 0 and s["products"] == 0 and s["per_size"] == {}


def test_pairing_misaligned_lists_raise() -> None:
    with pytest.raises(ValueError, match="product p"):
        pairing_scores({"p": ["a"]}, {"p": ["a", "b"]})
    with pytest.raises(ValueError, match="product p"):
        confused_pairs({"p": ["a", "b", "c"]}, {"p": ["a", "b"]})


def test_confused_pairs_counts_orders_and_cuts() -> None:
    truth = {"1": ["黑", "白", "黑"], "2": ["黑", "红"], "3": ["白", "白"], "4": ["黑"]}
    pred = {"1": ["白", "白", "白"], "2": ["白", None], "3": ["黑", "红"]}  # "4" missing
    assert confused_pairs(pred, truth) == [
        ("黑", "白", 3),
        ("白", "红", 1),  # ties ordered by tag text
        ("白", "黑", 1),
    ]
    assert confused_pairs(pred, truth, top=1) == [("黑", "白", 3)]
    assert confused_pairs(pred, truth, top=0) == []
    assert confused_pairs(truth, truth) == []


# --------------------------------------------------------------------------- confidence

# ranking: a (0.9), then the tie b, c (0.8) by id, then d (no confidence: 0); e is unscored
CONF_TRUTH = {"a": ["黑", "白"], "b": ["红"], "c": ["黑", "白", "红"], "d": ["蓝"], "e": [None]}
CONF_PRED = {"a": ["黑", "白"], "b": ["白"], "c": ["黑", "白", "黑"], "e": ["黑"]}  # d missing
CONF = {"c": 0.8, "b": 0.8, "a": 0.9, "e": 0.99, "zz": 1.0}  # e, zz: not scored, ignored


def test_coverage_scores_hand_computed() -> None:
    rows = coverage_scores(CONF, CONF_PRED, CONF_TRUTH, levels=(0.1, 0.5, 0.7, 0.9, 1.0))
    # a: 2/2 right; b: 0/1; c: 2/3; d: 0/1 (missing)
    assert rows[0] == {"coverage": 0.1, "products": 1, "images": 2, "accuracy": 1.0,
                       "exact_match": 1.0, "min_confidence": 0.9}  # at least one product
    assert rows[1] == {"coverage": 0.5, "products": 2, "images": 3,  # a, b
                       "accuracy": pytest.approx(2 / 3), "exact_match": 0.5, "min_confidence": 0.8}
    assert rows[2] == {"coverage": 0.7, "products": 3, "images": 6,  # ceil(2.8): a, b, c
                       "accuracy": pytest.approx(4 / 6), "exact_match": pytest.approx(1 / 3),
                       "min_confidence": 0.8}
    full = {"products": 4, "images": 7, "accuracy": pytest.approx(4 / 7), "exact_match": 0.25,
            "min_confidence": 0.0}  # ceil(3.6) = 4; d ranks last with confidence 0
    assert rows[3] == {"coverage": 0.9, **full}
    assert rows[4] == {"coverage": 1.0, **full}
    # 0.7 * 10 is 7.000000000000001 in floating point: still 7 products, not 8
    ten = {f"p{i}": ["x"] for i in range(10)}
    assert coverage_scores({}, ten, ten, levels=(0.7,))[0]["products"] == 7


def test_coverage_ties_break_by_product_id_not_dict_order() -> None:
    truth = {"b": ["x"], "a": ["x"]}
    pred = {"b": ["x"], "a": ["y"]}  # a wrong, b right; same confidence: a comes first
    for conf in ({"a": 0.5, "b": 0.5}, {"b": 0.5, "a": 0.5}):
        assert coverage_scores(conf, pred, truth, levels=(0.5,))[0]["exact_match"] == 0.0
        assert risk_coverage_curve(conf, pred, truth)["risk"] == [1.0, 0.5]


def test_risk_coverage_curve_hand_computed() -> None:
    rc = risk_coverage_curve(CONF, CONF_PRED, CONF_TRUTH)
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    # exactly right in rank order: a yes, b no, c no, d no
    assert rc["risk"] == pytest.approx([0.0, 1 / 2, 2 / 3, 3 / 4])
    # correct / scored images so far: 2/2, 2/3, 4/6, 4/7
    assert rc["image_risk"] == pytest.approx([0.0, 1 / 3, 1 / 3, 3 / 7])
    assert rc["aurc"] == pytest.approx((0 + 1 / 2 + 2 / 3 + 3 / 4) / 4)  # 23/48
    assert risk_coverage_curve({}, {}, {"p": [None]}) == {
        "coverage": [], "risk": [], "image_risk": [], "aurc": None}


def test_exact_matches_are_the_scored_products() -> None:
    assert exact_matches(CONF_PRED, CONF_TRUTH) == {"a": True, "b": False, "c": False, "d": False}


def test_calibration_error_hand_computed() -> None:
    # a, b, c, d of the case above: confidences 0.9, 0.8, 0.8, 0; exactly right 1, 0, 0, 0
    cal = calibration_error([0.9, 0.8, 0.8, 0.0], [True, False, False, False])
    # bins [0.9, 1): gap |1 - 0.9| = 0.1 (1 product); [0.8, 0.9): |0 - 0.8| (2); [0, 0.1): 0 (1)
    assert cal["ece"] == pytest.approx(1 / 4 * 0.1 + 2 / 4 * 0.8)  # 0.425
    assert cal["mce"] == pytest.approx(0.8)
    assert cal["brier"] == pytest.approx((0.01 + 0.64 + 0.64 + 0.0) / 4)  # 0.3225
    assert [(b["lo"], b["count"]) for b in cal["bins"]] == [(0.0, 1), (0.8, 2), (0.9, 1)]
    assert cal["bins"][1] == {"lo": 0.8, "hi": 0.9, "count": 2, "mean_confidence": 0.8,
                              "accuracy": 0.0}
    # two bins: [0, 0.5) holds 0.0 (gap 0); [0.5, 1] holds the rest, mean 2.5/3, accuracy 1/3
    two = calibration_error([0.9, 0.8, 0.8, 0.0], [1, 0, 0, 0], bins=2)
    assert two["ece"] == pytest.approx(3 / 4 * (2.5 / 3 - 1 / 3))  # 0.375
    # a confidence of exactly 1.0 goes in the last bin
    top = calibration_error([1.0, 0.95], [1, 1])
    assert top["bins"] == [{"lo": 0.9, "hi": 1.0, "count": 2, "mean_confidence": 0.975,
                            "accuracy": 1.0}]
    assert top["ece"] == pytest.approx(0.025)
    assert calibration_error([], []) == {"ece": None, "mce": None, "brier": None, "bins": []}


def test_confidence_input_errors() -> None:
    with pytest.raises(ValueError, match="coverage level"):
        coverage_scores(CONF, CONF_PRED, CONF_TRUTH, levels=(0.0,))
    with pytest.raises(ValueError, match="confidence of a"):
        risk_coverage_curve({"a": float("nan")}, CONF_PRED, CONF_TRUTH)
    with pytest.raises(ValueError, match="confidence of a"):
        coverage_scores({"a": 1.5}, CONF_PRED, CONF_TRUTH)
    with pytest.raises(ValueError, match="2 confidences for 1 outcomes"):
        calibration_error([0.5, 0.5], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_error([-0.1], [1])
    with pytest.raises(ValueError, match="0/1"):
        calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="bins"):
        calibration_error([0.5], [1], bins=0)


ConfCase = tuple[dict[str, list[str | None]], dict[str, list[str | None]], dict[str, float]]


@st.composite
def confidence_case(draw: st.DrawFn) -> ConfCase:
    ids = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8))
    tag = st.sampled_from(["x", "y", None])
    truth = {pid: draw(st.lists(tag, min_size=1, max_size=3)) for pid in ids}
    pred = {pid: draw(st.lists(tag, min_size=len(t), max_size=len(t)))
            for pid, t in truth.items() if draw(st.integers(0, 3))}  # 1 in 4 missing
    # few distinct values so ties are common; some products have no confidence
    conf = {pid: draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])) for pid in ids if draw(st.booleans())}
    return truth, pred, conf


@settings(max_examples=100, deadline=None)
@given(confidence_case())
def test_full_coverage_is_the_overall_score(case: ConfCase) -> None:
    truth, pred, conf = case
    overall = pairing_scores(pred, truth)
    rows = coverage_scores(conf, pred, truth)
    full = rows[-1]
    assert full["coverage"] == 1.0
    for key in ("products", "images", "accuracy", "exact_match"):
        assert full[key] == overall[key]
    assert [r["products"] for r in rows] == sorted(r["products"] for r in rows)
    rc = risk_coverage_curve(conf, pred, truth)
    assert len(rc["risk"]) == overall["products"]
    if overall["products"]:
        assert rc["risk"][-1] == pytest.approx(1 - overall["exact_match"])
        assert rc["image_risk"][-1] == pytest.approx(1 - overall["accuracy"])
        assert 0.0 <= rc["aurc"] <= 1.0
        for r in rows:  # each level is one point of the curve
            assert rc["risk"][r["products"] - 1] == pytest.approx(1 - r["exact_match"])
        # the kept products' confidences fall as coverage grows
        mins = [r["min_confidence"] for r in rows]
        assert mins == sorted(mins, reverse=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), max_size=30),
       st.integers(1, 12))
def test_calibration_error_bounds(pairs: list[tuple[float, bool]], bins: int) -> None:
    conf = [c for c, _ in pairs]
    hit = [o for _, o in pairs]
    cal = calibration_error(conf, hit, bins)
    if not pairs:
        assert cal["ece"] is None
        return
    assert 0.0 <= cal["ece"] <= cal["mce"] + 1e-12 <= 1.0 + 1e-12
    assert 0.0 <= cal["brier"] <= 1.0
    assert sum(b["count"] for b in cal["bins"]) == len(pairs)
    # a confidence that equals its outcome is perfectly calibrated
    exact = calibration_error([float(o) for o in hit], hit, bins)
    assert exact["ece"] == 0.0 and exact["brier"] == 0.0


# --------------------------------------------------------------------------- retrieval

S_HAND = np.array([
    [0.9, 0.1, 0.5, 0.3],  # ranking 0, 2, 3, 1
    [0.2, 0.2, 0.8, 0.2],  # ranking 2, then the tied 0, 1, 3 by index
])


def test_recall_and_median_rank_hand_computed() -> None:
    relevant = [{2}, {1}]  # ranks 2 and 3
    assert recall_at_k(S_HAND, relevant, ks=(1, 2, 3, 10)) == {1: 0.0, 2: 50.0, 3: 100.0, 10: 100.0}
    assert median_rank(S_HAND, relevant) == 2.5
    # the best-ranked relevant item counts
    assert recall_at_k(S_HAND, [{1, 0}, {3, 2}], ks=(1,)) == {1: 100.0}
    assert median_rank(S_HAND, [{1, 0}, {3, 2}]) == 1.0


def test_ties_are_broken_by_item_index_and_nan_is_last() -> None:
    flat = np.ones((1, 3))
    assert median_rank(flat, [{2}]) == 3.0
    assert median_rank(flat, [{0, 2}]) == 1.0
    nan_first = np.array([[np.nan, 0.0, -np.inf]])
    # NaN counts as -inf: below 0.0, tied with the real -inf and so ordered by index
    assert median_rank(nan_first, [{1}]) == 1.0
    assert median_rank(nan_first, [{0}]) == 2.0
    assert median_rank(nan_first, [{2}]) == 3.0
    assert np.isnan(nan_first[0, 0])  # the caller's array is not modified


def test_map_at_r_hand_computed() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2)  # ranking 0..4 for both queries
    items = ["a", "b", "a", "a", "b"]
    # query "a": relevant at ranks 1, 3, 4 -> P@1 = 1, P@3 = 2/3, P@4 = 3/4
    assert map_at_r(scores[:1], ["a"], items, R=3) == pytest.approx((1 + 2 / 3) / 3)
    assert map_at_r(scores[:1], ["a"], items, R=5) == pytest.approx((1 + 2 / 3 + 3 / 4) / 5)
    # divides by R even past the end of the list
    assert map_at_r(scores[:1], ["a"], items, R=10) == pytest.approx((1 + 2 / 3 + 3 / 4) / 10)
    # R=None: each query's own number of relevant items (Musgrave et al.'s MAP@R)
    # query "b": relevant at ranks 2, 5; R_q = 2 -> only P@2 = 1/2 counts -> 0.25
    assert map_at_r(scores, ["a", "b"], items, R=None) == pytest.approx(
        ((1 + 2 / 3) / 3 + 0.5 / 2) / 2
    )
    assert map_at_r(scores[:1], ["a"], ["a", "a", "b", "b", "b"], R=2) == 1.0


def test_paper_map_at_r_hand_computed() -> None:
    """Aggarwal et al.'s eq. 5 divides by M, the relevant items found in the top R, not by R."""
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2)  # ranking 0..4 for both queries
    items = ["a", "b", "a", "a", "b"]
    # query "a": relevant at ranks 1, 3, 4 -> P@1 = 1, P@3 = 2/3, P@4 = 3/4
    assert paper_map_at_r(scores[:1], ["a"], items, R=3) == pytest.approx((1 + 2 / 3) / 2)  # M = 2
    assert paper_map_at_r(scores[:1], ["a"], items, R=50) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # query "b": relevant at ranks 2 and 5: nothing in the top 1 -> 0; top 2 -> P@2 / 1
    assert paper_map_at_r(scores[1:], ["b"], items, R=1) == 0.0
    assert paper_map_at_r(scores[1:], ["b"], items, R=2) == pytest.approx(0.5)
    # a category of 3 items found at the top reaches 1 at R = 50, where Musgrave's gives 3/50
    assert paper_map_at_r(scores[:1], ["a"], ["a", "a", "a", "b", "b"], R=50) == 1.0
    assert map_at_r(scores[:1], ["a"], ["a", "a", "a", "b", "b"], R=50) == pytest.approx(3 / 50)
    # one relevant item: the reciprocal rank, cut at R
    assert paper_map_at_r(scores[:1], relevant=[{3}], R=10) == pytest.approx(1 / 4)
    assert paper_map_at_r(scores[:1], relevant=[{3}], R=3) == 0.0


def test_mean_average_precision_hand_computed() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2)
    items = ["a", "b", "a", "a", "b"]
    ap_a = (1 + 2 / 3 + 3 / 4) / 3
    ap_b = (1 / 2 + 2 / 5) / 2
    assert mean_average_precision(scores, ["a", "b"], items) == pytest.approx((ap_a + ap_b) / 2)
    assert mean_average_precision(scores[:1], [1], [1, 0, 0, 0, 0]) == 1.0


def test_retrieval_input_errors() -> None:
    with pytest.raises(ValueError, match="query 1 has no relevant item"):
        recall_at_k(S_HAND, [{0}, set()])
    with pytest.raises(ValueError, match="out of range"):
        median_rank(S_HAND, [{0}, {4}])
    with pytest.raises(ValueError, match="2 queries"):
        recall_at_k(S_HAND, [{0}])
    with pytest.raises(ValueError, match="K must be >= 1"):
        recall_at_k(S_HAND, [{0}, {1}], ks=(0,))
    with pytest.raises(ValueError, match="2-D"):
        median_rank(np.zeros(3), [{0}])
    with pytest.raises(ValueError, match="no item with the same label"):
        map_at_r(S_HAND, ["a", "z"], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="labels must be 1-D"):
        mean_average_precision(S_HAND, ["a"], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="R must be >= 1"):
        map_at_r(S_HAND, ["a", "b"], ["a", "a", "b", "b"], R=0)


# --------------------------------------------------------------------------- slow references


def _order(row: list[float]) -> list[int]:
    """Reference ranking: descending score, NaN as -inf, ties by index."""
    key = [(-math.inf if math.isnan(v) else v) for v in row]
    return sorted(range(len(row)), key=lambda j: (-key[j], j))


def _ref_best_ranks(S: np.ndarray, relevant: list[set[int]]) -> list[int]:
    ranks = []
    for row, rel in zip(S.tolist(), relevant, strict=True):
        order = _order(row)
        ranks.append(min(order.index(j) + 1 for j in rel))
    return ranks


def _ref_precisions(row: list[float], qlabel: int, ilabels: list[int]) -> list[float]:
    """P@i * rel_i at every position i of the reference ranking."""
    rel = [ilabels[j] == qlabel for j in _order(row)]
    out, hits = [], 0
    for i, r in enumerate(rel, start=1):
        hits += r
        out.append(hits / i if r else 0.0)
    return out


def _ref_ap_at_r(row: list[float], qlabel: int, ilabels: list[int], R: int | None) -> float:
    n_rel = sum(label == qlabel for label in ilabels)
    r = n_rel if R is None else R
    return sum(_ref_precisions(row, qlabel, ilabels)[:r]) / r


def _ref_ap(row: list[float], qlabel: int, ilabels: list[int]) -> float:
    n_rel = sum(label == qlabel for label in ilabels)
    return sum(_ref_precisions(row, qlabel, ilabels)) / n_rel


Case = tuple[np.ndarray, list[set[int]], list[int], list[int]]


@st.composite
def retrieval_case(draw: st.DrawFn) -> Case:
    n_q = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 12))
    # few distinct values so ties are everywhere; NaN and infinities now and then
    values = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, np.nan, np.inf, -np.inf])
    S = np.array(draw(st.lists(st.lists(values, min_size=n_items, max_size=n_items),
                               min_size=n_q, max_size=n_q)), dtype=float)
    items = st.integers(0, n_items - 1)
    relevant = [draw(st.sets(items, min_size=1, max_size=n_items)) for _ in range(n_q)]
    item_labels = draw(st.lists(st.integers(0, 3), min_size=n_items, max_size=n_items))
    # each query's label is one some item has, so every query has a relevant item
    query_labels = [draw(st.sampled_from(item_labels)) for _ in range(n_q)]
    return S, relevant, item_labels, query_labels


@settings(max_examples=150, deadline=None)
@given(retrieval_case(), st.lists(st.integers(1, 14), min_size=1, max_size=4))
def test_recall_and_median_rank_match_slow_reference(case: Case, ks: list[int]) -> None:
    S, relevant, _, _ = case
    ranks = _ref_best_ranks(S, relevant)
    expected = {k: 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in ks}
    got = recall_at_k(S, relevant, ks)
    assert got.keys() == expected.keys()
    for k in ks:
        assert got[k] == pytest.approx(expected[k])
    assert median_rank(S, relevant) == pytest.approx(statistics.median(ranks))


@settings(max_examples=150, deadline=None)
@given(retrieval_case(), st.one_of(st.none(), st.integers(1, 15)))
def test_map_at_r_matches_slow_reference(case: Case, R: int | None) -> None:
    S, _, item_labels, query_labels = case
    rows = zip(S.tolist(), query_labels, strict=True)
    expected = statistics.fmean(_ref_ap_at_r(row, q, item_labels, R) for row, q in rows)
    assert map_at_r(S, query_labels, item_labels, R=R) == pytest.approx(expected)


def _ref_paper_ap(row: list[float], qlabel: int, ilabels: list[int], R: int) -> float:
    top = _ref_precisions(row, qlabel, ilabels)[:R]
    found = sum(ilabels[j] == qlabel for j in _order(row)[:R])
    return sum(top) / found if found else 0.0


@settings(max_examples=150, deadline=None)
@given(retrieval_case(), st.integers(1, 15))
def test_paper_map_at_r_matches_slow_reference(case: Case, R: int) -> None:
    S, _, item_labels, query_labels = case
    rows = zip(S.tolist(), query_labels, strict=True)
    expected = statistics.fmean(_ref_paper_ap(row, q, item_labels, R) for row, q in rows)
    assert paper_map_at_r(S, query_labels, item_labels, R=R) == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(retrieval_case())
def test_mean_average_precision_matches_slow_reference(case: Case) -> None:
    S, _, item_labels, query_labels = case
    expected = statistics.fmean(
        _ref_ap(row, q, item_labels) for row, q in zip(S.tolist(), query_labels, strict=True)
    )
    assert mean_average_precision(S, query_labels, item_labels) == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(retrieval_case(), st.integers(1, 12))
def test_top_k_ranking_matches_stable_sort_including_partition_path(case: Case, k: int) -> None:
    # small k against many items takes the partition-then-fix-ties path
    S = case[0]
    k = min(k, S.shape[1])
    clean = np.where(np.isnan(S), -np.inf, S)  # _ranking expects the cleaned matrix
    got = _ranking(clean, k)
    assert got.tolist() == [_order(row)[:k] for row in S.tolist()]


def test_large_matrix_with_heavy_ties_matches_reference() -> None:
    # many items and small k/R: the partition path, at a size hypothesis does not draw
    rng = np.random.default_rng(0)
    S = rng.integers(0, 4, size=(20, 300)).astype(float)
    item_labels = rng.integers(0, 5, size=300).tolist()
    query_labels = rng.integers(0, 5, size=20).tolist()
    for k in (1, 7, 50):
        assert _ranking(S, k).tolist() == [_order(row)[:k] for row in S.tolist()]
    rows = list(zip(S.tolist(), query_labels, strict=True))
    for R in (5, 50, None):
        expected = statistics.fmean(_ref_ap_at_r(row, q, item_labels, R) for row, q in rows)
        assert map_at_r(S, query_labels, item_labels, R=R) == pytest.approx(expected)
    relevant = [set(rng.choice(300, size=3, replace=False).tolist()) for _ in range(20)]
    ranks = _ref_best_ranks(S, relevant)
    assert recall_at_k(S, relevant, (1, 10)) == pytest.approx(
        {k: 100.0 * sum(r <= k for r in ranks) / 20 for k in (1, 10)}
    )
    assert median_rank(S, relevant) == statistics.median(ranks)
