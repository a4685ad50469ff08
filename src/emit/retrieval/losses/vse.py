"""VSE++ max-violation hinge loss (Faghri et al. 2018) over a batch of (text, image) pairs.

The score matrix ``S[i, j]`` compares text i with image j; by default it is cosine similarity,
as in VSE++. ``similarity='neg_sq_dist'`` uses ``-d(t_i, v_j)`` instead, the paper's distance,
in which case ``margin`` is in squared-distance units. For each text the loss hinges only on
its hardest negative image, and for each image on its hardest negative text::

    L_i = max(0, margin - S[i, i] + max_{j not pos(i)} S[i, j])
        + max(0, margin - S[i, i] + max_{j not pos(i)} S[j, i])

Several captions may show one image: with ``image_ids`` every pair sharing an image id is a
positive, never a negative, in both directions. An anchor with no negative at all adds 0.
"""

from __future__ import annotations

from typing import Literal

import torch

from emit.retrieval.distances import (
    IdsLike,
    Reduction,
    cosine_similarity_matrix,
    pairwise_sq_dist,
    positive_mask,
    reduce_loss,
)

Similarity = Literal["cosine", "neg_sq_dist"]


def score_matrix(text: torch.Tensor, image: torch.Tensor, similarity: Similarity = "cosine") -> torch.Tensor:
    """(B, D) texts and (N, D) images -> (B, N) scores, higher meaning a better match."""
    if similarity == "cosine":
        return cosine_similarity_matrix(text, image)
    if similarity == "neg_sq_dist":
        return -pairwise_sq_dist(text, image)
    raise ValueError(f"unknown similarity {similarity!r}; use 'cosine' or 'neg_sq_dist'")


def vse_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: IdsLike | None = None,
    margin: float = 0.2,
    *,
    similarity: Similarity = "cosine",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """VSE++ loss for (B, D) texts and the (B, D) images of the same B pairs.

    ``image_ids`` (B,) marks pairs that share an image (default: all distinct). The per-pair
    loss is the sum of both directions' hinges; VSE++ sums over the batch, here ``reduction``
    defaults to the mean so the scale does not depend on the batch size.
    """
    if text.ndim != 2 or text.shape != image.shape:
        raise ValueError(f"expected (B, D) text and image, got {tuple(text.shape)}, {tuple(image.shape)}")
    scores = score_matrix(text, image, similarity)
    pos = positive_mask(text.shape[0], image_ids, scores.device)
    masked = scores.masked_fill(pos, float("-inf"))
    diag = scores.diagonal()
    zero = torch.zeros_like(diag)
    # A row/column with no negative has max -inf; where() keeps its hinge (and gradient) at 0.
    t2i = torch.where((~pos).any(dim=1), (margin - diag + masked.max(dim=1).values).clamp_min(0.0), zero)
    i2t = torch.where((~pos).any(dim=0), (margin - diag + masked.max(dim=0).values).clamp_min(0.0), zero)
    return reduce_loss(t2i + i2t, reduction)
