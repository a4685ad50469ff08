"""Image-tag cost: cross-entropy between an image's predicted labels and a tag's embedding.

Two readings of "cross-entropy", matching the two training losses:

* ``bce``: labels are independent Bernoulli variables (sigmoid outputs); the cost is the mean
  binary cross-entropy between the predicted probabilities and the tag's multi-hot vector.
* ``softmax``: the paper's soft-target cross-entropy; the tag's multi-hot vector is normalised
  to a distribution q and the cost is ``-sum q * log softmax(logits)``.

Everything works on logits for numerical stability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

LossName = Literal["bce", "softmax"]


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def cost_matrix(logits: np.ndarray, tag_embeddings: np.ndarray, loss: LossName = "bce") -> np.ndarray:
    """Cost of giving each image (rows of ``logits``) each tag (rows of ``tag_embeddings``).

    ``logits``: (n_images, n_labels); ``tag_embeddings``: (n_tags, n_labels) multi-hot.
    Returns (n_images, n_tags); lower is better.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(tag_embeddings, dtype=np.float64)
    if logits.ndim != 2 or y.ndim != 2 or logits.shape[1] != y.shape[1]:
        raise ValueError(f"shape mismatch: logits {logits.shape}, tag embeddings {y.shape}")
    if loss == "bce":
        log_p = _log_sigmoid(logits)
        log_not_p = _log_sigmoid(-logits)
        return -(log_p @ y.T + log_not_p @ (1.0 - y).T) / y.shape[1]
    if loss == "softmax":
        q = y / np.clip(y.sum(axis=1, keepdims=True), 1e-12, None)
        return -(_log_softmax(logits) @ q.T)
    raise ValueError(f"unknown loss {loss!r}; use 'bce' or 'softmax'")
