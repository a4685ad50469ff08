"""A trained retrieval model: :class:`RetrievalModel`, its saved format, and its backbone.

The model is the text encoder (:mod:`emit.retrieval.encoders`), the optional image projection
and the record of how they were trained. It maps texts and raw image features into one space
compared by its metric (:mod:`emit.retrieval.metric`). :meth:`RetrievalModel.save` writes the
encoder's files, the projection's weights and ``retrieval.json`` (:mod:`emit.retrieval.layout`)
as one folder commit; :meth:`RetrievalModel.load` refuses a folder mixing two saves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from emit.commit import folder_commit, verify_folder
from emit.config import to_dict, versions
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.hashing import state_dict_sha256
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig, saved_config
from emit.retrieval.distances import normalise_rows
from emit.retrieval.encoders.base import TextEncoder
from emit.retrieval.encoders.projection import ImageProjection
from emit.retrieval.encoders.registry import load_text_encoder, save_text_encoder
from emit.retrieval.layout import BANK_FILE, CHECKPOINT, MODEL_FILE, PROJECTION_FILE
from emit.retrieval.metric import Metric
from emit.vision.backbones import Backbone, create_backbone

FORMAT_VERSION = 1


@dataclass
class RetrievalModel:
    """A trained text encoder, the optional image projection, and how they were trained."""

    encoder: TextEncoder
    config: RetrievalConfig
    margin: float
    projection: ImageProjection | None = None
    backbone: dict[str, Any] | None = None  # identity of the image backbone of the features
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> Metric:
        """'l2' (squared distance, lower is nearer) or 'ip' (cosine on unit vectors)."""
        return self.config.metric

    def image_vectors(self, features: Any, batch_size: int = 4096) -> np.ndarray:
        """Image features ``(N, D)`` -> the vectors texts are compared with (and indexed)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise EmitError(f"image features must be (N, D), got shape {x.shape}")
        if self.config.normalise_images:
            x = normalise_rows(x)
        if self.projection is not None:
            self.projection.eval()
            device = next(self.projection.parameters()).device  # where it was trained or put
            with torch.no_grad():
                parts = [self.projection(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))
                                         .to(device)).cpu().numpy() for i in range(0, len(x), batch_size)]
            x = np.concatenate(parts) if parts else np.zeros((0, self.projection.dim_out), np.float32)
        if self.metric == "ip":
            x = normalise_rows(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def text_vectors(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> vectors in the image space (eval mode, no gradients)."""
        out = self.encoder.embed(list(texts), batch_size=batch_size)
        return normalise_rows(out) if self.metric == "ip" else out

    def identity(self) -> dict[str, Any]:
        """Everything that decides the vectors: equal identities give equal text and image vectors."""
        return {"text": self.encoder.identity(),
                "image_projection": None if self.projection is None else self.projection.identity(),
                "normalise_images": bool(self.config.normalise_images), "metric": self.metric}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Encoder files, projection weights, then ``retrieval.json`` (last: marks a complete model)."""
        folder = Path(folder)
        with folder_commit(folder, label="retrieval-run") as commit:  # all old or all new
            save_text_encoder(self.encoder, folder)
            if self.projection is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()}
                atomic_write_bytes(folder / PROJECTION_FILE, save_safetensors(state))
            else:
                commit.remove(folder / PROJECTION_FILE)  # an earlier model's, no part of this one
            meta = {"format": FORMAT_VERSION, "config": to_dict(self.config), "margin": self.margin,
                    "backbone": self.backbone, "identity": self.identity(), "info": self.info,
                    "versions": versions()}
            atomic_write_json(folder / MODEL_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> RetrievalModel:
        folder = Path(folder)
        # The bank is checked against the model by its own loader, which names its own fix.
        verify_folder(folder, fix="rerun the same `emit retrieval train` command (it trains the folder "
                      "again), or restore the folder from a copy", skip=(BANK_FILE,))
        if not (folder / MODEL_FILE).is_file():
            hint = (" (training has not finished: rerun `emit retrieval train` to resume)"
                    if (folder / CHECKPOINT).is_file() else "")
            raise EmitError(f"{folder}: no {MODEL_FILE}; not a trained retrieval model{hint}")
        meta = read_json(folder / MODEL_FILE)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise EmitError(f"{folder / MODEL_FILE}: retrieval model format "
                            f"{meta.get('format') if isinstance(meta, dict) else None!r} is not "
                            f"{FORMAT_VERSION}; retrain with this version of emit")
        config = saved_config(meta.get("config") or {})
        encoder = load_text_encoder(folder)
        projection = None
        saved = (meta.get("identity") or {}).get("image_projection")
        if saved is not None:
            projection = ImageProjection(int(saved["dim_in"]), int(saved["dim_out"]), bool(saved["bias"]))
            try:
                projection.load_state_dict(load_safetensors((folder / PROJECTION_FILE).read_bytes()))
            except (OSError, RuntimeError) as exc:
                raise EmitError(f"{folder / PROJECTION_FILE}: cannot load the image projection ({exc}); "
                                "retrain") from exc
            if state_dict_sha256(projection) != saved.get("weights_sha256"):
                raise EmitError(f"{folder / PROJECTION_FILE}: weights differ from those recorded in "
                                f"{MODEL_FILE}; the folder mixes two saves: retrain")
            projection.eval()
        return cls(encoder.eval(), config, float(meta["margin"]), projection, meta.get("backbone"),
                   dict(meta.get("info") or {}))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def model_backbone(model: RetrievalModel) -> Backbone:
    """The image backbone the model was trained on, refusing one whose identity has changed."""
    backbone = create_backbone(model.config.backbone, weights=model.config.weights)
    if model.backbone is not None and not _same(model.backbone, backbone.identity):
        raise EmitError(f"backbone {model.config.backbone!r} is not the one the model was trained with "
                        "(its weights or preprocessing differ); use the same weights, or retrain")
    return backbone
