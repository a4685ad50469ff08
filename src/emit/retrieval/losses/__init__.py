"""Training losses that pull a text embedding onto its image's CNN features.

Two families, by what they need from the batch:

* per-anchor losses with explicit negatives -- ``patr_loss`` and ``triplet_loss`` take
  ``(text, pos, neg)`` with ``neg`` (B, N, D), e.g. ``image_emb[neg_index]`` from
  :func:`emit.retrieval.mining.mine_negatives`, and its ``valid`` as ``mask``; ``l2_loss``
  takes only ``(text, pos)``;
* in-batch losses -- ``vse_loss`` and ``infonce_loss`` take ``(text, image, image_ids)`` and
  use every other pair of the batch as a negative, except pairs of the same image.

``LOSSES`` maps a config name to its function; ``NEEDS_NEGATIVES`` lists the names that need
mined negatives.
"""

from collections.abc import Callable

import torch

from emit.retrieval.losses.infonce import infonce_loss
from emit.retrieval.losses.l2 import l2_loss
from emit.retrieval.losses.patr import patr_loss
from emit.retrieval.losses.triplet import triplet_loss
from emit.retrieval.losses.vse import score_matrix, vse_loss

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "patr": patr_loss,
    "triplet": triplet_loss,
    "l2": l2_loss,
    "vse": vse_loss,
    "infonce": infonce_loss,
}
NEEDS_NEGATIVES: frozenset[str] = frozenset({"patr", "triplet"})

__all__ = [
    "LOSSES",
    "NEEDS_NEGATIVES",
    "infonce_loss",
    "l2_loss",
    "patr_loss",
    "score_matrix",
    "triplet_loss",
    "vse_loss",
]
