"""What every text encoder is: :class:`TextEncoder`, an ``nn.Module`` with

* ``out_dim`` -- the width of its output, the image feature dimension (1280 for
  EfficientNet-Lite0);
* ``batch(texts)`` -- texts to the model input (a token batch or a feature tensor), usable as
  a ``DataLoader`` collate step; ``forward(batch)`` -- ``(B, out_dim)``;
* ``encode(texts)`` -- ``forward(batch(texts))``, with gradients (training);
  ``embed(texts)`` -- eval mode, no gradients, batched, float32 numpy (indexing and search);
* ``identity()`` -- a JSON-able dict naming the encoder, its configuration and a hash of its
  weights, recorded by :mod:`emit.retrieval.index` to refuse a mismatched model;
* three constructors, each a classmethod: ``create(texts, out_dim, **options)`` (what
  :func:`~emit.retrieval.encoders.registry.create_text_encoder` calls), ``from_config(config,
  texts, out_dim)`` (from a :class:`~emit.retrieval.config.RetrievalConfig`) and
  ``_from_saved(folder, config)`` (what :func:`~.registry.load_text_encoder` calls).

An encoder in a folder is ``text_encoder.json`` (name, configuration, identity, versions) and
``text_encoder.safetensors`` (the trained weights only; never a frozen sentence model), plus
what the encoder adds (the LSTM's vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from emit.hashing import state_dict_sha256
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.text.vectors import WordVectors

DEFAULT_OUT_DIM = 1280  # EfficientNet-Lite0, the default image backbone
ENCODER_FILE, ENCODER_WEIGHTS = "text_encoder.json", "text_encoder.safetensors"
FORMAT_VERSION = 1


class TextEncoder(nn.Module):
    """What every text encoder provides; see the module docstring."""

    name: ClassVar[str] = ""
    out_dim: int

    @classmethod
    def create(cls, texts: Sequence[str] | None = None, out_dim: int = DEFAULT_OUT_DIM, **options: Any
               ) -> TextEncoder:
        """A new encoder (in training mode); ``texts`` are the training texts (for a vocabulary)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: RetrievalConfig, texts: Sequence[str], out_dim: int, *,
                    vectors: WordVectors | None = None) -> TextEncoder:
        """A new encoder with the settings of ``config`` (the ones this encoder reads)."""
        raise NotImplementedError

    def batch(self, texts: Sequence[str]) -> Any:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, out_dim)`` for ``texts``, in the current mode and with gradients."""
        texts = check_texts(texts)
        return self(self.batch(texts).to(self.device))

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(B, out_dim)`` float32 numpy in eval mode (the mode is restored afterwards)."""
        texts = check_texts(texts)
        was_training = self.training
        self.eval()
        try:
            parts = [self.encode(texts[i:i + batch_size]).float().cpu().numpy()
                     for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        if not parts:
            return np.zeros((0, self.out_dim), dtype=np.float32)
        return np.concatenate(parts)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (JSON-able)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Name, configuration and weights hash: equal identities <=> the same text embeddings."""
        return {"name": self.name, "format": FORMAT_VERSION, "config": self.config(),
                "weights_sha256": state_dict_sha256(self)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors to save (everything registered; frozen pretrained parts are not)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def _save_extra(self, folder: Path) -> None:
        """Files besides weights and config (the LSTM's vocabulary)."""

    @classmethod
    def _from_saved(cls, folder: Path, config: dict[str, Any]) -> TextEncoder:
        raise NotImplementedError


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """``texts`` as a list of strings; an error for one bare string or a non-string."""
    if isinstance(texts, str):
        raise EmitError("give a list of texts, not one string (wrap it: [text])")
    out = list(texts)
    bad = [type(t).__name__ for t in out if not isinstance(t, str)]
    if bad:
        raise EmitError(f"texts must be strings; got {len(bad)} of type {bad[0]}")
    return out
