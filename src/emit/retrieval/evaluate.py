"""Evaluate a retrieval model on captions: both directions, R@K, median rank, mAP@R, mAP.

* text -> image: each caption ranks all images; its own image is the one relevant item.
* image -> text: each image ranks all captions; it is a hit at K if ANY of its captions is in
  its top K, and its rank is that of its best-ranked caption.

When the caption texts are given (:func:`evaluate_model` and :func:`evaluate_captions` always
give them), identical texts (case and spacing folded, :func:`text_groups`) are one query: text
-> image ranks each distinct text once, with every image of any of its copies relevant, and
image -> text counts every copy of the image's texts as relevant.

R@K (K = 1, 5, 10, 20, in percent) and the median rank come from :mod:`emit.metrics`.

mAP@R comes in two definitions, both reported and each named: ``map_at_r`` is Musgrave et
al.'s MAP@R (divides by R, so a category with fewer than R items cannot reach 1) and
``map_at_r_paper`` is Aggarwal et al.'s eq. 5, the mAP@50 of their table (divides by the number
M of relevant items found in the top R). Compare with the paper using the second.

mAP@R and full-ranking mAP need a notion of relevance beyond "the same image":

* when the captions have categories (Pascal sentences, product sub-categories), an item is
  relevant to a query of the same category, and mAP@R uses a fixed R (50): AP@R =
  (1/R) sum_{i<=R} P@i rel_i (Musgrave et al. 2020). An image's category is the most common one
  among its captions. Queries without a category, or whose category no item has, are left out
  of these two numbers (the report counts them). Each distinct text is one query (text ->
  image) and one item (image -> text), with the most common category of its copies;
* otherwise relevance is as for R@K (the same image, or any image of a copy of the text), and
  R is each query's own number of relevant items (1 for a caption of one image; for image ->
  text, its captions and their copies), since a fixed R = 50 with one relevant item would cap
  AP@R at 1/50.

Scores are the model's (:func:`emit.retrieval.distances.score_matrix`): ``-||t - v||^2`` for
the paper's squared distance (``metric='l2'``), the inner product of unit vectors for ``'ip'``.
:func:`write_evaluation` writes one JSON report and one PNG plot
(:func:`emit.plots.plot_evaluation`), each atomically.

During training, :func:`score_validation` scores each epoch on the held-out validation split:
text -> image R@1/5/10 and the median rank per task, and their mean, which picks the epoch kept.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emit.data.captions import Caption, image_indices
from emit.files import atomic_write_bytes, atomic_write_json
from emit.metrics import map_at_r, mean_average_precision, median_rank, paper_map_at_r, recall_at_k
from emit.plots import plot_evaluation
from emit.problems import EmitError
from emit.retrieval.distances import score_matrix, text_groups
from emit.retrieval.fold import apply_bias
from emit.retrieval.hubness import DEFAULT_BETA, HubnessBank, biases, describe, resolve
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs

KS = (1, 5, 10, 20)
VAL_KS = (1, 5, 10)  # R@K of the validation split during training
MAP_R = 50
# the two mAP@R definitions, named in every report
MUSGRAVE = ("MAP@R (Musgrave et al. 2020): (1/R) sum_{i<=R} P@i rel_i; below 1 when fewer than R items "
            "are relevant")
AGGARWAL = ("mAP@R (Aggarwal et al. 2019, eq. 5; their table's mAP@50): (1/M) sum_{r<=R} p(r) rel(r), "
            "M = relevant items in the top R")
CURVE_MAX_K = 100
DIRECTIONS = ("text_to_image", "image_to_text")


def image_categories(categories: Sequence[str | None], caption_image: np.ndarray, n_images: int
                     ) -> list[str | None]:
    """Each image's most common caption category (ties: alphabetically first), None if none."""
    counts: list[Counter[str]] = [Counter() for _ in range(n_images)]
    for cat, j in zip(categories, caption_image.tolist(), strict=True):
        if cat is not None:
            counts[j][cat] += 1
    return [min(c, key=lambda k: (-c[k], k)) if c else None for c in counts]


def _codes(query: Sequence[Any], items: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer labels of queries and items (None -> never relevant) and the usable queries' mask."""
    table: dict[Any, int] = {}
    item_codes = np.array([-1 if v is None else table.setdefault(v, len(table)) for v in items],
                          dtype=np.int64)
    query_codes = np.array([-2 if v is None else table.get(v, -2) for v in query], dtype=np.int64)
    usable = np.isin(query_codes, item_codes[item_codes >= 0])
    return query_codes, item_codes, usable


def _ranked_metrics(s: np.ndarray, relevant: list[list[int]], ks: Sequence[int]) -> dict[str, float]:
    recall = recall_at_k(s, relevant, ks)
    return {**{f"R@{k}": v for k, v in recall.items()}, "median_rank": median_rank(s, relevant)}


def _curve(s: np.ndarray, relevant: list[list[int]], ks: Sequence[int]) -> list[float]:
    return list(recall_at_k(s, relevant, ks).values())


def evaluate_embeddings(text: Any, image: Any, caption_image: Any, *, metric: str = "l2",
                        categories: Sequence[str | None] | None = None, ks: Sequence[int] = KS,
                        R: int = MAP_R, texts: Sequence[str] | None = None,
                        text_bias: Any = None, image_bias: Any = None) -> dict[str, Any]:
    """The report for caption vectors ``text`` (T, D), image vectors ``image`` (I, D), and
    ``caption_image`` (T,), the image row of each caption; see the module docstring.

    ``text_bias`` (T,) is subtracted from every image's score of each text (image -> text
    ranking), ``image_bias`` (I,) from every text's score of each image (text -> image): the
    hubness correction of :mod:`emit.retrieval.hubness`. Each leaves the other direction as is.

    With ``texts`` (the T caption strings), identical texts count as one: a query text that
    several images share finds any of them (click logs repeat short queries across many
    images, and the first copy of such a query could otherwise never rank them all first), and
    an image finds any copy of its texts.
    """
    s = score_matrix(text, image, metric)
    n_text, n_image = s.shape
    if n_text == 0 or n_image == 0:
        raise EmitError("nothing to evaluate: no captions or no images")
    of = np.asarray(caption_image, dtype=np.int64).reshape(-1)
    if len(of) != n_text or of.min() < 0 or of.max() >= n_image:
        raise EmitError(f"caption_image must give each of the {n_text} captions an image row "
                        f"in 0..{n_image - 1}")
    if categories is not None and len(categories) != n_text:
        raise EmitError(f"{len(categories)} categories for {n_text} captions")
    s_t2i_all, s_i2t_all = s, s.T  # (T, I) text -> image and (I, T) image -> text scores
    if image_bias is not None:
        s_t2i_all = apply_bias(s, image_bias)
    if text_bias is not None:
        s_i2t_all = apply_bias(s.T, text_bias)
    same_text = text_groups(texts, n_text)
    images_of_text: dict[int, set[int]] = {}
    captions_of_text: dict[int, list[int]] = {}
    groups: list[list[int]] = [[] for _ in range(n_image)]  # each image's captions
    for i, (g, j) in enumerate(zip(same_text.tolist(), of.tolist(), strict=True)):
        images_of_text.setdefault(g, set()).add(j)
        captions_of_text.setdefault(g, []).append(i)
        groups[j].append(i)
    with_text = np.array([bool(g) for g in groups])
    queries = np.array(sorted(images_of_text), dtype=np.int64)  # one query per distinct text
    s_t2i = s_t2i_all[queries]
    rel_t2i = [sorted(images_of_text[int(g)]) for g in queries]
    s_i2t = s_i2t_all[with_text]  # images without a caption have nothing to find
    rel_i2t = [sorted({c for i in g for c in captions_of_text[int(same_text[i])]}) for g in groups if g]

    report: dict[str, Any] = {
        "counts": {"captions": n_text, "images": n_image, "images_with_captions": int(with_text.sum()),
                   "distinct_texts": len(queries)},
        "metric": metric,
        "text_to_image": _ranked_metrics(s_t2i, rel_t2i, ks),
        "image_to_text": _ranked_metrics(s_i2t, rel_i2t, ks),
    }
    curve_ks = list(range(1, max(1, min(CURVE_MAX_K, n_image, n_text)) + 1))
    report["recall_curve"] = {"K": curve_ks, "text_to_image": _curve(s_t2i, rel_t2i, curve_ks),
                              "image_to_text": _curve(s_i2t, rel_i2t, curve_ks)}

    has_categories = categories is not None and any(c is not None for c in categories)
    map_r: dict[str, Any] = {"R": int(R) if has_categories else "relevant items per query",
                             "relevance": "category" if has_categories else "image",
                             "definition": MUSGRAVE}
    paper: dict[str, Any] = {"R": int(R), "relevance": map_r["relevance"], "definition": AGGARWAL}
    full: dict[str, Any] = {"relevance": map_r["relevance"]}
    left_out: dict[str, int] = {}
    if has_categories:  # relevant: the same category; each distinct text is a query, and an item
        cats = list(categories)  # type: ignore[arg-type]
        img_cats = image_categories(cats, of, n_image)
        # a text shared by several captions takes their most common category, not the first one's
        text_cats = image_categories(cats, np.searchsorted(queries, same_text), len(queries))
        labelled = {"text_to_image": (s_t2i, text_cats, img_cats),
                    "image_to_text": (s_i2t_all[:, queries], img_cats, text_cats)}
        for direction, (scores, query_labels, item_labels) in labelled.items():
            q, it, usable = _codes(query_labels, item_labels)
            left_out[direction] = int((~usable).sum())
            if not usable.any():
                map_r[direction] = full[direction] = paper[direction] = None
                continue
            map_r[direction] = map_at_r(scores[usable], q[usable], it, int(R))
            paper[direction] = paper_map_at_r(scores[usable], q[usable], it, int(R))
            full[direction] = mean_average_precision(scores[usable], q[usable], it)
    else:  # relevant: as for R@K; each query's R is its own number of relevant items
        for direction, (scores, relevant) in {"text_to_image": (s_t2i, rel_t2i),
                                              "image_to_text": (s_i2t, rel_i2t)}.items():
            map_r[direction] = map_at_r(scores, R=None, relevant=relevant)
            paper[direction] = paper_map_at_r(scores, R=int(R), relevant=relevant)
            full[direction] = mean_average_precision(scores, relevant=relevant)
            left_out[direction] = 0
    map_r["queries_left_out"] = full["queries_left_out"] = paper["queries_left_out"] = left_out
    report["map_at_r"] = map_r
    report["map_at_r_paper"] = paper
    report["map"] = full
    return report


def evaluate_model(model: RetrievalModel, texts: Sequence[str], caption_image: Any, image_features: Any, *,
                   categories: Sequence[str | None] | None = None, ks: Sequence[int] = KS,
                   R: int = MAP_R, bank: HubnessBank | None = None, hubness: str = "none",
                   beta: float = DEFAULT_BETA) -> dict[str, Any]:
    """Embed ``texts`` and the raw ``image_features`` with ``model`` and evaluate.

    ``hubness`` ('none', 'image_to_text', 'text_to_image', 'both', or 'auto': both for cosine
    models, none for squared-distance ones) corrects that direction's scores against ``bank``
    (the run's :class:`~emit.retrieval.hubness.HubnessBank`) with ``beta``; see
    :mod:`emit.retrieval.hubness`.
    """
    text, image = model.text_vectors(texts), model.image_vectors(image_features)
    text_bias, image_bias = biases(text, image, bank, hubness, beta=beta, metric=model.metric)
    report = evaluate_embeddings(text, image, caption_image, metric=model.metric, categories=categories,
                                 ks=ks, R=R, texts=texts, text_bias=text_bias, image_bias=image_bias)
    report["model"] = model.identity()
    report["hubness"] = describe(bank, resolve(hubness, model.metric), beta)
    return report


def evaluate_captions(model: RetrievalModel, captions: Sequence[Caption], image_features: Any,
                      ok: Any = None, *, ks: Sequence[int] = KS, R: int = MAP_R,
                      bank: HubnessBank | None = None, hubness: str = "none",
                      beta: float = DEFAULT_BETA) -> dict[str, Any]:
    """Evaluate on captions; ``image_features`` are in :func:`emit.data.captions.image_indices` order.

    ``ok`` (bool per image, from ``extract_features``) drops unreadable images and their captions.
    ``bank``, ``hubness`` and ``beta`` are as for :func:`evaluate_model`.
    """
    paths, of = image_indices(captions)
    feats = np.asarray(image_features, dtype=np.float32)
    if feats.shape[0] != len(paths):
        raise EmitError(f"{feats.shape[0]} image feature rows for {len(paths)} distinct caption images")
    good = np.ones(len(paths), dtype=bool) if ok is None else np.asarray(ok, dtype=bool)
    new_row = np.cumsum(good) - 1
    keep = good[of]
    kept = [c for c, k in zip(captions, keep, strict=True) if k]
    if not kept:
        raise EmitError("no caption has a readable image; nothing to evaluate")
    report = evaluate_model(model, [c.text for c in kept], new_row[of[keep]], feats[good],
                            categories=[c.category for c in kept], ks=ks, R=R, bank=bank, hubness=hubness,
                            beta=beta)
    report["counts"]["captions_dropped"] = int((~keep).sum())
    report["counts"]["images_dropped"] = int((~good).sum())
    return report


# --------------------------------------------------------------------------- outputs


def format_evaluation(report: dict[str, Any]) -> str:
    """A few human-readable lines."""
    counts = report["counts"]
    lines = [f"{counts['captions']} captions, {counts['images']} images ({report['metric']})"]
    for direction in DIRECTIONS:
        m = report[direction]
        recalls = "  ".join(f"{k} {v:5.1f}" for k, v in m.items() if k.startswith("R@"))
        lines.append(f"{direction.replace('_', ' '):>14}: {recalls}  median rank {m['median_rank']:g}")
    titles = [("map_at_r", f"MAP@R, Musgrave et al. (R={report['map_at_r']['R']})")]
    if "map_at_r_paper" in report:  # reports written before it have only Musgrave's
        titles.append(("map_at_r_paper", f"mAP@{report['map_at_r_paper']['R']}, Aggarwal et al. eq. 5"))
    for key, title in (*titles, ("map", "mAP")):
        parts = [f"{d.replace('_', ' ')} {report[key][d]:.4f}"
                 for d in DIRECTIONS if report[key][d] is not None]
        lines.append(f"{title}, relevance by {report[key]['relevance']}: " + ("; ".join(parts) or "n/a"))
    return "\n".join(lines)


def write_evaluation(report: dict[str, Any], prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``<prefix>.json`` and ``<prefix>.png`` atomically; returns both paths."""
    prefix = Path(prefix)
    json_path = prefix.with_name(prefix.name + ".json")
    png_path = prefix.with_name(prefix.name + ".png")
    atomic_write_json(json_path, report)
    atomic_write_bytes(png_path, plot_evaluation(report))
    return json_path, png_path


# --------------------------------------------------------------------------- during training


def score_validation(model: RetrievalModel, features: np.ndarray, val: Mapping[str, Pairs],
                     ks: Sequence[int] = VAL_KS) -> dict[str, Any]:
    """Text-to-image R@K and median rank of each task's held-out texts among all held-out images.

    ``features`` are raw image features (normalisation and projection are applied here). Returns
    ``{task: {"R@1": ..., "median_rank": ...}, "score": mean over tasks of mean R@K}``.
    """
    val = {k: v for k, v in val.items() if len(v)}
    if not val:
        return {"score": None}
    rows = np.unique(np.concatenate([p.images for p in val.values()]))
    col_of = {int(r): j for j, r in enumerate(rows)}
    images = model.image_vectors(features[rows])
    out: dict[str, Any] = {}
    scores = []
    for task, pairs in val.items():
        s = score_matrix(model.text_vectors(pairs.texts), images, model.metric)
        relevant = [[col_of[int(r)]] for r in pairs.images]
        recall = recall_at_k(s, relevant, ks)
        out[task] = {**{f"R@{k}": v for k, v in recall.items()}, "median_rank": median_rank(s, relevant),
                     "texts": len(pairs), "images": len(rows)}
        scores.append(float(np.mean(list(recall.values()))))
    out["score"] = float(np.mean(scores))
    return out
