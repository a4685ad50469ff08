"""Folding a per-candidate bias (the hubness correction) into index rows and queries: numpy
only, so an index can be searched and built without torch (see :mod:`emit.retrieval.hubness`
for where the bias comes from)."""

from __future__ import annotations

from typing import Any

import numpy as np

from emit.problems import EmitError

__all__ = ["apply_bias", "fold_candidates", "fold_queries"]


def apply_bias(scores: Any, bias: Any) -> np.ndarray:
    """(Q, N) query-candidate scores (higher = better) minus each candidate's (N,) bias."""
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if s.ndim != 2 or s.shape[1] != b.shape[0]:
        raise EmitError(f"scores {s.shape} need one bias per column, got {b.shape[0]}")
    return s - b[None, :]


def fold_candidates(vectors: Any, bias: Any, metric: str) -> tuple[np.ndarray, float]:
    """(N, D+1) index rows that make the index rank by the corrected score, and the shift.

    * ``ip``: rows ``[c, -bias]``; a query ``[q, 1]`` scores ``q.c - bias``, exactly s'.
    * ``l2``: rows ``[c, sqrt(bias + shift)]``; a query ``[q, 0]`` is at squared distance
      ``||q - c||^2 + bias + shift`` = ``-s' + shift``. The shift (``-min bias``) keeps the
      root real; it is the same for every row, so rankings do not change, and searches
      subtract it again from the scores they report.
    """
    x = np.asarray(vectors, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != b.shape[0]:
        raise EmitError(f"{x.shape[0] if x.ndim == 2 else '?'} vectors but {b.shape[0]} biases")
    if metric == "ip":
        return np.hstack([x, -b[:, None]]).astype(np.float32), 0.0
    if metric == "l2":
        shift = float(-b.min()) if b.size else 0.0
        return np.hstack([x, np.sqrt(np.maximum(b + shift, 0.0))[:, None]]).astype(np.float32), shift
    raise EmitError(f"unknown metric {metric!r}; use 'l2' or 'ip'")


def fold_queries(queries: Any, metric: str, corrected: bool = True) -> np.ndarray:
    """(Q, D) queries -> (Q, D+1) for an index of :func:`fold_candidates` rows.

    ``corrected=False`` asks for the plain score (e.g. image -> image search over an image
    index corrected for text queries); an ``l2`` index cannot give it (its extra coordinate is
    part of every distance), so that is refused.
    """
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if metric == "l2" and not corrected:
        raise EmitError("this squared-distance index holds a hubness correction for queries of the "
                        "other modality, so it cannot give plain scores for same-modality search; "
                        "rebuild it with `emit index build ... --hubness none` (or correct only the other "
                        "index: text_to_image corrects just the images, image_to_text just the texts)")
    value = 1.0 if (metric == "ip" and corrected) else 0.0
    return np.hstack([q, np.full((q.shape[0], 1), value, dtype=np.float32)])
