"""Image-tag cost: cross-entropy between an image's predicted labels and a tag's embedding.

Two readings of "cross-entropy", matching the two training losses:

* ``bce``: labels are independent Bernoulli variables (sigmoid outputs); the cost is the mean
  binary cross-entropy between the predicted probabilities and the tag's multi-hot vector.
* ``softmax``: the paper's soft-target cross-entropy; the tag's multi-hot vector is normalised
  to a distribution q and the cost is ``-sum q * log softmax(logits)``.

One torch implementation serves training (differentiable, batched over candidate tags) and
decisions (the numpy :func:`cost_matrix`). Everything works on logits for stability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

LossName = Literal["bce", "softmax"]


def tag_costs(logits: torch.Tensor, tags: torch.Tensor, loss: LossName = "bce") -> torch.Tensor:
    """Cost of each candidate tag for each image.

    ``logits``: (..., K) per image; ``tags``: (..., M, K) multi-hot candidates, broadcast
    against the image's batch dimensions. Returns (..., M); lower is better.
    """
    if logits.shape[-1] != tags.shape[-1]:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, tags {tuple(tags.shape)}")
    z = logits.unsqueeze(-2)  # (..., 1, K) against (..., M, K)
    if loss == "bce":
        per_label = -(tags * F.logsigmoid(z) + (1.0 - tags) * F.logsigmoid(-z))
        return per_label.mean(dim=-1)
    if loss == "softmax":
        q = tags / tags.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return -(q * F.log_softmax(z, dim=-1)).sum(dim=-1)
    raise ValueError(f"unknown loss {loss!r}; use 'bce' or 'softmax'")


def cost_matrix(logits: np.ndarray, tag_embeddings: np.ndarray, loss: LossName = "bce") -> np.ndarray:
    """(n_images, K) logits and (n_tags, K) multi-hot tags -> (n_images, n_tags) costs."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(tag_embeddings, dtype=np.float64)
    if logits.ndim != 2 or y.ndim != 2:
        raise ValueError(f"expected 2-D arrays, got logits {logits.shape}, tags {y.shape}")
    with torch.no_grad():
        return tag_costs(torch.from_numpy(logits), torch.from_numpy(y), loss).numpy()
