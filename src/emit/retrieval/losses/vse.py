"""VSE++ max-violation hinge loss (Faghri et al. 2018) over a batch of (text, image) pairs.

The score matrix ``S[i, j]`` compares text i with image j (:func:`~emit.retrieval.distances.score_matrix`).
With ``metric='ip'`` (the default, as in VSE++) it is the cosine similarity; with ``'l2'`` it
is ``-d(t_i, v_j)``, the paper's distance, and ``margin`` is in squared-distance units (emit
trains VSE++ so: its registry metric is 'l2'). For each text the loss hinges only on its
hardest negative image, and for each image on its hardest negative text::

    L_i = max(0, margin - S[i, i] + max_{j not pos(i)} S[i, j])
        + max(0, margin - S[i, i] + max_{j not pos(i)} S[j, i])

Several captions may show one image: with ``image_ids`` every pair sharing an image id is a
positive, never a negative, in both directions. An anchor with no negative at all adds 0.
"""

from __future__ import annotations

import torch

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import IdsLike, Reduction, positive_mask, reduce_loss, score_matrix, unit_rows
from emit.retrieval.losses.batch import LossBatch
from emit.retrieval.metric import check_metric


def vse_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: IdsLike | None = None,
    margin: float = 0.2,
    *,
    metric: str = "ip",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """VSE++ loss for (B, D) texts and the (B, D) images of the same B pairs.

    ``image_ids`` (B,) marks pairs that share an image (default: all distinct). ``metric``
    'ip' scores by cosine (the vectors are normalised here), 'l2' by minus the squared distance.
    The per-pair loss is the sum of both directions' hinges; VSE++ sums over the batch, here
    ``reduction`` defaults to the mean so the scale does not depend on the batch size.
    """
    if text.ndim != 2 or text.shape != image.shape:
        raise ValueError(f"expected (B, D) text and image, got {tuple(text.shape)}, {tuple(image.shape)}")
    if check_metric(metric) == "ip":
        text, image = unit_rows(text), unit_rows(image)
    scores = score_matrix(text, image, metric)
    pos = positive_mask(text.shape[0], image_ids, scores.device)
    masked = scores.masked_fill(pos, float("-inf"))
    diag = scores.diagonal()
    zero = torch.zeros_like(diag)
    # A row/column with no negative has max -inf; where() keeps its hinge (and gradient) at 0.
    t2i = torch.where((~pos).any(dim=1), (margin - diag + masked.max(dim=1).values).clamp_min(0.0), zero)
    i2t = torch.where((~pos).any(dim=0), (margin - diag + masked.max(dim=0).values).clamp_min(0.0), zero)
    return reduce_loss(t2i + i2t, reduction)


def per_pair(batch: LossBatch, config: RetrievalConfig) -> torch.Tensor:
    """(B,) VSE++ losses on squared distances, the batch's margin (the registry's convention)."""
    return vse_loss(batch.text, batch.image, batch.rows, batch.margin, metric="l2", reduction="none")
