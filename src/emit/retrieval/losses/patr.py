"""Positive-Aware Triplet Ranking (PATR) loss, Aggarwal et al. 2019, eqs. (1) and (3).

With ``s_p = d(t, v_p)`` and ``s_n_k = d(t, v_n_k)`` (squared Euclidean distances)::

    L = s_p + sum_k max(0, margin - s_n_k)

Unlike the triplet loss, the positive term is not inside the hinge: PATR keeps pulling the text
onto its image (``s_p -> 0``) even when every negative is already beyond the margin, while each
negative only pushes until it is ``margin`` away.
"""

from __future__ import annotations

import torch

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import Reduction, anchor_distances, reduce_loss
from emit.retrieval.losses.batch import LossBatch


def patr_loss(
    text: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    margin: float = 1.0,
    mask: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """PATR loss of (B, D) texts against their (B, D) positive images and (B, N, D) negatives.

    ``neg`` may also be (B, D), the single-negative eq. (1). ``mask`` (B, N) bool is True for
    negatives that count; False ones (padding from the miner) contribute nothing. ``margin``
    (eta) is in squared-distance units, so it must be tuned to the feature scale.
    Per-anchor losses are summed over negatives (eq. 3), then reduced over anchors.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    s_p, s_n, valid = anchor_distances(text, pos, neg, mask)
    # where(), not multiply: padded negatives may hold anything, even inf, and 0 * inf is nan.
    hinge = torch.where(valid, (margin - s_n).clamp_min(0.0), torch.zeros_like(s_n))
    return reduce_loss(s_p + hinge.sum(dim=1), reduction)


def per_pair(batch: LossBatch, config: RetrievalConfig) -> torch.Tensor:
    """(B,) PATR losses of a batch with mined negatives (the registry's convention)."""
    negatives, valid = batch.mined()
    return patr_loss(batch.text, batch.image, negatives, batch.margin, valid, reduction="none")
