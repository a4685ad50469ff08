"""A resumable run: the checkpoint written after every epoch, and resuming from it.

With ``out=`` a run writes ``checkpoint.pt`` (:mod:`emit.retrieval.layout`) atomically after
every epoch: the encoder, projection and optimiser state, the history and the best weights so
far, the settings (:func:`comparable_settings`) and a hash of the data (:func:`data_fingerprint`).
A rerun after a kill loads it (:func:`resume`) and continues with the next epoch; every epoch
seeds its own shuffling and dropout, and the learning rate is a function of the step, so the
resumed run ends with exactly the weights of an uninterrupted one. It may be given more epochs,
except with ``lr_schedule='cosine'``. A checkpoint of other settings, other data or another
text encoder is refused with the fix. :func:`is_trained` tells a finished run folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emit.config import to_dict
from emit.files import atomic_write
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig, saved_config
from emit.retrieval.encoders.base import TextEncoder
from emit.retrieval.encoders.projection import ImageProjection
from emit.retrieval.layout import CHECKPOINT, MODEL_FILE
from emit.retrieval.model import FORMAT_VERSION
from emit.retrieval.pairs import Pairs

State = dict[str, torch.Tensor]


def is_trained(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` holds a complete model (and no unfinished checkpoint)."""
    folder = Path(folder)
    return (folder / MODEL_FILE).is_file() and not (folder / CHECKPOINT).is_file()


def module_state(module: torch.nn.Module | None) -> State | None:
    """A copy of ``module``'s tensors on the CPU (None for no module)."""
    if module is None:
        return None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def comparable_settings(config: RetrievalConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the rerun. More epochs may be asked for, except
    with the cosine schedule, whose curve is laid over the epoch count."""
    return {k: v for k, v in to_dict(config).items() if k != "epochs" or config.lr_schedule == "cosine"}


def data_fingerprint(x: np.ndarray, train: Mapping[str, Pairs], val: Mapping[str, Pairs]) -> str:
    """Hash of the features and the pairs: a checkpoint only resumes the same data."""
    digest = hashlib.sha256(str(x.shape).encode())
    digest.update(np.ascontiguousarray(x).data)  # no copy of a large matrix
    for part, tasks in (("train", train), ("val", val)):
        for name in sorted(tasks):
            p = tasks[name]
            digest.update(f"{part}:{name}:{len(p)}".encode())
            digest.update("\x00".join(p.texts).encode("utf-8"))
            digest.update(p.images.tobytes())
            if p.counts is not None:
                digest.update(p.counts.tobytes())
    return digest.hexdigest()


def write_checkpoint(path: Path, config: RetrievalConfig, encoder: TextEncoder,
                     projection: ImageProjection | None, optimiser: torch.optim.Optimizer,
                     history: list[dict[str, Any]], best: dict[str, Any], fingerprint: str) -> None:
    state = {"format": FORMAT_VERSION, "epoch": len(history) and history[-1]["epoch"],
             "config": comparable_settings(config), "encoder_config": encoder.config(),
             "data_sha256": fingerprint, "encoder": module_state(encoder),
             "projection": module_state(projection), "optimiser": optimiser.state_dict(), "history": history,
             "best": best}
    atomic_write(path, lambda fh: torch.save(state, fh))


def resume(path: Path, config: RetrievalConfig, encoder: TextEncoder, projection: ImageProjection | None,
           optimiser: torch.optim.Optimizer, fingerprint: str
           ) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Load the checkpoint at ``path`` into ``encoder``, ``projection`` and ``optimiser``;
    returns the epochs done, the history and the best epoch so far."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise EmitError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                        "delete it to start the run again") from exc
    if state.get("format") != FORMAT_VERSION:
        raise EmitError(f"{path}: checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}; "
                        "delete it")
    # Settings added since the checkpoint was made take their defaults, as in a saved model.
    saved = comparable_settings(saved_config(state.get("config") or {}))
    now = comparable_settings(config)
    if saved != now:
        # name the checkpoint's values: the defaults may have changed since it was made
        diff = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}"
                         for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
        raise EmitError(f"{path}: the checkpoint was made with other settings ({diff}); "
                        "rerun with the same settings to resume, or delete it to start again")
    if state.get("data_sha256") != fingerprint:
        raise EmitError(f"{path}: the checkpoint was made on other data (texts, images or features "
                        "differ); rerun on the same data to resume, or delete it to start again")
    if state.get("encoder_config") != encoder.config():
        raise EmitError(f"{path}: the checkpoint's text encoder differs from the one built now "
                        "(vocabulary or word vectors changed); delete it to start again")
    encoder.load_state_dict(state["encoder"])
    if projection is not None and state.get("projection") is not None:
        projection.load_state_dict(state["projection"])
    optimiser.load_state_dict(state["optimiser"])
    return int(state["epoch"]), list(state["history"]), dict(state["best"])
