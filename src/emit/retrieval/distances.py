"""The score maths of retrieval, in one place: distances, the score matrix, and the grouping
helpers shared by the losses, the negative miner, evaluation and the hubness correction.

The paper scores a text-image pair by the squared Euclidean distance ``d(a, b) = ||a - b||^2``
between the text embedding and the CNN image feature (metric ``'l2'``); InfoNCE models compare
unit vectors by their inner product, i.e. cosine similarity (metric ``'ip'``). Every score
matrix -- in a loss, in evaluation, in the hubness bias -- comes from :func:`score_matrix`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from emit.problems import EmitError
from emit.retrieval.metric import check_metric

Reduction = Literal["mean", "sum", "none"]
IdsLike = torch.Tensor | np.ndarray | Sequence[Hashable]


def pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, D) and (N, D) -> (B, N) squared Euclidean distances, clamped at 0.

    Computed as ``||a||^2 + ||b||^2 - 2 a.b`` (one matmul, no (B, N, D) intermediate). That
    expansion cancels badly when the points sit far from the origin compared with their spread,
    which is exactly the case for post-ReLU CNN features, so both sides are first shifted by a
    common centre; distances do not change under a shift.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (B, D) and (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        return a.new_zeros(a.shape[0], b.shape[0])
    # Detached: the shift cancels exactly in every distance, so it needs no gradient.
    centre = torch.cat([a, b]).mean(dim=0).detach()
    a = a - centre
    b = b - centre
    sq = a.pow(2).sum(dim=1, keepdim=True) + b.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * (a @ b.T)
    return sq.clamp_min(0.0)  # rounding can leave tiny negatives for (near-)identical points


def rowwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance along the last axis, broadcasting ``a`` against ``b``."""
    return (a - b).pow(2).sum(dim=-1)


@overload
def score_matrix(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor: ...
@overload
def score_matrix(a: Any, b: Any, metric: str = "l2") -> np.ndarray: ...


def score_matrix(a: Any, b: Any, metric: str = "l2") -> torch.Tensor | np.ndarray:
    """(B, D) and (N, D) -> (B, N) scores, higher meaning a better match.

    ``metric`` (:mod:`emit.retrieval.metric`): ``'l2'`` gives ``-||a_i - b_j||^2``
    (:func:`pairwise_sq_dist`), ``'ip'`` the inner product ``a_i . b_j`` -- the cosine when the
    rows are unit vectors, as a model's 'ip' vectors are (a loss normalises first:
    :func:`unit_rows`). Two tensors give a tensor (with gradients, in their dtype); anything
    else (numpy arrays: evaluation, the hubness bias) is scored in float64 and returned as numpy.
    """
    check_metric(metric)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        _check_pair(a, b)
        return -pairwise_sq_dist(a, b) if metric == "l2" else a @ b.T
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    _check_pair(x, y)
    return (-pairwise_sq_dist(x, y) if metric == "l2" else x @ y.T).numpy()


class ShapeError(EmitError, ValueError):
    """Vectors that cannot be scored against each other."""


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(f"text and image vectors must be (T, D) and (I, D); "
                         f"got {tuple(a.shape)}, {tuple(b.shape)}")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (a zero row stays zero): cosine is ``'ip'`` of unit rows."""
    return F.normalize(x, dim=1)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows of ``x`` scaled to unit length (rows of norm below 1e-12 are divided by 1e-12)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def text_groups(texts: Sequence[str] | None, n: int) -> np.ndarray:
    """(n,) the first index holding each text (case and spacing folded): equal codes mean the
    same text, counted once as a query and never each other's negative; ``arange(n)`` without texts."""
    if texts is None:
        return np.arange(n)
    if len(texts) != n:
        raise EmitError(f"{len(texts)} texts for {n} captions")
    first: dict[str, int] = {}
    return np.array([first.setdefault(" ".join(str(t).casefold().split()), i) for i, t in enumerate(texts)],
                    dtype=np.int64)


def id_codes(ids: IdsLike, device: torch.device | None = None) -> torch.Tensor:
    """Image ids (ints, strings, any hashables) -> (B,) long codes, equal exactly when the ids are."""
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        return ids.to(device)
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    codes: dict[Hashable, int] = {}
    return torch.tensor([codes.setdefault(x, len(codes)) for x in list(ids)], dtype=torch.long, device=device)


def same_id_mask(ids: IdsLike, device: torch.device | None = None) -> torch.Tensor:
    """(B,) ids -> (B, B) bool, True where pair i and pair j show the same image (diagonal included)."""
    c = id_codes(ids, device)
    return c.unsqueeze(1) == c.unsqueeze(0)


def positive_mask(n: int, ids: IdsLike | None, device: torch.device | None = None) -> torch.Tensor:
    """Positives of an in-batch (B, B) score matrix: the diagonal, or all pairs sharing an image id."""
    if ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    mask = same_id_mask(ids, device)
    if mask.shape[0] != n:
        raise ValueError(f"got {mask.shape[0]} image ids for a batch of {n}")
    return mask


def anchor_distances(
    text: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked (B,) positive distances, (B, N) negative distances and (B, N) bool validity.

    ``neg`` is (B, N, D), or (B, D) for the single-negative form; ``mask`` is True for a
    negative that counts (as returned by :func:`emit.retrieval.mining.mine_negatives`).
    """
    if text.ndim != 2 or pos.shape != text.shape:
        raise ValueError(f"expected (B, D) text and pos, got {tuple(text.shape)}, {tuple(pos.shape)}")
    if neg.ndim == 2:
        neg = neg.unsqueeze(1)
    if neg.ndim != 3 or neg.shape[0] != text.shape[0] or neg.shape[2] != text.shape[1]:
        raise ValueError(f"expected neg of shape (B, N, D) or (B, D), got {tuple(neg.shape)}")
    valid = torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device) if mask is None else mask
    if valid.dtype != torch.bool or valid.shape != neg.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(neg.shape[:2])}, got {valid.dtype} {tuple(valid.shape)}")
    return rowwise_sq_dist(text, pos), rowwise_sq_dist(text.unsqueeze(1), neg), valid


def reduce_loss(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Mean or sum over anchors, or the (B,) per-anchor losses for ``'none'``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")
