"""In-batch hard-negative mining for PATR / triplet training.

For a batch of B (text, image) pairs, the negatives of anchor text i are the images v_j of the
other pairs, nearest first by squared distance ``d(t_i, v_j)``. Near images are only useful
negatives if they really do not match the text, so some are excluded:

* always: j == i, and every j with i's image id (captions of the same image are positives);
* ``mode='any'``: j whose text shares any content word with anchor i's text (conservative);
* ``mode='all'``: j whose text contains all of anchor i's content words (a superset caption
  that likely describes the same thing); partial overlaps stay, so negatives are harder;
* ``mode='none'``: only the image-id rule.

With image ids, the candidates are images, not pairs: an image whose texts fill several
columns of the batch is a candidate once (at its first column), and it is barred when the
word rule bars any of its texts, so the N negatives are N distinct images.

Content words are tokens minus stopwords, compared case-folded; tokens with no letter or digit
(punctuation) are dropped (:func:`emit.text.tokenize.content_words`, with its English stop
words by default). Texts arrive as token lists, so Chinese titles must be segmented first
(e.g. with Jieba). Everything is vectorised over pairs: word overlaps come from one
product of a (B, V) bag-of-words incidence matrix with its transpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch

from emit.retrieval.distances import IdsLike, pairwise_sq_dist, same_id_mask
from emit.text.tokenize import STOPWORDS_EN, content_words

MiningMode = Literal["any", "all", "none"]
OverlapMode = Literal["any", "all"]


def word_overlap_matrix(
    token_lists: Sequence[Sequence[str]],
    stopwords: Iterable[str] | None = None,
    mode: OverlapMode = "any",
) -> torch.Tensor:
    """(B, B) bool: True where text j shares words with anchor text i (row = anchor).

    ``mode='any'``: at least one common content word (symmetric). ``mode='all'``: text j holds
    every content word of text i (not symmetric); an anchor with no content word matches
    nothing, rather than everything, so it keeps all its negatives. ``stopwords`` defaults to
    :data:`emit.text.tokenize.STOPWORDS_EN`.
    """
    if mode not in ("any", "all"):
        raise ValueError(f"unknown overlap mode {mode!r}; use 'any' or 'all'")
    if isinstance(token_lists, str) or any(isinstance(t, str) for t in token_lists):
        raise TypeError("token_lists must hold one list of tokens per text, not strings")
    stop = STOPWORDS_EN if stopwords is None else frozenset(w.casefold() for w in stopwords)
    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, tokens in enumerate(token_lists):  # one pass over tokens; pairs are never looped
        for w in dict.fromkeys(content_words(tokens, stop)):  # each distinct word once
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    incidence = torch.zeros(len(token_lists), len(vocab))
    incidence[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0
    shared = incidence @ incidence.T  # (B, B) number of distinct words i and j share; exact in float32
    if mode == "any":
        return shared > 0
    n_words = incidence.sum(dim=1, keepdim=True)  # |words of anchor i|
    return (shared == n_words) & (n_words > 0)


def mine_negatives(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    words: Sequence[Sequence[str]] | torch.Tensor | np.ndarray | None,
    image_ids: IdsLike | None,
    n_negatives: int,
    mode: MiningMode = "any",
    *,
    stopwords: Iterable[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``n_negatives`` nearest allowed images for each anchor text.

    ``text_emb`` and ``image_emb`` are (B, D), row i being pair i. ``words`` is either the B
    texts' token lists or a precomputed (B, B) bool exclusion matrix (``shares_words``, row =
    anchor, e.g. from :func:`word_overlap_matrix` with the same mode), used as given; it is
    ignored, and may be None, for ``mode='none'``. ``image_ids`` (B,) groups pairs of one image
    (None: all distinct): an image is never its own texts' negative, is a candidate at most once
    (at its first column), and is barred when any of its texts in the batch is.

    Returns ``neg_index`` (B, N) long, nearest first (ties by index), and ``valid`` (B, N) bool.
    When fewer than N candidates remain the rest is padding: ``valid`` False and the index is
    the anchor's own (always in range, so ``image_emb[neg_index]`` works; pass ``valid`` as the
    loss ``mask``). No gradient flows through mining.
    """
    if mode not in ("any", "all", "none"):
        raise ValueError(f"unknown mining mode {mode!r}; use 'any', 'all' or 'none'")
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    if text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected text and image embeddings of one (B, D) shape, got {tuple(text_emb.shape)}, "
            f"{tuple(image_emb.shape)}"
        )
    b, device = text_emb.shape[0], text_emb.device
    excluded = torch.eye(b, dtype=torch.bool, device=device)
    if image_ids is not None:
        same = same_id_mask(image_ids, device)
        if same.shape != (b, b):
            raise ValueError(f"got {same.shape[0]} image ids for a batch of {b}")
        excluded |= same
    if mode != "none":
        if words is None:
            raise ValueError(f"mode {mode!r} needs token lists or a shares_words matrix")
        if isinstance(words, torch.Tensor | np.ndarray):
            shares = torch.as_tensor(words, device=device)
            if shares.dtype != torch.bool or shares.shape != (b, b):
                msg = f"shares_words must be bool ({b}, {b}), got {shares.dtype} {tuple(shares.shape)}"
                raise ValueError(msg)
        else:
            if len(words) != b:
                raise ValueError(f"got {len(words)} token lists for a batch of {b}")
            shares = word_overlap_matrix(words, stopwords, mode).to(device)
        excluded |= shares
    if image_ids is not None:
        # One candidate per image: an image is barred if any of its texts in the batch is, and
        # only its first column stays, so the N negatives are N distinct images.
        excluded = (excluded.float() @ same.float()) > 0
        index = torch.arange(b, device=device)
        later_copy = (same & (index.unsqueeze(1) < index.unsqueeze(0))).any(dim=0)
        excluded |= later_copy.unsqueeze(0)

    with torch.no_grad():
        dist = pairwise_sq_dist(text_emb.detach(), image_emb.detach()).masked_fill(excluded, float("inf"))
        # Stable sort rather than topk so ties resolve by index, reproducibly.
        dist, order = torch.sort(dist, dim=1, stable=True)
        k = min(n_negatives, b)
        neg_index, valid = order[:, :k], torch.isfinite(dist[:, :k])
        if k < n_negatives:
            pad = n_negatives - k
            neg_index = torch.cat([neg_index, neg_index.new_zeros(b, pad)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(b, pad)], dim=1)
        own = torch.arange(b, device=device).unsqueeze(1).expand(b, n_negatives)
        return torch.where(valid, neg_index, own), valid
