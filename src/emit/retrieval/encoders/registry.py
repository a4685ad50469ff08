"""Build, save and load text encoders by name (in the style of :mod:`emit.vision.backbones`).

The names, and the settings each encoder reads, are :mod:`emit.retrieval.encoders.names`
(torch-free). Each implementing module registers its class with :func:`register_text_encoder`;
:func:`create_text_encoder`, :func:`build_encoder` and :func:`load_text_encoder` import the
module a name's record points to on first use, so a new encoder needs no import line here.

:func:`save_text_encoder` / :func:`load_text_encoder` store an encoder in a model folder
(:mod:`emit.retrieval.encoders.base` names the files).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from emit.config import versions
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.hashing import state_dict_sha256
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders.base import ENCODER_FILE, ENCODER_WEIGHTS, FORMAT_VERSION, TextEncoder
from emit.retrieval.encoders.names import (
    list_text_encoders,
    resolve_text_encoder,
    text_encoder_info,
)
from emit.text.vectors import WordVectors

E = TypeVar("E", bound=type[TextEncoder])

_CLASSES: dict[str, type[TextEncoder]] = {}


def register_text_encoder(name: str) -> Callable[[E], E]:
    """Class decorator: ``cls`` implements the text encoder ``name`` of
    :data:`~emit.retrieval.encoders.names.TEXT_ENCODERS`, whose record names cls's module."""

    def decorator(cls: E) -> E:
        info = text_encoder_info(name)
        if info.module != cls.__module__:
            raise ValueError(f"text encoder {name!r} is declared in {info.module}, not {cls.__module__}")
        if name in _CLASSES:
            raise ValueError(f"text encoder {name!r} registered twice")
        cls.name = name
        _CLASSES[name] = cls
        return cls

    return decorator


def text_encoder_class(name: str) -> type[TextEncoder]:
    """The class of the text encoder ``name`` (its module imported if it was not yet)."""
    info = text_encoder_info(name)
    if info.name == "auto":
        raise EmitError("the text encoder 'auto' is chosen from the training texts; resolve it first "
                        "(emit.retrieval.encoders.names.resolve_text_encoder) or name an encoder")
    if info.name not in _CLASSES:
        importlib.import_module(info.module)  # registers it
    cls = _CLASSES.get(info.name)
    if cls is None:
        raise EmitError(f"{info.module} does not register the text encoder {info.name!r}")
    return cls


def create_text_encoder(name: str, **kw: Any) -> TextEncoder:
    """Build the text encoder ``name`` (in training mode) with its own options (``cls.create``)."""
    cls = text_encoder_class(name)
    params = inspect.signature(cls.create).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise EmitError(f"text encoder {name!r} has no option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(params)}")
    return cls.create(**kw)


def build_encoder(config: RetrievalConfig, texts: Sequence[str], out_dim: int,
                  vectors: WordVectors | None = None) -> TextEncoder:
    """The configured text encoder, with the settings of ``config`` it reads; ``texts`` are the
    training texts (the LSTM's vocabulary), ``vectors`` the LSTM's word vectors if already loaded."""
    name = resolve_text_encoder(config.encoder, texts)
    return text_encoder_class(name).from_config(config, texts, out_dim, vectors=vectors)


def save_text_encoder(encoder: TextEncoder, folder: str | os.PathLike[str]) -> Path:
    """Write the encoder's files into ``folder`` (created); the JSON is written last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / ENCODER_WEIGHTS, save_safetensors(encoder.trained_state()))
    encoder._save_extra(folder)
    meta = {"format": FORMAT_VERSION, "name": encoder.name, "config": encoder.config(),
            "identity": encoder.identity(), "versions": versions()}
    atomic_write_json(folder / ENCODER_FILE, meta)
    return folder


def load_text_encoder(folder: str | os.PathLike[str]) -> TextEncoder:
    """Rebuild a saved encoder (in eval mode) and check its weights hash against the record."""
    folder = Path(folder)
    if not (folder / ENCODER_FILE).is_file():
        raise EmitError(f"{folder}: no {ENCODER_FILE}; not a saved text encoder")
    meta = read_json(folder / ENCODER_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise EmitError(f"{folder / ENCODER_FILE}: text encoder format {meta.get('format')} is not "
                        f"{FORMAT_VERSION}; retrain with this version of emit")
    name = str(meta.get("name"))
    if name not in list_text_encoders():
        raise EmitError(f"{folder / ENCODER_FILE}: unknown text encoder {meta.get('name')!r}; "
                        f"known: {', '.join(list_text_encoders())}")
    encoder = text_encoder_class(name)._from_saved(folder, meta["config"])
    try:
        state = load_safetensors((folder / ENCODER_WEIGHTS).read_bytes())
    except Exception as exc:  # OSError or safetensors' own errors
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: cannot read weights ({exc}); retrain") from exc
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: weights do not match {ENCODER_FILE} "
                        f"({str(exc)[:200]}); retrain") from exc
    saved = (meta.get("identity") or {}).get("weights_sha256")
    if saved is not None and saved != state_dict_sha256(encoder):
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: weights differ from those recorded in "
                        f"{ENCODER_FILE}; the folder mixes two saves: save the encoder again")
    return encoder.eval()
