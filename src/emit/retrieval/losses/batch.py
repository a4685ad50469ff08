"""One task's batch as every loss receives it (the registry's calling convention).

:class:`LossBatch` holds what any loss may need; :func:`with_negatives` fills in the mined
negatives for a loss that ``needs_negatives`` (:mod:`emit.retrieval.mining`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.mining import mine_negatives
from emit.text.tokenize import STOPWORDS_EN


@dataclass
class LossBatch:
    """Texts ``(B, D)`` against the images ``(B, D)`` of the same B pairs, and their context.

    ``rows`` (B,) identify the images (pairs of one image are never each other's negatives);
    ``tokens`` are the texts' tokens (word-overlap exclusion in mining, and which texts are the
    same); ``weights`` (B,) the pairs' weights (click counts), applied by the caller to the
    per-pair losses; ``margin`` is in squared-distance units; ``temperature`` is InfoNCE's (a
    float, or a learnable scalar tensor). ``negatives`` (B, N, D) and ``valid`` (B, N) are the
    mined negatives' image vectors and which of them count (:func:`with_negatives`).
    """

    text: torch.Tensor
    image: torch.Tensor
    rows: torch.Tensor
    tokens: Sequence[Sequence[str]]
    weights: torch.Tensor
    margin: float
    temperature: float | torch.Tensor
    negatives: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    def mined(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The negatives and their validity; an error if none were mined."""
        if self.negatives is None or self.valid is None:
            raise ValueError("this loss needs mined negatives: give the batch through with_negatives()")
        return self.negatives, self.valid


def stopwords(config: RetrievalConfig) -> frozenset[str] | None:
    """The words that never block a negative: the English stop words plus ``extra_stopwords``
    (None: the miner's default, the English stop words alone)."""
    extra = {w.strip().lower() for w in config.extra_stopwords.split(",") if w.strip()}
    return STOPWORDS_EN | extra if extra else None


def with_negatives(batch: LossBatch, config: RetrievalConfig) -> LossBatch:
    """``batch`` with each anchor's ``n_negatives`` nearest allowed images of its batch
    (``config.mining`` decides which texts' images are not allowed)."""
    words = None if config.mining == "none" else batch.tokens
    neg_index, valid = mine_negatives(batch.text, batch.image, words, batch.rows, config.n_negatives,
                                      config.mining, stopwords=stopwords(config))
    return replace(batch, negatives=batch.image[neg_index], valid=valid)
