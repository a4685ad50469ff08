"""Evaluation metrics: pairing (Acc, EM), pairing confidence (scores at a coverage, the
risk-coverage curve and AURC, calibration error) and retrieval (R@K, median rank, mAP@R in both
its definitions -- Musgrave et al.'s and Aggarwal et al.'s -- and mAP).

All functions are pure: plain data or arrays in, plain numbers out.

Pairing fractions (``accuracy``, ``exact_match``) are in [0, 1]; retrieval recall is in
percent (0-100), as retrieval papers report it. An undefined score (nothing to score) is
``None`` rather than NaN, so results stay valid JSON.

Ranking convention for the retrieval metrics: items are ranked by descending score; equal
scores keep the order of the item index (a stable sort, lower index first); NaN scores are
treated as ``-inf``, so they rank last, tied (by index) with any real ``-inf``. Each metric thus
gives one well-defined number for any input, ties included, and the tests compare each one
against a plain-Python loop over ``sorted(range(n), key=lambda j: (-score[j], j))``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Tags = Sequence[str | None]


# --------------------------------------------------------------------------- pairing


def _known(tag: str | None) -> bool:
    return tag is not None and tag != ""


def pairing_scores(pred: Mapping[str, Tags], truth: Mapping[str, Tags]) -> dict[str, Any]:
    """Score predicted tags against true tags, both ``{product_id: [tag per image]}``.

    The lists are aligned by position (image ``k`` of a product in both). Only images with a
    known true tag (not None/"") are scored; a product with no known image is not counted.

    * ``accuracy``: correct images / scored images.
    * ``exact_match``: products whose scored images are all correct / scored products.
    * ``images``, ``correct``, ``products``, ``exact``: the counts behind those fractions.
    * ``per_size``: ``{n_images: {"accuracy", "exact_match", "images", "products"}}``, where
      ``n_images`` is the length of the product's truth list (its size as listed).
    * ``missing_products``: sorted ids of scored products absent from ``pred``; their
      images all count as wrong.

    A prediction of None or "" is wrong. A pred list whose length differs from the truth
    list raises ``ValueError``: the lists must be aligned first (see ``emit.pairing.report``),
    because guessing an alignment here would silently change the score.
    """
    images = correct = products = exact = 0
    missing: list[str] = []
    by_size: dict[int, list[int]] = {}  # size -> [images, correct, products, exact]
    for pid, true_tags in truth.items():
        n_scored, hits = _product_hits(pid, pred.get(pid), true_tags)
        if not n_scored:
            continue
        if pid not in pred:
            missing.append(pid)
        all_right = int(hits == n_scored)
        images += n_scored
        correct += hits
        products += 1
        exact += all_right
        row = by_size.setdefault(len(true_tags), [0, 0, 0, 0])
        row[0] += n_scored
        row[1] += hits
        row[2] += 1
        row[3] += all_right
    per_size = {
        size: {
            "accuracy": _ratio(c, n),
            "exact_match": _ratio(e, p),
            "images": n,
            "products": p,
        }
        for size, (n, c, p, e) in sorted(by_size.items())
    }
    return {
        "accuracy": _ratio(correct, images),
        "exact_match": _ratio(exact, products),
        "images": images,
        "correct": correct,
        "products": products,
        "exact": exact,
        "per_size": per_size,
        "missing_products": sorted(missing),
    }


def _product_hits(pid: str, pred_tags: Tags | None, true_tags: Tags) -> tuple[int, int]:
    """(scored images, correct images) of one product; an absent prediction gets no hit."""
    scored = [k for k, t in enumerate(true_tags) if _known(t)]
    if not scored or pred_tags is None:
        return len(scored), 0
    if len(pred_tags) != len(true_tags):
        raise ValueError(
            f"product {pid}: {len(pred_tags)} predicted tags for {len(true_tags)} images; "
            "align predictions to the truth images first"
        )
    return len(scored), sum(1 for k in scored if _known(pred_tags[k]) and pred_tags[k] == true_tags[k])


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def exact_matches(pred: Mapping[str, Tags], truth: Mapping[str, Tags]) -> dict[str, bool]:
    """``{product_id: all its scored images right}`` for every product :func:`pairing_scores`
    counts (one with a known true tag), in the truth's order; an absent product is False."""
    out: dict[str, bool] = {}
    for pid, true_tags in truth.items():
        n_scored, hits = _product_hits(pid, pred.get(pid), true_tags)
        if n_scored:
            out[pid] = hits == n_scored
    return out


def confused_pairs(
    pred: Mapping[str, Tags], truth: Mapping[str, Tags], top: int = 20
) -> list[tuple[str, str, int]]:
    """The ``top`` most frequent ``(true_tag, predicted_tag, count)`` confusions.

    Only wrong, non-empty predictions of images with a known true tag count; missing
    predictions (None/"" or absent products) are not confusions and show up in
    :func:`pairing_scores` instead. Ties in count are ordered by the tag texts so the list
    is deterministic. Lists are aligned by position, as in :func:`pairing_scores`.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for pid, true_tags in truth.items():
        pred_tags = pred.get(pid)
        if pred_tags is None:
            continue
        if len(pred_tags) != len(true_tags):
            raise ValueError(
                f"product {pid}: {len(pred_tags)} predicted tags for {len(true_tags)} images; "
                "align predictions to the truth images first"
            )
        for t, p in zip(true_tags, pred_tags, strict=True):
            if _known(t) and _known(p) and p != t:
                counts[(str(t), str(p))] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(t, p, n) for (t, p), n in ranked[: max(top, 0)]]


# --------------------------------------------------------------------------- confidence
# A confidence is a calibrated probability that *all* of a product's images are tagged right,
# so it is judged against exact match. Products are ranked most confident first, ties by
# product id (so the ranking never depends on dict order); a scored product with no confidence
# entry ranks as confidence 0, least confident: a missing score must not help it.

COVERAGE_LEVELS = (0.5, 0.7, 0.9, 1.0)


def _check_confidence(pid: object, value: float) -> float:
    c = float(value)
    if not 0.0 <= c <= 1.0:  # False for NaN too
        raise ValueError(f"confidence of {pid} is {value!r}, not a number in [0, 1]")
    return c


def _ranked(
    confidence: Mapping[str, float], truth: Mapping[str, Tags]
) -> list[tuple[str, float]]:
    """Scored products (a known true tag) with their confidence, most confident first."""
    scored = [pid for pid, tags in truth.items() if any(_known(t) for t in tags)]
    conf = {pid: _check_confidence(pid, confidence.get(pid, 0.0)) for pid in scored}
    return sorted(conf.items(), key=lambda kv: (-kv[1], kv[0]))


def _kept(level: float, n: int) -> int:
    """Products kept at coverage ``level`` of ``n``: ceil(level * n), at least 1 when n > 0."""
    if not 0.0 < level <= 1.0:
        raise ValueError(f"coverage level must be in (0, 1], got {level!r}")
    # the tolerance keeps 0.7 * 10 = 7.000000000000001 at 7 products, not 8
    return min(n, max(1, math.ceil(level * n - 1e-9))) if n else 0


def coverage_scores(
    confidence: Mapping[str, float],
    pred: Mapping[str, Tags],
    truth: Mapping[str, Tags],
    levels: Sequence[float] = COVERAGE_LEVELS,
) -> list[dict[str, Any]]:
    """Scores of the most confident products only, one row per coverage level.

    For each level ``f`` in (0, 1], the ``ceil(f * N)`` most confident of the ``N`` scored
    products (at least 1 when ``N > 0``) are scored with :func:`pairing_scores`; the row is
    ``{"coverage": f, "products", "images", "accuracy", "exact_match", "min_confidence"}``,
    ``min_confidence`` being the confidence of the last product kept (None when ``N == 0``).
    Ranking as in the section comment: most confident first, ties by product id, a missing
    confidence counts as 0. A confidence outside [0, 1] (or NaN) raises ``ValueError``.
    """
    ranked = _ranked(confidence, truth)
    rows: list[dict[str, Any]] = []
    for level in levels:
        k = _kept(float(level), len(ranked))
        keep = [pid for pid, _ in ranked[:k]]
        s = pairing_scores({pid: pred[pid] for pid in keep if pid in pred},
                           {pid: truth[pid] for pid in keep})
        rows.append({
            "coverage": float(level),
            "products": s["products"],
            "images": s["images"],
            "accuracy": s["accuracy"],
            "exact_match": s["exact_match"],
            "min_confidence": ranked[k - 1][1] if k else None,
        })
    return rows


def risk_coverage_curve(
    confidence: Mapping[str, float], pred: Mapping[str, Tags], truth: Mapping[str, Tags]
) -> dict[str, Any]:
    """The risk-coverage curve of the scored products, most confident first.

    For ``k = 1..N``: ``coverage[k-1] = k / N``, ``risk[k-1]`` = 1 - exact match of the top
    ``k`` products and ``image_risk[k-1]`` = 1 - accuracy over their images. ``aurc`` is the
    mean of ``risk``, the area under the curve (lower is better: the confidence puts the
    wrong products last); None when nothing is scored. Ranking as in :func:`coverage_scores`.
    """
    ranked = _ranked(confidence, truth)
    if not ranked:
        return {"coverage": [], "risk": [], "image_risk": [], "aurc": None}
    counts = np.array([_product_hits(pid, pred.get(pid), truth[pid]) for pid, _ in ranked],
                      dtype=np.int64)  # (scored images, correct images) per product
    n = len(ranked)
    k = np.arange(1, n + 1)
    exact = np.cumsum(counts[:, 1] == counts[:, 0])
    risk = 1.0 - exact / k
    image_risk = 1.0 - np.cumsum(counts[:, 1]) / np.cumsum(counts[:, 0])
    return {
        "coverage": (k / n).tolist(),
        "risk": risk.tolist(),
        "image_risk": image_risk.tolist(),
        "aurc": float(risk.mean()),
    }


def calibration_error(
    confidence: Sequence[float], outcome: Sequence[bool | int], bins: int = 10
) -> dict[str, Any]:
    """How well confidences match outcomes (1 = the product is exactly right, 0 = not).

    Confidences fall in ``bins`` equal-width bins over [0, 1]: bin ``i`` holds
    ``[i/bins, (i+1)/bins)``, and a confidence of exactly 1.0 goes in the last bin.
    ``ece`` is the expected calibration error, sum over bins of (count / n) *
    |accuracy - mean confidence|; ``mce`` the largest such gap of a non-empty bin; ``brier``
    the mean of (confidence - outcome)^2. ``bins`` lists the non-empty bins as
    ``{"lo", "hi", "count", "mean_confidence", "accuracy"}``. With no input every score is
    None. A confidence outside [0, 1] or an outcome other than 0/1 raises ``ValueError``.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    bins = int(bins)
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    o = np.asarray(outcome, dtype=np.float64).reshape(-1)
    if c.shape != o.shape:
        raise ValueError(f"{c.size} confidences for {o.size} outcomes")
    if not np.all((c >= 0.0) & (c <= 1.0)):  # False for NaN too
        raise ValueError("every confidence must be a number in [0, 1]")
    if not np.all((o == 0.0) | (o == 1.0)):
        raise ValueError("every outcome must be 0/1 (or False/True)")
    if c.size == 0:
        return {"ece": None, "mce": None, "brier": None, "bins": []}
    idx = np.minimum((c * bins).astype(np.int64), bins - 1)  # 1.0 -> the last bin
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=c, minlength=bins)
    hit_sum = np.bincount(idx, weights=o, minlength=bins)
    rows: list[dict[str, Any]] = []
    ece = mce = 0.0
    for i in np.flatnonzero(count):
        mean_c, acc = conf_sum[i] / count[i], hit_sum[i] / count[i]
        gap = abs(acc - mean_c)
        ece += count[i] / c.size * gap
        mce = max(mce, gap)
        rows.append({"lo": i / bins, "hi": (i + 1) / bins, "count": int(count[i]),
                     "mean_confidence": float(mean_c), "accuracy": float(acc)})
    return {"ece": float(ece), "mce": float(mce), "brier": float(np.mean((c - o) ** 2)),
            "bins": rows}


# --------------------------------------------------------------------------- retrieval


def _scores(S: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Validate and copy ``S`` as float64 with NaN -> -inf (ranked last, see module doc)."""
    arr = np.array(S, dtype=np.float64)  # a copy: callers' arrays are never modified
    if arr.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (queries x items), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"similarity matrix is empty (shape {arr.shape})")
    arr[np.isnan(arr)] = -np.inf
    return arr


def _relevance_mask(
    relevant: Sequence[Iterable[int]], shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    n_q, n_items = shape
    if len(relevant) != n_q:
        raise ValueError(f"{len(relevant)} relevance sets for {n_q} queries")
    mask = np.zeros(shape, dtype=bool)
    for q, items in enumerate(relevant):
        idx = np.fromiter((int(i) for i in items), dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"query {q} has no relevant item; drop it before scoring")
        if idx.min() < 0 or idx.max() >= n_items:
            raise ValueError(f"query {q}: relevant item index out of range 0..{n_items - 1}")
        mask[q, idx] = True
    return mask


def _label_mask(
    query_labels: npt.ArrayLike, item_labels: npt.ArrayLike, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    ql = np.asarray(query_labels)
    il = np.asarray(item_labels)
    if ql.shape != (shape[0],) or il.shape != (shape[1],):
        raise ValueError(
            f"labels must be 1-D with {shape[0]} query and {shape[1]} item entries, "
            f"got shapes {ql.shape} and {il.shape}"
        )
    mask = np.asarray(ql[:, None] == il[None, :], dtype=bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} query(ies) have no item with the same label (first: query {empty[0]}); "
            "drop them before scoring"
        )
    return mask


def _best_ranks(s: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """1-based rank of the best-ranked relevant item of each query, without sorting.

    The best relevant item ``j`` has the highest relevant score ``m`` (lowest index among
    ties); its rank is 1 + #items scoring above ``m`` + #items scoring ``m`` with a lower
    index. This is O(queries x items) and follows the stable tie rule exactly.
    """
    m = np.where(mask, s, -np.inf).max(axis=1, keepdims=True)
    at_m = s == m  # every row has a relevant item here, even when m is -inf
    j = np.argmax(mask & at_m, axis=1)  # argmax returns the first True: lowest index
    before = np.arange(s.shape[1])[None, :] < j[:, None]
    return 1 + (s > m).sum(axis=1) + (at_m & before).sum(axis=1)


def _ranking(s: npt.NDArray[np.float64], k: int | None = None) -> npt.NDArray[np.int64]:
    """Item indices of each query's top ``k`` (all if None), best first, ties by index.

    For a short top-k, ``np.partition`` finds each row's k-th best score ``t``; the top k
    are then every item scoring above ``t`` plus the lowest-index items scoring exactly
    ``t`` (partitioning alone would pick among ties arbitrarily). Only those k are sorted.
    """
    n_q, n_items = s.shape
    if k is None or k >= n_items // 2:  # a full sort is as cheap; slice it
        order = np.argsort(-s, axis=1, kind="stable")
        return order if k is None else order[:, :k]
    t = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # k-th best score per row
    above = s > t
    ties = s == t
    need = k - above.sum(axis=1, keepdims=True)  # >= 1: the k-th item itself scores t
    take = above | (ties & (np.cumsum(ties, axis=1, dtype=np.int64) <= need))
    idx = np.nonzero(take)[1].reshape(n_q, k)  # row-major: indices ascend within a row
    local = np.argsort(-np.take_along_axis(s, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, local, axis=1)


def recall_at_k(
    S: npt.ArrayLike, relevant: Sequence[Iterable[int]], ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[int, float]:
    """Recall@K in percent: share of queries with any relevant item in their top K.

    ``S`` is queries x items (higher = better); ``relevant[q]`` holds the item indices
    relevant to query ``q`` (at least one each). K larger than the item count means the
    whole list, so every query hits.
    """
    arr = _scores(S)
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")
    ranks = _best_ranks(arr, _relevance_mask(relevant, arr.shape))
    return {k: float(100.0 * np.mean(ranks <= k)) for k in ks}


def median_rank(S: npt.ArrayLike, relevant: Sequence[Iterable[int]]) -> float:
    """Median over queries of the 1-based rank of the best-ranked relevant item."""
    arr = _scores(S)
    return float(np.median(_best_ranks(arr, _relevance_mask(relevant, arr.shape))))


def _mask(
    arr: npt.NDArray[np.float64], query_labels: npt.ArrayLike | None, item_labels: npt.ArrayLike | None,
    relevant: Sequence[Iterable[int]] | None,
) -> npt.NDArray[np.bool_]:
    if relevant is not None:
        if query_labels is not None or item_labels is not None:
            raise ValueError("give either labels or relevant sets, not both")
        return _relevance_mask(relevant, arr.shape)
    if query_labels is None or item_labels is None:
        raise ValueError("give query and item labels, or relevant sets")
    return _label_mask(query_labels, item_labels, arr.shape)


def map_at_r(
    S: npt.ArrayLike, query_labels: npt.ArrayLike | None = None, item_labels: npt.ArrayLike | None = None,
    R: int | None = 50, *, relevant: Sequence[Iterable[int]] | None = None,
) -> float:
    """Mean over queries of AP@R = (1/R) * sum_{i<=R} P@i * rel_i (Musgrave et al. 2020).

    An item is relevant to a query when their labels are equal. The sum divides by R even
    when a query has fewer than R relevant items (or fewer than R items exist), so such a
    query cannot reach 1; that is the definition, not a bug. ``R=None`` uses each query's
    own number of relevant items as its R, which is the paper's MAP@R exactly. (When
    queries are also items, the caller must remove each query's own item, as the paper does.)
    Instead of labels, ``relevant[q]`` may list the items relevant to query ``q``.
    Returned as a fraction in [0, 1].
    """
    arr = _scores(S)
    mask = _mask(arr, query_labels, item_labels, relevant)
    n_rel = mask.sum(axis=1)
    if R is None:
        r_q = n_rel
    else:
        if int(R) < 1:
            raise ValueError(f"R must be >= 1, got {R}")
        r_q = np.full(arr.shape[0], int(R))
    depth = int(min(r_q.max(), arr.shape[1]))
    order = _ranking(arr, depth)
    rel = np.take_along_axis(mask, order, axis=1)  # queries x depth
    pos = np.arange(1, depth + 1)
    prec = np.cumsum(rel, axis=1) / pos  # P@i
    within = pos[None, :] <= r_q[:, None]  # per-query cut-off when R varies
    ap = (prec * rel * within).sum(axis=1) / r_q
    return float(ap.mean())


def paper_map_at_r(
    S: npt.ArrayLike, query_labels: npt.ArrayLike | None = None, item_labels: npt.ArrayLike | None = None,
    R: int = 50, *, relevant: Sequence[Iterable[int]] | None = None,
) -> float:
    """Mean over queries of Aggarwal et al. 2019's AP (their eq. 5, "mAP@50" in their table):
    ``(1/M) * sum_{r<=R} p(r) * rel(r)``, where M is the number of relevant items retrieved in
    the top R (a query with none scores 0).

    Unlike :func:`map_at_r` (Musgrave et al.'s MAP@R, which divides by R), it divides by what
    was found, so a category with fewer than R items can still reach 1. With one relevant item
    it is the reciprocal rank, cut at R. Relevance as in :func:`map_at_r`; a fraction in [0, 1].
    """
    arr = _scores(S)
    if int(R) < 1:
        raise ValueError(f"R must be >= 1, got {R}")
    mask = _mask(arr, query_labels, item_labels, relevant)
    depth = int(min(int(R), arr.shape[1]))
    rel = np.take_along_axis(mask, _ranking(arr, depth), axis=1)  # queries x depth
    prec = np.cumsum(rel, axis=1) / np.arange(1, depth + 1)
    found = rel.sum(axis=1)
    ap = np.divide((prec * rel).sum(axis=1), found, out=np.zeros(arr.shape[0]), where=found > 0)
    return float(ap.mean())


def mean_average_precision(
    S: npt.ArrayLike, query_labels: npt.ArrayLike | None = None, item_labels: npt.ArrayLike | None = None,
    *, relevant: Sequence[Iterable[int]] | None = None,
) -> float:
    """Mean over queries of full-ranking AP = (1/#relevant) * sum_i P@i * rel_i.

    Relevance = same label, or the items listed in ``relevant[q]``. Returned as a fraction in [0, 1].
    """
    arr = _scores(S)
    mask = _mask(arr, query_labels, item_labels, relevant)
    rel = np.take_along_axis(mask, _ranking(arr), axis=1)
    prec = np.cumsum(rel, axis=1) / np.arange(1, arr.shape[1] + 1)
    ap = (prec * rel).sum(axis=1) / rel.sum(axis=1)
    return float(ap.mean())
