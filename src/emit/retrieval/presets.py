"""Named bundles of retrieval settings: ``emit retrieval train --preset NAME``.

A preset is a documented set of :class:`~emit.retrieval.config.RetrievalConfig` values; a flag
given explicitly wins over it, and the run's configuration records the preset's name. No torch
here: the command line offers and checks the names without loading a model.

* ``standard``: emit's own settings, the configuration's defaults (no change): measured on
  Flickr8k in English and Chinese and on the fashion data (docs/retrieval.md, "The default
  configuration").
* ``paper``: Aggarwal et al. 2019 as published: PATR on squared distances in the raw CNN
  feature space (no normalisation, no learned image projection), negatives that share no word
  with the anchor, the paper's five LSTM layers. The paper gives no LSTM width; 512 is ours, and
  so is the optimisation (lr 1e-3, constant, 10 epochs: emit's earlier default). One frozen
  CNN: Lite0.
* ``fast``: what a small machine trains in minutes: the frozen MiniLM sentence model and a
  trained MLP (no word vectors to load, and the captions are embedded once), 4 epochs at lr 5e-4
  on a cosine schedule, Lite0 alone (a third of the default's image extraction). Measured on
  Flickr8k in docs/retrieval.md.
"""

from __future__ import annotations

from typing import Any

from emit.problems import EmitError

PRESETS: dict[str, dict[str, Any]] = {
    "standard": {},
    "paper": {"loss": "patr", "mining": "any", "num_layers": 5, "hidden": 512, "normalise_images": False,
              "image_projection": False, "encoder": "lstm", "lr": 1e-3, "lr_schedule": "constant",
              "backbone": "efficientnet-lite0", "epochs": 10},
    "fast": {"encoder": "minilm", "lr": 5e-4, "lr_schedule": "cosine", "epochs": 4,
             "backbone": "efficientnet-lite0"},
}


def list_presets() -> list[str]:
    return list(PRESETS)


def preset_settings(name: str) -> dict[str, Any]:
    """The settings preset ``name`` sets (a copy)."""
    if name not in PRESETS:
        raise EmitError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
