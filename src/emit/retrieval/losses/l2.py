"""The L2 regression baseline: squared Euclidean distance from each text to its own image.

No negatives at all, so nothing stops the embeddings from collapsing towards the mean image;
it is the paper's reference point for what ranking losses add.
"""

from __future__ import annotations

import torch

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import Reduction, reduce_loss, rowwise_sq_dist
from emit.retrieval.losses.batch import LossBatch


def l2_loss(text: torch.Tensor, pos: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Mean (by default) over the batch of ``||t_i - v_i||^2`` for (B, D) texts and images."""
    if text.ndim != 2 or pos.shape != text.shape:
        raise ValueError(f"expected (B, D) text and pos, got {tuple(text.shape)}, {tuple(pos.shape)}")
    return reduce_loss(rowwise_sq_dist(text, pos), reduction)


def per_pair(batch: LossBatch, config: RetrievalConfig) -> torch.Tensor:
    """(B,) squared distances of each text to its own image (the registry's convention)."""
    return l2_loss(batch.text, batch.image, reduction="none")
