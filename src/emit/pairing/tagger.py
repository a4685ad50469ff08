"""The multi-label tagger: a head over image features that predicts semantic labels.

Training follows EMIT (multi-label targets from the tag embedding, BCE or soft-target
cross-entropy, Adam) with two additions that we measured to help on catalogue data
(see docs/pairing.md):

* product context -- each image's features are concatenated with their difference from the
  mean of the product's images, so the head can see "bluer than its siblings";
* a listwise term -- the cost of every candidate tag of the image's own product goes through a
  softmax, and the true tag's cross-entropy is added to the loss. It trains the head for the
  decision it is used for: ranking a product's own tags.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emit.pairing.cost import LossName, tag_costs

log = logging.getLogger("emit")

LISTWISE_TEMPERATURE = 0.05  # BCE costs are means over labels, so differences are small


def with_product_context(features: np.ndarray, groups: Sequence[int] | np.ndarray) -> np.ndarray:
    """Append each row's difference from the mean of the rows in its group (its product)."""
    features = np.asarray(features, dtype=np.float32)
    groups = np.asarray(groups)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, features)
    means = (sums / counts[:, None]).astype(np.float32)
    return np.concatenate([features, features - means[inverse]], axis=1)


class TaggerHead(nn.Module):
    """Standardise features, then a one-hidden-layer MLP (or a linear layer) to label logits."""

    def __init__(self, in_dim: int, n_labels: int, hidden: int = 512, dropout: float = 0.3) -> None:
        super().__init__()
        self.in_dim, self.n_labels, self.hidden, self.dropout = in_dim, n_labels, hidden, dropout
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Dropout(dropout / 3), nn.Linear(in_dim, hidden), nn.ReLU(),
                nn.Dropout(dropout), nn.Linear(hidden, n_labels),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout / 3), nn.Linear(in_dim, n_labels))

    def fit_standardisation(self, x: np.ndarray) -> None:
        std = x.std(axis=0)
        # Histogram bins that are (almost) always empty in training have ~0 spread; dividing
        # by it turns one unusual test colour into a huge input. Floor it at a tenth of the
        # typical spread.
        floor = max(0.1 * float(np.median(std)), 1e-6)
        self.mean.copy_(torch.from_numpy(x.mean(axis=0)))
        self.std.copy_(torch.from_numpy(np.maximum(std, floor).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.eval()
        with torch.no_grad():
            return self(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


@dataclass
class LabelledImages:
    """Training rows: features, multi-hot target, and the product's candidate tags."""

    features: np.ndarray  # (N, D) float32, already with product context if used
    targets: np.ndarray  # (N, K) multi-hot of the true tag
    candidates: np.ndarray  # (N, M, K) multi-hot of the product's optional tags, zero-padded
    candidate_mask: np.ndarray  # (N, M) bool
    true_index: np.ndarray  # (N,) index of the true tag among the candidates

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, rows: np.ndarray) -> LabelledImages:
        return LabelledImages(self.features[rows], self.targets[rows], self.candidates[rows],
                              self.candidate_mask[rows], self.true_index[rows])

    def select_labels(self, label_ids: np.ndarray) -> LabelledImages:
        """Keep some label columns (bagging); a tag left with no label moves to "other"."""
        return LabelledImages(self.features, restrict_labels(self.targets, label_ids),
                              restrict_labels(self.candidates, label_ids) * self.candidate_mask[..., None],
                              self.candidate_mask, self.true_index)


def restrict_labels(embedding: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """Multi-hot over a subset of labels, recomputing the trailing "other" slot."""
    kept = embedding[..., label_ids]
    other = (kept.sum(axis=-1, keepdims=True) == 0).astype(embedding.dtype)
    return np.concatenate([kept, other], axis=-1)


@dataclass
class FitResult:
    head: TaggerHead
    epochs: int
    best_epoch: int
    train_loss: list[float]
    val_loss: list[float]
    val_top1: list[float] = field(default_factory=list)  # share of val images whose tag ranks first


def _loss(head: TaggerHead, batch: dict[str, torch.Tensor], loss: LossName,
          listwise_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss, and per image whether its true tag is its product's cheapest."""
    z = head(batch["x"])
    y = batch["y"]
    if loss == "bce":
        value = F.binary_cross_entropy_with_logits(z, y)
    else:
        q = y / y.sum(dim=1, keepdim=True).clamp_min(1e-12)
        value = -(q * F.log_softmax(z, dim=1)).sum(dim=1).mean()
    costs = tag_costs(z, batch["cand"], loss).masked_fill(~batch["mask"], float("inf"))
    if listwise_weight > 0:
        scale = LISTWISE_TEMPERATURE if loss == "bce" else 1.0
        value = value + listwise_weight * F.cross_entropy(-costs / scale, batch["true"])
    return value, costs.argmin(dim=1) == batch["true"]


def _tensors(data: LabelledImages) -> dict[str, torch.Tensor]:
    return {
        "x": torch.from_numpy(data.features.astype(np.float32)),
        "y": torch.from_numpy(data.targets.astype(np.float32)),
        "cand": torch.from_numpy(data.candidates.astype(np.float32)),
        "mask": torch.from_numpy(data.candidate_mask.astype(bool)),
        "true": torch.from_numpy(data.true_index.astype(np.int64)),
    }


def fit_head(
    train: LabelledImages,
    val: LabelledImages | None,
    *,
    loss: LossName = "bce",
    hidden: int = 512,
    dropout: float = 0.3,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    max_epochs: int = 60,
    patience: int = 10,
    listwise_weight: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Train a head with Adam; keep the epoch whose validation images rank their true tag first
    most often (ties: lower validation loss), stopping after ``patience`` epochs without one.
    ``device`` is where it trains (the returned head is on the CPU, as a loaded one is)."""
    if len(train) == 0:
        raise ValueError("no training images")
    with _one_thread():
        return _fit_head(train, val, loss=loss, hidden=hidden, dropout=dropout, lr=lr,
                         batch_size=batch_size, weight_decay=weight_decay, max_epochs=max_epochs,
                         patience=patience, listwise_weight=listwise_weight, seed=seed,
                         device=torch.device(device))


@contextmanager
def _one_thread() -> Iterator[None]:
    """A head is far too small to gain from threads, and with the other core busy two torch
    threads ran it about 20x slower here; so train on one and restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_head(train: LabelledImages, val: LabelledImages | None, *, loss: LossName, hidden: int,
              dropout: float, lr: float, batch_size: int, weight_decay: float, max_epochs: int,
              patience: int, listwise_weight: float, seed: int, device: torch.device) -> FitResult:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    head = TaggerHead(train.features.shape[1], train.targets.shape[1], hidden, dropout)
    head.fit_standardisation(train.features)
    head.to(device)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    tr = {k: v.to(device) for k, v in _tensors(train).items()}  # on the device once, not per batch
    va = {k: v.to(device) for k, v in _tensors(val).items()} if val is not None and len(val) else None
    best_state, best, best_epoch = None, (-1.0, float("inf")), 0
    train_curve: list[float] = []
    val_curve: list[float] = []
    val_hits: list[float] = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        head.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            value, _ = _loss(head, {k: v[rows] for k, v in tr.items()}, loss, listwise_weight)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            total += float(value.detach()) * len(rows)
        train_curve.append(total / len(train))
        if va is None:
            continue
        head.eval()
        with torch.no_grad():
            value, hit = _loss(head, va, loss, listwise_weight)
        val_curve.append(float(value))
        val_hits.append(float(hit.float().mean()))
        # Select on what the head is for -- ranking each image's own product tags -- with the
        # loss only to break ties: noisy catalogue labels make the loss a poor guide alone.
        current = (val_hits[-1], -val_curve[-1])
        if current > best:
            best, best_epoch, best_state = current, epoch, copy.deepcopy(head.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        best_epoch = epoch
    head.eval()
    head.to("cpu")
    return FitResult(head, epoch, best_epoch, train_curve, val_curve, val_hits)
