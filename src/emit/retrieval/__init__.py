"""Text-to-image retrieval: map titles and queries into a frozen CNN's image-feature space.

Follows Aggarwal et al. 2019, "Multitask Text-to-Visual Embedding with Titles and Clickthrough
Data": a text encoder is trained so that a text lands near the CNN features of its image. What a
library user needs is importable from here::

    from emit.retrieval import Pairs, RetrievalConfig, train_retrieval, list_losses

    model = train_retrieval(features, Pairs(texts, rows), config=RetrievalConfig(tasks="titles"))

The modules, bottom up (each imports only those above it in this list, never this package):

* :mod:`~emit.retrieval.metric`, :mod:`~emit.retrieval.layout` -- the 'l2' / 'ip' vocabulary and
  the run folder's file names;
* :mod:`~emit.retrieval.losses.registry`, :mod:`~emit.retrieval.encoders.names` -- the losses
  and text encoders by name (torch-free), and :mod:`~emit.retrieval.config`, the settings;
* :mod:`~emit.retrieval.distances` -- the score maths; :mod:`~emit.retrieval.mining` --
  in-batch hard negatives; :mod:`~emit.retrieval.losses` -- the training objectives;
* :mod:`~emit.retrieval.encoders` -- the text encoders and the image projection;
* :mod:`~emit.retrieval.pairs` -- the training data and its validation split;
* :mod:`~emit.retrieval.model` -- :class:`RetrievalModel` and its saved format;
* :mod:`~emit.retrieval.hubness`, :mod:`~emit.retrieval.index`, :mod:`~emit.retrieval.evaluate`
  -- the hubness correction, FAISS indexes, and evaluation (also of the validation split);
* :mod:`~emit.retrieval.checkpoint` and :mod:`~emit.retrieval.train` -- resumable training,
  built on ``train_one_epoch``;
* :mod:`~emit.retrieval.search` -- :class:`IndexSearcher`; :mod:`~emit.retrieval.jobs` -- the
  command line's jobs on files.

The names below are loaded on first use, so ``import emit.retrieval.config`` (the command
line) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "RetrievalConfig": "emit.retrieval.config",
    "Pairs": "emit.retrieval.pairs",
    "split_validation": "emit.retrieval.pairs",
    "RetrievalModel": "emit.retrieval.model",
    "TrainState": "emit.retrieval.train",
    "new_state": "emit.retrieval.train",
    "prepare_tasks": "emit.retrieval.train",
    "train_step": "emit.retrieval.train",
    "train_one_epoch": "emit.retrieval.train",
    "train_retrieval": "emit.retrieval.train",
    "is_trained": "emit.retrieval.checkpoint",
    "LossBatch": "emit.retrieval.losses.batch",
    "LossSpec": "emit.retrieval.losses.registry",
    "get_loss": "emit.retrieval.losses.registry",
    "list_losses": "emit.retrieval.losses.registry",
    "loss_metric": "emit.retrieval.losses.registry",
    "encoder_settings": "emit.retrieval.encoders.names",
    "list_text_encoders": "emit.retrieval.encoders.names",
    "TextEncoder": "emit.retrieval.encoders.base",
    "ImageProjection": "emit.retrieval.encoders.projection",
    "build_encoder": "emit.retrieval.encoders.registry",
    "create_text_encoder": "emit.retrieval.encoders.registry",
    "load_text_encoder": "emit.retrieval.encoders.registry",
    "save_text_encoder": "emit.retrieval.encoders.registry",
    "score_matrix": "emit.retrieval.distances",
    "evaluate_captions": "emit.retrieval.evaluate",
    "evaluate_embeddings": "emit.retrieval.evaluate",
    "evaluate_model": "emit.retrieval.evaluate",
    "score_validation": "emit.retrieval.evaluate",
    "HubnessBank": "emit.retrieval.hubness",
    "SearchIndex": "emit.retrieval.index",
    "build_index": "emit.retrieval.index",
    "load_index": "emit.retrieval.index",
    "IndexSearcher": "emit.retrieval.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
