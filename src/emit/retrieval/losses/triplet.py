"""Triplet ranking loss, Aggarwal et al. 2019, eq. (2).

``L = sum_k max(0, margin + s_p - s_n_k)`` with squared Euclidean distances. Once every negative
is ``margin`` farther than the positive the loss and its gradient are zero: nothing pulls the
text further onto its image (the shortcoming PATR addresses).
"""

from __future__ import annotations

import torch

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import Reduction, anchor_distances, reduce_loss
from emit.retrieval.losses.batch import LossBatch


def triplet_loss(
    text: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    margin: float = 1.0,
    mask: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Triplet loss of (B, D) texts, (B, D) positives and (B, N, D) (or (B, D)) negatives.

    ``mask`` (B, N) bool is True for negatives that count. ``margin`` (rho) is in
    squared-distance units. Summed over negatives, then reduced over anchors.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    s_p, s_n, valid = anchor_distances(text, pos, neg, mask)
    violation = (margin + s_p.unsqueeze(1) - s_n).clamp_min(0.0)
    hinge = torch.where(valid, violation, torch.zeros_like(violation))  # NaN-safe masking
    return reduce_loss(hinge.sum(dim=1), reduction)


def per_pair(batch: LossBatch, config: RetrievalConfig) -> torch.Tensor:
    """(B,) triplet losses of a batch with mined negatives (the registry's convention)."""
    negatives, valid = batch.mined()
    return triplet_loss(batch.text, batch.image, negatives, batch.margin, valid, reduction="none")
