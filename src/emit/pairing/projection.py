"""Shrink the CNN part of a pairing model's features to a few principal components.

A frozen CNN gives 1,280 numbers an image and a shop has a few thousand labelled photos, so a
head on the raw features overfits: next to the colour histogram, full EfficientNet-Lite0
features made colour-only products *worse* (docs/pairing.md). Its first principal components
keep what tells a T-shirt from trousers, at a size the head can learn from. Each learned part
of a composite backbone is projected on its own, fitted on the training images only; colour
histograms and other hand-made parts pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emit.vision.backbones import is_learned_backbone


@dataclass
class PartProjection:
    start: int  # the part's columns in the backbone features
    stop: int
    mean: np.ndarray  # (stop - start,)
    basis: np.ndarray  # (stop - start, components): the leading principal directions


@dataclass
class FeatureProjection:
    in_dim: int
    parts: list[PartProjection]

    @property
    def out_dim(self) -> int:
        return self.in_dim - sum(p.stop - p.start - p.basis.shape[1] for p in self.parts)

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Projected parts in place of their columns; every other column as it was."""
        features = np.asarray(features, dtype=np.float32)
        if features.shape[1] != self.in_dim:
            raise ValueError(f"features have {features.shape[1]} columns, the projection {self.in_dim}")
        pieces, at = [], 0
        for part in sorted(self.parts, key=lambda p: p.start):
            pieces.append(features[:, at:part.start])
            pieces.append((features[:, part.start:part.stop] - part.mean) @ part.basis)
            at = part.stop
        pieces.append(features[:, at:])
        return np.concatenate(pieces, axis=1).astype(np.float32)

    # ---- persistence (tensors in the model's safetensors file, the rest in model.json) -------
    def tensors(self, prefix: str = "projection") -> dict[str, torch.Tensor]:
        out = {}
        for k, part in enumerate(self.parts):
            out[f"{prefix}{k}.mean"] = torch.from_numpy(np.ascontiguousarray(part.mean, dtype=np.float32))
            out[f"{prefix}{k}.basis"] = torch.from_numpy(np.ascontiguousarray(part.basis, dtype=np.float32))
        return out

    def meta(self) -> dict:
        return {"in_dim": self.in_dim, "parts": [{"start": p.start, "stop": p.stop,
                                                  "components": int(p.basis.shape[1])} for p in self.parts]}

    @classmethod
    def load(cls, meta: dict, tensors: dict[str, torch.Tensor], prefix: str = "projection"
             ) -> FeatureProjection:
        parts = []
        for k, p in enumerate(meta["parts"]):
            mean = tensors[f"{prefix}{k}.mean"].numpy()
            basis = tensors[f"{prefix}{k}.basis"].numpy()
            if mean.shape != (p["stop"] - p["start"],) or basis.shape != (len(mean), p["components"]):
                raise ValueError(f"projection part {k} has shapes {mean.shape} and {basis.shape}")
            parts.append(PartProjection(int(p["start"]), int(p["stop"]), mean, basis))
        return cls(int(meta["in_dim"]), parts)


def fit_projection(features: np.ndarray, segments: Sequence[tuple[str, int, int]],
                   components: int) -> FeatureProjection | None:
    """Principal components of each learned part wider than ``components``; None if none is."""
    features = np.asarray(features, dtype=np.float64)
    if components <= 0:
        return None
    parts = []
    for name, start, stop in segments:
        if not is_learned_backbone(name) or stop - start <= components:
            continue
        x = features[:, start:stop]
        mean = x.mean(axis=0)
        centred = x - mean
        # eigenvectors of the covariance, largest first (stable for any number of images)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(values)[::-1][:components]
        basis = vectors[:, order]
        # a fixed sign per direction, so one training set always gives one model
        basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])] < 0, -1.0, 1.0)
        parts.append(PartProjection(start, stop, mean.astype(np.float32), basis.astype(np.float32)))
    return FeatureProjection(features.shape[1], parts) if parts else None
