"""Symmetric InfoNCE (CLIP-style) loss over a batch of (text, image) pairs.

Logits are cosine similarities (``'ip'`` scores of unit vectors) divided by ``temperature``.
Text i is classified against the batch's images with its own image as the target, and image
i against the texts likewise; the two cross-entropies are averaged. Other pairs with the same
image id (several captions of one picture), and optionally with the same text id, are masked
out of the softmax: they are neither the target nor a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import (
    IdsLike,
    Reduction,
    positive_mask,
    reduce_loss,
    score_matrix,
    text_groups,
    unit_rows,
)
from emit.retrieval.losses.batch import LossBatch


def infonce_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: IdsLike | None = None,
    temperature: float | torch.Tensor = 0.07,
    *,
    text_ids: IdsLike | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """InfoNCE loss for (B, D) texts and the (B, D) images of the same B pairs.

    ``temperature`` may be a learnable scalar tensor (CLIP learns its log). Per pair:
    ``(CE_text->image + CE_image->text) / 2``. ``text_ids`` (B,) groups pairs with the same
    text: like pairs of one image, they are masked rather than used as negatives (a click
    query such as "men black shirt" is right for many images).
    """
    if text.ndim != 2 or text.shape != image.shape:
        raise ValueError(f"expected (B, D) text and image, got {tuple(text.shape)}, {tuple(image.shape)}")
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = score_matrix(unit_rows(text), unit_rows(image), "ip") / temperature
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    others = positive_mask(n, image_ids, logits.device)  # same image ...
    if text_ids is not None:
        others = others | positive_mask(n, text_ids, logits.device)  # ... or same text
    others = others & ~eye  # not the target
    logits = logits.masked_fill(others, float("-inf"))  # the diagonal stays finite
    t2i = -F.log_softmax(logits, dim=1).diagonal()
    i2t = -F.log_softmax(logits, dim=0).diagonal()
    return reduce_loss((t2i + i2t) / 2, reduction)


def per_pair(batch: LossBatch, config: RetrievalConfig) -> torch.Tensor:
    """(B,) InfoNCE losses at the batch's temperature (the registry's convention); identical
    texts of other images are not negatives either."""
    text_ids = torch.from_numpy(text_groups([" ".join(t) for t in batch.tokens], len(batch.tokens)))
    return infonce_loss(batch.text, batch.image, batch.rows, batch.temperature, text_ids=text_ids,
                        reduction="none")
