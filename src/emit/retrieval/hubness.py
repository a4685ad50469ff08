"""Hubness correction at query time: inverted softmax against a bank of training items.

In a shared embedding space some items are *hubs*: near to very many queries, so they top the
ranking of queries they do not belong to. Image -> text search suffers most: a few generic
caption vectors sit close to every image. The correction (inverted softmax, Smith et al. 2017;
query-bank normalisation, Bogolin et al. 2022) lowers every candidate's score by how close it
is to a *bank* of typical queries::

    s'(q, c) = s(q, c) - bias_c,    bias_c = (1 / beta) log sum_{b in bank} exp(beta s(b, c))

The bank holds queries of the other modality that training saw: training *images* for the
texts searched from an image (direction ``image_to_text``), training *texts* for the images
searched from a text (``text_to_image``). ``s`` is the model's own score (the same
:func:`emit.retrieval.distances.score_matrix`): cosine for ``metric='ip'``, minus the
squared distance for ``'l2'``; ``beta`` is in those units. As beta grows the bias tends to the
candidate's best bank score, as it shrinks to the mean bank score plus log(bank size) / beta.

``bias_c`` depends on the candidate only, so it never changes which candidate a single query
prefers *for the same bias*; it reorders only candidates with different biases. That makes it
foldable into a nearest-neighbour index (:func:`fold_candidates`, :func:`fold_queries`): the
index stores one extra coordinate per candidate and the query one constant.

The bank of a run is :class:`HubnessBank` (``hubness_bank.safetensors`` in the run folder),
written by :func:`emit.retrieval.train.train_retrieval` from the images and texts it trained
on (its validation images excluded), so evaluation on held-out images never sees them in it;
:func:`bank_usable` tells whether a run's bank can be read and belongs to its model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emit.files import atomic_write_bytes
from emit.problems import EmitError
from emit.retrieval.distances import score_matrix
from emit.retrieval.layout import BANK_FILE
from emit.retrieval.model import RetrievalModel

log = logging.getLogger("emit")

BANK_FORMAT = "1"
DIRECTIONS = ("auto", "none", "image_to_text", "text_to_image", "both")
# Chosen on emit's inner validation split of the Flickr8k training images, never on the
# reported test images (benchmarks/retrieval_flickr8k_hubness_beta.py, docs/retrieval.md):
# of beta 5-80 on three cosine models, 10 gave the best mean recall over both directions.
# 'auto' is 'both' for cosine models and 'none' for squared-distance ones, whose score scale
# depends on the features and where no beta was measured.
DEFAULT_BETA = 10.0
DEFAULT_DIRECTION = "auto"
# Rows kept per side of a bank. The bank is a sample of "typical queries"; beyond a few
# thousand rows the bias hardly moves (an exploratory check, docs/retrieval.md), while the
# file and the cost of the bias grow with it.
BANK_MAX_ROWS = 8192


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise EmitError(f"unknown hubness direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    return direction


def check_beta(beta: float) -> float:
    """``beta`` if it is a positive finite number; otherwise an error naming the flag."""
    if not (np.isfinite(beta) and beta > 0):
        raise EmitError(f"hubness beta must be positive and finite, got {beta}; "
                        "give --hubness-beta a number such as 10, or use --hubness none")
    return float(beta)


def resolve(direction: str, metric: str) -> str:
    """The direction 'auto' stands for with ``metric``; any other is returned as it is."""
    if _check_direction(direction) != "auto":
        return direction
    return "both" if metric == "ip" else "none"


def corrects(direction: str, target: str) -> bool:
    """Does (resolved) ``direction`` correct the scores of ``target`` ('images' or 'texts') candidates?"""
    if _check_direction(direction) == "auto":
        raise EmitError("resolve 'auto' with the model's metric first (hubness.resolve)")
    wanted = "text_to_image" if target == "images" else "image_to_text"
    return direction in ("both", wanted)


def bank_bias(candidates: Any, bank: Any, *, beta: float = DEFAULT_BETA, metric: str = "ip",
              chunk: int = 2048) -> np.ndarray:
    """(N,) float64: ``(1/beta) log sum_b exp(beta s(b, c))`` for each candidate row ``c``.

    ``candidates`` (N, D) and ``bank`` (M, D) are vectors in the model's space; scores come from
    :func:`~emit.retrieval.distances.score_matrix` with ``metric``. Both sides are taken
    ``chunk`` rows at a time and the log-sum-exp is accumulated, so memory stays at ``chunk^2``
    scores whatever N and M are.
    """
    beta = check_beta(beta)
    c = np.asarray(candidates, dtype=np.float32)
    b = np.asarray(bank, dtype=np.float32)
    if c.ndim != 2 or b.ndim != 2 or c.shape[1] != b.shape[1]:
        raise EmitError(f"candidates and bank must be (N, D) and (M, D); got {c.shape}, {b.shape}")
    if b.shape[0] == 0:
        raise EmitError("the hubness bank is empty; it needs at least one training vector")
    out = np.empty(c.shape[0], dtype=np.float64)
    for i in range(0, c.shape[0], chunk):
        acc = torch.full((min(chunk, c.shape[0] - i),), -torch.inf, dtype=torch.float64)
        for j in range(0, b.shape[0], chunk):
            z = beta * torch.from_numpy(score_matrix(c[i:i + chunk], b[j:j + chunk], metric))
            acc = torch.logaddexp(acc, torch.logsumexp(z, dim=1))  # running log-sum-exp over the bank
        out[i:i + chunk] = (acc / beta).numpy()
    return out


# --------------------------------------------------------------------------- the bank of a run


def _identity_sha(model: RetrievalModel) -> str:
    return hashlib.sha256(json.dumps(model.identity(), sort_keys=True, default=str).encode()).hexdigest()


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row numbers: all of 0..n-1, or a seeded sample of ``max_rows`` of them."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


@dataclass
class HubnessBank:
    """Training images and texts in a model's space: the queries hubs are measured against.

    ``images`` (training image vectors) correct texts for image -> text search; ``texts``
    (distinct training texts) correct images for text -> image search. ``model_sha256`` ties
    the bank to the model whose vectors these are.
    """

    images: np.ndarray
    texts: np.ndarray
    model_sha256: str
    source: str = "training images and distinct training texts of the run (validation held out)"

    def for_target(self, target: str) -> np.ndarray:
        """The bank that corrects ``target`` candidates: images for texts, texts for images."""
        return self.texts if target == "images" else self.images

    def identity(self) -> dict[str, Any]:
        """What an index or report records: the source, sizes, and a hash of the vectors."""
        digest = hashlib.sha256()
        for part in (self.images, self.texts):
            digest.update(np.ascontiguousarray(part, dtype=np.float32).data)
        return {"source": self.source, "images": int(self.images.shape[0]), "texts": int(self.texts.shape[0]),
                "model_sha256": self.model_sha256, "sha256": digest.hexdigest()}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        from safetensors.numpy import save

        data = save({"images": np.ascontiguousarray(self.images, dtype=np.float32),
                     "texts": np.ascontiguousarray(self.texts, dtype=np.float32)},
                    metadata={"format": BANK_FORMAT, "model_sha256": self.model_sha256,
                              "source": self.source})
        return atomic_write_bytes(Path(folder) / BANK_FILE, data)

    @classmethod
    def load(cls, run: str | os.PathLike[str], model: RetrievalModel) -> HubnessBank:
        """The bank of the run folder ``run``, refusing one written for another model."""
        from safetensors import safe_open

        path = Path(run) / BANK_FILE
        if not path.is_file():
            raise EmitError(f"{run}: the run has no hubness bank ({BANK_FILE}); it was trained by an older "
                            "emit. Rerun the same `emit retrieval train` command: a finished run is not "
                            "trained again, only its bank is written. Or pass --hubness none")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                images, texts = fh.get_tensor("images"), fh.get_tensor("texts")
        except Exception as exc:  # safetensors raises its own error types
            raise EmitError(f"{path}: cannot read the hubness bank ({exc}); rerun the same "
                            "`emit retrieval train` command to write it again") from exc
        if meta.get("format") != BANK_FORMAT:
            raise EmitError(f"{path}: hubness bank format {meta.get('format')!r}, but this emit reads "
                            f"{BANK_FORMAT!r}; rerun the same `emit retrieval train` command to write it "
                            "again (a finished run is not trained again)")
        if meta.get("model_sha256") != _identity_sha(model):
            raise EmitError(f"{path}: the bank belongs to another model than {run}'s (the folder mixes two "
                            "runs); rerun the same `emit retrieval train` command to write it again "
                            "(a finished run is not trained again)")
        return cls(images, texts, meta["model_sha256"], meta.get("source", cls.source))


def build_bank(model: RetrievalModel, features: Any, image_rows: Any, texts: Sequence[str], *,
               max_rows: int = BANK_MAX_ROWS, seed: int = 0) -> HubnessBank:
    """The bank of ``model`` from raw image ``features`` (only ``image_rows`` of them: the
    training images) and the training ``texts`` (duplicates dropped). Each side keeps at most
    ``max_rows`` rows, a seeded sample, so big training sets give a bounded bank."""
    rows = np.unique(np.asarray(image_rows, dtype=np.int64))
    rows = rows[_sample(len(rows), max_rows, seed)]
    distinct = list(dict.fromkeys(texts))
    distinct = [distinct[i] for i in _sample(len(distinct), max_rows, seed + 1)]
    x = np.asarray(features, dtype=np.float32)
    return HubnessBank(model.image_vectors(x[rows]), model.text_vectors(distinct), _identity_sha(model))


def bank_usable(folder: str | os.PathLike[str], model: RetrievalModel) -> bool:
    """Does ``folder`` hold a readable hubness bank written for ``model``?"""
    if not (Path(folder) / BANK_FILE).is_file():
        return False
    try:
        HubnessBank.load(folder, model)
    except EmitError as exc:
        log.warning("%s: its hubness bank is unreadable or another model's; writing it again", folder)
        log.debug("%s", exc)
        return False
    return True


def biases(text: Any, image: Any, bank: HubnessBank | None, direction: str, *, beta: float = DEFAULT_BETA,
           metric: str = "ip") -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(text_bias, image_bias)`` for candidate ``text`` (T, D) and ``image`` (I, D) vectors:
    each is None unless ``direction`` (resolved with ``metric``) corrects that side."""
    direction = resolve(direction, metric)
    if direction == "none":
        return None, None
    if bank is None:
        raise EmitError(f"hubness correction {direction!r} needs a bank of training vectors; "
                        "give the run's bank (HubnessBank.load), or use direction 'none'")
    text_bias = (bank_bias(text, bank.images, beta=beta, metric=metric)
                 if corrects(direction, "texts") else None)
    image_bias = (bank_bias(image, bank.texts, beta=beta, metric=metric)
                  if corrects(direction, "images") else None)
    return text_bias, image_bias


def index_correction(vectors: Any, target: str, bank: HubnessBank | None, direction: str, *,
                     beta: float = DEFAULT_BETA, metric: str = "ip") -> dict[str, Any]:
    """The ``build_index`` arguments (``bias``, ``hubness``) that fold the correction of
    (resolved) ``direction`` into an index of ``target`` ('images' or 'texts') ``vectors``;
    empty if it corrects nothing there."""
    if bank is None or not corrects(direction, target):
        return {}
    return {"bias": bank_bias(vectors, bank.for_target(target), beta=beta, metric=metric),
            "hubness": describe(bank, direction, beta)}


def describe(bank: HubnessBank | None, direction: str, beta: float) -> dict[str, Any]:
    """What a report or index records about the (resolved) correction it used."""
    if direction in ("none", "auto") or bank is None:
        return {"direction": "none"}
    return {"direction": direction, "beta": float(beta), "bank": bank.identity()}
