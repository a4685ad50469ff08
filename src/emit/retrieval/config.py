"""The retrieval model's configuration: one typed dataclass, saved beside every run.

The defaults follow Aggarwal et al. 2019 (frozen CNN features as the target space, an LSTM over
word vectors, multitask over titles and click queries, batch size 512, Adam with beta1 = 0.99)
except where our measurements on Flickr8k and the fashion data (docs/retrieval.md) found
something clearly better; those are marked "measured". The paper's own setting is a few flags
away: ``--loss patr --mining any --num-layers 5 --no-normalise-images --no-image-projection``
(``--hidden 512``, emit's earlier width, is our choice: the paper gives no width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from emit.problems import EmitError

TASKS = ("multitask", "titles", "clicks")
MINING_MODES = ("any", "all", "none")
CLICK_WEIGHTS = ("none", "log", "count")
LR_SCHEDULES = ("constant", "cosine")
# the registered text encoders (emit.retrieval.encoders), named here so the CLI need not import torch
TEXT_ENCODERS = ("lstm", "minilm", "e5", "minilm+e5")


@dataclass
class RetrievalConfig:
    """Everything that decides a retrieval model (``emit retrieval train``)."""

    # image side: a frozen CNN; its pooled features are the space texts are mapped into
    backbone: str = "efficientnet-lite0"
    weights: str | None = None  # local checkpoint for the backbone
    normalise_images: bool = True  # L2-normalise the image features (the paper keeps them raw; measured)
    image_projection: bool = True  # beyond the paper: also learn a linear map of the image side (measured)
    # text side
    # 'lstm' (the paper), or frozen sentence model(s) + MLP: 'minilm', 'e5' (multilingual) or
    # 'minilm+e5' (both side by side; the best we measured on Flickr8k)
    encoder: str = "lstm"
    vectors: str | None = None  # word vectors for 'lstm': None = GloVe 6B-50d package; or a file
    hidden: int = 256  # LSTM width (our choice; the paper gives only the depth)
    # The paper stacks 5 layers; one trains faster and better on our data (measured).
    num_layers: int = 1
    dropout: float = 0.25  # between LSTM layers (the paper), so none with the default 1 layer
    min_count: int = 2  # words without a vector are kept if seen this often
    max_tokens: int = 48
    # objective
    # patr (the paper) | triplet | l2 | vse | infonce. InfoNCE over cosine similarities ranks far
    # better than PATR on squared distances in our measurements, so it is the default.
    loss: str = "infonce"
    # In squared-distance units. None: the median squared distance from a training image to its
    # n_negatives-th nearest image in a random batch, where hard negatives sit (our choice; the
    # scale of CNN features varies with the backbone and normalisation).
    margin: float | None = None
    n_negatives: int = 5  # mined in-batch negatives per anchor (patr, triplet)
    mining: Literal["any", "all", "none"] = "any"  # which in-batch texts may not give negatives
    # Comma-separated words that never block a negative, on top of the English stopwords.
    # Catalogue texts repeat words like "men" or "women" everywhere; with mining 'any' they
    # would otherwise remove every same-gender negative, the hardest ones.
    extra_stopwords: str = ""
    temperature: float = 0.07  # infonce only
    click_weight: Literal["none", "log", "count"] = "log"  # per-pair weight of a clicked query
    tasks: Literal["multitask", "titles", "clicks"] = "multitask"
    # optimisation
    batch_size: int = 512
    lr: float = 1e-3
    # 'cosine': lr * (1 + cos(pi * step / total steps)) / 2, set every step, so a resumed run
    # continues the same curve (our choice; it helped the sentence-model encoders, measured)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    beta1: float = 0.99  # the paper's Adam beta1
    beta2: float = 0.999
    grad_clip: float = 10.0  # max gradient norm; 0 = off (our choice, for the deep LSTM)
    epochs: int = 10
    val_fraction: float = 0.1  # share of training *images* held out for validation each epoch
    seed: int = 0

    def validate(self) -> RetrievalConfig:
        from emit.retrieval.encoders import list_text_encoders
        from emit.retrieval.losses import LOSSES, NEEDS_NEGATIVES

        checks = [
            (isinstance(self.backbone, str) and bool(self.backbone.strip()), "backbone must be named"),
            (self.encoder in list_text_encoders(),
             f"encoder must be one of {', '.join(list_text_encoders())}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (self.mining in MINING_MODES, "mining must be 'any', 'all' or 'none'"),
            (self.tasks in TASKS, "tasks must be 'multitask', 'titles' or 'clicks'"),
            (self.click_weight in CLICK_WEIGHTS, "click_weight must be 'none', 'log' or 'count'"),
            (self.margin is None or self.margin >= 0, "margin must be >= 0 (or None for automatic)"),
            (self.n_negatives >= 1 or self.loss not in NEEDS_NEGATIVES,
             f"n_negatives must be >= 1 for the {self.loss} loss"),
            (self.n_negatives >= 0, "n_negatives must be >= 0"),
            (self.temperature > 0, "temperature must be positive"),
            (self.batch_size >= 1 and self.epochs >= 1, "batch_size and epochs must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule must be 'constant' or 'cosine'"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (min(self.hidden, self.num_layers, self.min_count, self.max_tokens) >= 1,
             "hidden, num_layers, min_count and max_tokens must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmitError(f"bad retrieval configuration: {message}")
        return self

    @property
    def metric(self) -> Literal["l2", "ip"]:
        """How texts and images are compared: squared L2 (the paper), or cosine for InfoNCE."""
        return "ip" if self.loss == "infonce" else "l2"
