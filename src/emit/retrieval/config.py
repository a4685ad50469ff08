"""The retrieval model's configuration: one typed dataclass, saved beside every run.

The method is Aggarwal et al. 2019's (frozen CNN features as the target space, a text encoder
trained into it, multitask over titles and click queries, batch size 512, Adam with beta1 =
0.99). The defaults are what measured best on our development data (docs/retrieval.md, "The
default configuration"), marked "measured": a frozen sentence model and an MLP as the text
encoder ('auto': MiniLM for English, the multilingual e5 for Chinese, both for a mix), Lite0 and
Lite2 features side by side as the image side, InfoNCE on cosine similarities, lr 5e-4 on a
cosine schedule, and about 300 optimiser steps. Three settings are
decided by the data a run is given and recorded in the run: ``tasks``, ``encoder`` and
``epochs`` (:func:`resolve_tasks`, :func:`resolve_data_settings`). The paper's own setting (the
LSTM over word vectors, PATR on squared distances in the raw CNN space) is the preset ``paper``
(:mod:`emit.retrieval.presets`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from emit.config import BACKBONE_HELP, from_dict, setting
from emit.problems import EmitError
from emit.retrieval.encoders.names import (
    ENCODER_SETTINGS,
    encoder_settings,
    list_text_encoders,
    resolve_text_encoder,
)
from emit.retrieval.losses.registry import get_loss, list_losses, loss_metric
from emit.retrieval.metric import Metric
from emit.retrieval.presets import list_presets, preset_settings

TASKS = ("auto", "multitask", "titles", "clicks")
# epochs=None trains about this many optimiser steps (measured on Flickr8k and the fashion data,
# docs/retrieval.md), within these bounds: tiny data sets do not train for hundreds of epochs,
# huge ones still see their data twice
AUTO_STEPS = 300
AUTO_EPOCHS_MIN, AUTO_EPOCHS_MAX = 2, 60
MINING_MODES = ("any", "all", "none")
CLICK_WEIGHTS = ("none", "log", "count")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class RetrievalConfig:
    """Everything that decides a retrieval model (``emit retrieval train``)."""

    # a named bundle of the settings below (emit.retrieval.presets); a setting given explicitly
    # wins over it; recorded so a run says which bundle it started from
    preset: str = setting("standard", "a named bundle of settings, which flags typed explicitly override: "
                                      "standard (emit's measured defaults), paper (Aggarwal et al. 2019 "
                                      "as published) or fast (MiniLM, 4 epochs)",
                          choices="presets")

    # image side: a frozen CNN; its pooled features are the space texts are mapped into
    # Lite0 and Lite2 side by side (measured: better than Lite0 alone on Flickr8k in English and
    # Chinese and on the fashion data; three times Lite0's extraction, twice its index width)
    backbone: str = setting("efficientnet-lite0+efficientnet-lite2",
                            "frozen image backbone: " + BACKBONE_HELP, names="backbones")
    weights: str | None = setting(None, "local checkpoint for the backbone")
    # the paper keeps the image features raw (measured)
    normalise_images: bool = setting(True, "L2-normalise the image features")
    image_projection: bool = setting(  # measured
        True, "also learn a linear map of the image features (beyond the paper)")
    # text side
    # 'lstm' (the paper), or frozen sentence model(s) + MLP: 'minilm', 'e5' (multilingual) or
    # 'minilm+e5' (both side by side; the best we measured on Flickr8k)
    # 'auto' (measured): MiniLM for English texts, the multilingual e5 for Chinese (or any text
    # in another script), both for a mix; the run records which it resolved to
    encoder: str = setting("auto", "text encoder: auto (minilm for English, e5 for Chinese or other "
                                   "scripts, minilm+e5 for a mix of both), lstm (the paper), or frozen "
                                   "sentence model(s) + a trained MLP (minilm, e5, minilm+e5)",
                           choices="text_encoders")
    vectors: str | None = setting(None, "word vectors for lstm: a GloVe .txt, fastText .vec or .bin file "
                                        "(if not given: the GloVe 6B-50d package)")
    hidden: int = setting(256, "LSTM width")  # our choice; the paper gives only the depth
    # The paper stacks 5 layers; one trains faster and better on our data (measured).
    num_layers: int = setting(1, "LSTM layers")
    # between LSTM layers (the paper), so none with the default 1 layer
    dropout: float = setting(0.25, "dropout between LSTM layers")
    min_count: int = setting(2, "keep words without a vector seen this often")
    max_tokens: int = setting(48, "tokens read per text")
    # the sentence encoders' trained MLP, from the frozen embedding to the image space
    mlp_hidden: int = setting(1024, "hidden width of the sentence encoders' MLP (0 = one linear layer)")
    mlp_dropout: float = setting(0.1, "dropout in the sentence encoders' MLP")
    # objective
    # patr (the paper) | triplet | l2 | vse | infonce. InfoNCE over cosine similarities ranks far
    # better than PATR on squared distances in our measurements, so it is the default.
    loss: str = setting("infonce", "training loss", choices="losses")
    # In squared-distance units. None: the median squared distance from a training image to its
    # n_negatives-th nearest image in a random batch, where hard negatives sit (our choice; the
    # scale of CNN features varies with the backbone and normalisation).
    margin: float | None = setting(None, "loss margin in squared-distance units (if not given: the median "
                                         "squared distance from an image to its n-negatives-th nearest "
                                         "image in a batch)")
    n_negatives: int = setting(5, "in-batch hard negatives per anchor (patr, triplet)")
    mining: Literal["any", "all", "none"] = setting(
        "any", "never take negatives from texts sharing any / all of the anchor's words, or only exclude "
               "the same image (none)")
    # Comma-separated words that never block a negative, on top of the English stopwords.
    # Catalogue texts repeat words like "men" or "women" everywhere; with mining 'any' they
    # would otherwise remove every same-gender negative, the hardest ones.
    extra_stopwords: str = setting("", "comma-separated words that never block a negative, e.g. "
                                       "'men,women' for catalogue texts (added to the English stopwords)")
    temperature: float = setting(0.07, "InfoNCE temperature")
    click_weight: Literal["none", "log", "count"] = setting(
        "log", "weight of a clicked query: none, log(1 + clicks), clicks")
    # 'auto' trains what the data allow, so a user with captions alone needs no flag; a run
    # records the task it resolved to
    tasks: Literal["auto", "multitask", "titles", "clicks"] = setting(
        "auto", "auto (what the data given allow: titles and clicks -> multitask, else the one "
                "given), multitask (titles + clicks, the paper's eq. 4), titles or clicks")
    # optimisation
    batch_size: int = setting(512, "pairs per task and step")
    lr: float = setting(5e-4, "Adam learning rate")  # measured with the sentence encoders
    # 'cosine': lr * (1 + cos(pi * step / total steps)) / 2, set every step, so a resumed run
    # continues the same curve (our choice; it helped the sentence-model encoders, measured)
    lr_schedule: Literal["constant", "cosine"] = setting(
        "cosine", "cosine: decay to 0 over the epochs, per step; or constant")
    beta1: float = setting(0.99, "Adam beta1 (the paper: 0.99)")
    beta2: float = setting(0.999, "Adam beta2")
    grad_clip: float = setting(10.0, "clip the gradient norm (0 = off)")  # our choice, for the deep LSTM
    # None: as many epochs as make about AUTO_STEPS optimiser steps (measured), so a short
    # catalogue gets as much training as a large caption set; the run records the number
    epochs: int | None = setting(None, "training epochs (if not given: enough for about 300 optimiser "
                                       "steps, between 2 and 60 epochs; a killed run resumes, and may be "
                                       "given more epochs before it has finished, except with "
                                       "--lr-schedule cosine)")
    val_fraction: float = setting(0.1, "share of images held out for validation (0 = none)")
    seed: int = setting(0, "random seed")

    def validate(self) -> RetrievalConfig:
        checks = [
            (isinstance(self.backbone, str) and bool(self.backbone.strip()), "backbone must be named"),
            (self.encoder in list_text_encoders(),
             f"encoder must be one of {', '.join(list_text_encoders())}"),
            (self.loss in list_losses(), f"loss must be one of {', '.join(list_losses())}"),
            (self.mining in MINING_MODES, "mining must be 'any', 'all' or 'none'"),
            (self.tasks in TASKS, "tasks must be 'auto', 'multitask', 'titles' or 'clicks'"),
            (self.preset in list_presets(), f"preset must be one of {', '.join(list_presets())}"),
            (self.click_weight in CLICK_WEIGHTS, "click_weight must be 'none', 'log' or 'count'"),
            (self.margin is None or self.margin >= 0, "margin must be >= 0 (or None for automatic)"),
            (self.n_negatives >= 1 or self.loss not in list_losses()
             or not get_loss(self.loss).needs_negatives,
             f"n_negatives must be >= 1 for the {self.loss} loss"),
            (self.n_negatives >= 0, "n_negatives must be >= 0"),
            (self.temperature > 0, "temperature must be positive"),
            (self.batch_size >= 1 and (self.epochs is None or self.epochs >= 1),
             "batch_size and epochs must be >= 1 (epochs None: automatic)"),
            (self.lr > 0, "lr must be positive"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule must be 'constant' or 'cosine'"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (min(self.hidden, self.num_layers, self.min_count, self.max_tokens) >= 1,
             "hidden, num_layers, min_count and max_tokens must be >= 1"),
            (self.mlp_hidden >= 0 and 0 <= self.mlp_dropout < 1,
             "mlp_hidden must be >= 0 and mlp_dropout in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmitError(f"bad retrieval configuration: {message}")
        # a setting only another kind of encoder reads would be silently ignored: refuse it
        reads = encoder_settings(self.encoder)
        for f in fields(self):
            if f.name in ENCODER_SETTINGS - reads and getattr(self, f.name) != f.default:
                raise EmitError(f"bad retrieval configuration: {f.name} = {getattr(self, f.name)!r} is not "
                                f"used by the {self.encoder} text encoder (it reads "
                                f"{', '.join(sorted(reads))}); leave {f.name} at its default "
                                f"({f.default!r}), or choose an encoder that reads it")
        return self

    @property
    def metric(self) -> Metric:
        """How texts and images are compared: the loss's metric (emit.retrieval.losses.registry):
        squared L2 (the paper), or cosine for InfoNCE."""
        return loss_metric(self.loss)


def resolve_tasks(tasks: str, has_titles: bool, has_clicks: bool) -> str:
    """The task a run trains: ``tasks`` itself, or for 'auto' what the data allow (both kinds of
    texts: multitask; one kind: that one). An error when nothing was given to train on."""
    if tasks != "auto":
        return tasks
    if has_titles and has_clicks:
        return "multitask"
    if has_titles or has_clicks:
        return "titles" if has_titles else "clicks"
    raise EmitError("nothing to train on: give --titles FILE (captions or titles), --clicks FILE "
                    "(a click log), or both")


# What a setting was before it existed: a saved configuration (a run, a checkpoint) without the
# key was made with this value, whatever today's default is.
VALUES_BEFORE_THE_SETTING: dict[str, Any] = {"lr_schedule": "constant", "encoder": "lstm"}


def saved_config(data: dict[str, Any]) -> RetrievalConfig:
    """The configuration a run or checkpoint recorded: keys a newer emit wrote are ignored, and a
    key an older emit did not write takes the value it had then (or else today's default)."""
    return from_dict(RetrievalConfig, {**VALUES_BEFORE_THE_SETTING, **data})


def resolve_epochs(epochs: int | None, steps_per_epoch: int) -> int:
    """The epochs a run trains: ``epochs`` itself, or for None (automatic) the fewest that make
    :data:`AUTO_STEPS` steps of ``steps_per_epoch``, within AUTO_EPOCHS_MIN..AUTO_EPOCHS_MAX."""
    if epochs is not None:
        return epochs
    wanted = math.ceil(AUTO_STEPS / max(1, steps_per_epoch))
    return min(AUTO_EPOCHS_MAX, max(AUTO_EPOCHS_MIN, wanted))


def resolve_data_settings(config: RetrievalConfig, texts: Sequence[str], steps_per_epoch: int
                          ) -> RetrievalConfig:
    """``config`` with the settings left to the data decided: the 'auto' text encoder from the
    training ``texts``' script and the automatic epoch count from the ``steps_per_epoch``."""
    return replace(config, encoder=resolve_text_encoder(config.encoder, texts),
                   epochs=resolve_epochs(config.epochs, steps_per_epoch))


def with_preset(config: RetrievalConfig, given: set[str] | frozenset[str] = frozenset()) -> RetrievalConfig:
    """``config`` with its preset's settings applied, except those named in ``given`` (the
    settings the user set explicitly, which win)."""
    values = {k: v for k, v in preset_settings(config.preset).items() if k not in given}
    encoder = values.get("encoder", config.encoder)
    # a preset's settings for another text encoder than the one chosen do not apply to it
    values = {k: v for k, v in values.items()
              if k not in ENCODER_SETTINGS or k in encoder_settings(encoder)}
    return replace(config, **values)


def from_preset(name: str, **settings: Any) -> RetrievalConfig:
    """The library's ``--preset``: preset ``name``, with ``settings`` winning over it."""
    return with_preset(RetrievalConfig(preset=name, **settings), set(settings))
