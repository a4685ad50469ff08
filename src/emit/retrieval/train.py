"""Train a text encoder into a frozen CNN's image-feature space (Aggarwal et al. 2019).

Inputs are plain data: a feature matrix ``(N, D)`` of the N images (from
:func:`emit.vision.features.extract_features`, or synthetic in tests) and, per task, the texts
with the row of their image (:class:`Pairs`). Titles are one task, click-through queries the
other. The model is :class:`RetrievalModel`: the text encoder, the optional image projection and
the record of how they were trained.

One training step (``tasks='multitask'``) takes one batch of titles and one batch of queries,
computes each task's loss on its own batch, and minimises their mean (the paper's eq. 4). An
epoch is one pass over the larger task; the smaller one cycles, reshuffled on every pass. With
``tasks='titles'`` or ``'clicks'`` only that task is used.

For PATR and triplet, each anchor's negatives are mined inside its batch
(:func:`emit.retrieval.mining.mine_negatives`): the nearest images of other pairs, never an image
of the anchor itself (any caption of it), and -- by ``mining`` -- never the image of a text that
shares any (``'any'``) or all (``'all'``) of the anchor's content words. VSE++ and InfoNCE use
the whole batch and exclude only pairs of the same image. Clicked queries may be weighted by
their click counts (``click_weight``).

Validation: a share of the training *images* (a hash of their key, :mod:`emit.split`) is held
out with all their texts; after each epoch text-to-image R@1/5/10 and the median rank are
measured on them and the epoch with the best mean of R@1, R@5 and R@10 (over tasks) is kept.

With ``out=`` the run is resumable: after every epoch the encoder, projection, optimiser state,
history and best weights are written atomically to ``checkpoint.pt``. A rerun after a kill loads
it and continues with the next epoch; every epoch seeds its own shuffling and dropout, and the
learning rate is a function of the step, so the resumed run ends with exactly the weights of an
uninterrupted one. It may be given more epochs, except with ``lr_schedule='cosine'``.
When training ends the best model is saved with its hubness bank
(:mod:`emit.retrieval.hubness`; ``retrieval.json`` last, marking a complete model) and the
checkpoint removed; rerunning a finished run with the same settings and data just loads it (and
writes its bank again if it is missing, unreadable or another model's). ``training.png`` shows
the loss and validation curves (redrawn during training at most every 30 s, and at the end).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from emit.commit import TornFolderError, folder_commit, verify_folder
from emit.config import from_dict, to_dict, versions
from emit.data.captions import Caption
from emit.files import atomic_write, atomic_write_bytes, atomic_write_json, read_json
from emit.metrics import median_rank, recall_at_k
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import pairwise_sq_dist
from emit.retrieval.encoders import (
    ImageProjection,
    TextEncoder,
    create_text_encoder,
    load_text_encoder,
    save_text_encoder,
)
from emit.retrieval.evaluate import text_groups
from emit.retrieval.hubness import BANK_FILE, HubnessBank, build_bank
from emit.retrieval.losses import LOSSES, NEEDS_NEGATIVES
from emit.retrieval.mining import ENGLISH_STOPWORDS, mine_negatives
from emit.split import in_validation
from emit.text.tokenize import tokenize
from emit.text.vectors import WordVectors, load_fasttext_bin, load_fasttext_vec, load_glove_txt
from emit.vision.backbones import state_dict_sha256

log = logging.getLogger("emit")

MODEL_FILE = "retrieval.json"
PROJECTION_FILE = "image_projection.safetensors"
CHECKPOINT = "checkpoint.pt"
CURVES = "training.png"
FORMAT_VERSION = 1
VAL_KS = (1, 5, 10)
TASK_NAMES = ("titles", "clicks")
PLOT_EVERY_SECONDS = 30.0  # training.png is redrawn after an epoch when this long has passed, and at the end

EpochHook = Callable[[int, dict[str, Any]], None]


# --------------------------------------------------------------------------- data


@dataclass
class Pairs:
    """Texts and the feature-matrix row of the image each describes; ``counts`` are click counts."""

    texts: list[str]
    images: np.ndarray  # (n,) int64 rows of the feature matrix
    counts: np.ndarray | None = None  # (n,) positive; None = 1 each

    def __post_init__(self) -> None:
        self.texts = [str(t) for t in self.texts]
        self.images = np.asarray(self.images, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.texts):
            raise EmitError(f"{len(self.texts)} texts but {len(self.images)} image rows; "
                            "give one row per text")
        if self.counts is not None:
            self.counts = np.asarray(self.counts, dtype=np.float64).reshape(-1)
            if len(self.counts) != len(self.texts) or not (np.isfinite(self.counts).all()
                                                           and (self.counts > 0).all()):
                raise EmitError("pair counts must be one positive number per text")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, keep: np.ndarray) -> Pairs:
        idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep, dtype=np.int64)
        return Pairs([self.texts[i] for i in idx], self.images[idx],
                     None if self.counts is None else self.counts[idx])

    @classmethod
    def from_captions(cls, captions: Sequence[Caption], row_of: Mapping[str, int]) -> Pairs:
        """Pairs of the captions whose ``image_id`` has a row in ``row_of`` (others are left out)."""
        kept = [c for c in captions if c.image_id in row_of]
        return cls([c.text for c in kept], np.array([row_of[c.image_id] for c in kept], dtype=np.int64),
                   np.array([c.count for c in kept], dtype=np.float64))


def load_vectors(spec: str | os.PathLike[str] | None) -> WordVectors | None:
    """Word vectors named by the configuration: None = the GloVe 6B-50d package (loaded by the
    encoder); a ``.bin`` fastText model, a ``.vec`` fastText text file, or a GloVe text file."""
    if spec is None or str(spec) == "":
        return None
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return load_fasttext_bin(path)
    if suffix == ".vec":
        return load_fasttext_vec(path)
    return load_glove_txt(path)


def build_encoder(config: RetrievalConfig, texts: Sequence[str], out_dim: int,
                  vectors: WordVectors | None = None) -> TextEncoder:
    """The configured text encoder, its vocabulary built from ``texts`` (for 'lstm')."""
    if config.encoder == "lstm":
        vecs = vectors if vectors is not None else load_vectors(config.vectors)
        return create_text_encoder("lstm", texts=texts, out_dim=out_dim, vectors=vecs, hidden=config.hidden,
                                   num_layers=config.num_layers, dropout=config.dropout,
                                   min_count=config.min_count, max_tokens=config.max_tokens, seed=config.seed)
    return create_text_encoder(config.encoder, texts=texts, out_dim=out_dim, seed=config.seed)


# --------------------------------------------------------------------------- the model


def scheduled_lr(config: RetrievalConfig, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``.

    Computed from the step alone, not kept in a scheduler, so a resumed run continues on the
    same curve. (A cosine run cannot be resumed with another epoch count: see ``_comparable``.)
    """
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return config.lr


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


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
    def metric(self) -> str:
        """'l2' (squared distance, lower is nearer) or 'ip' (cosine on unit vectors)."""
        return self.config.metric

    def image_vectors(self, features: Any, batch_size: int = 4096) -> np.ndarray:
        """Image features ``(N, D)`` -> the vectors texts are compared with (and indexed)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise EmitError(f"image features must be (N, D), got shape {x.shape}")
        if self.config.normalise_images:
            x = _normalise_rows(x)
        if self.projection is not None:
            self.projection.eval()
            with torch.no_grad():
                parts = [self.projection(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
                         .numpy() for i in range(0, len(x), batch_size)]
            x = np.concatenate(parts) if parts else np.zeros((0, self.projection.dim_out), np.float32)
        if self.metric == "ip":
            x = _normalise_rows(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def text_vectors(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> vectors in the image space (eval mode, no gradients)."""
        out = self.encoder.embed(list(texts), batch_size=batch_size)
        return _normalise_rows(out) if self.metric == "ip" else out

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
        config = from_dict(RetrievalConfig, meta.get("config") or {})
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


def is_trained(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` holds a complete model (and no unfinished checkpoint)."""
    folder = Path(folder)
    return (folder / MODEL_FILE).is_file() and not (folder / CHECKPOINT).is_file()


# --------------------------------------------------------------------------- pieces of a step


def auto_margin(features: np.ndarray, rows: np.ndarray, batch_size: int = 512, n_negatives: int = 5,
                seed: int = 0, batches: int = 4) -> float:
    """Where the hard negatives sit: the median squared distance from an image to its
    ``n_negatives``-th nearest other image within a random batch of training images.

    With a text on its own image, PATR's hinge on a negative vanishes once the negative is
    ``margin`` away; at this scale the mined negatives of about half the anchors are already far
    enough, while nearer ones keep being pushed. (Word-overlap exclusion removes some of the
    nearest images, so the negatives actually mined are, if anything, further.) Images with
    identical features are ignored; a few batches (drawn with ``seed``) of at most 2048 images.
    """
    uniq = np.unique(rows)
    if len(uniq) < 2:
        return 1.0
    size = min(batch_size, len(uniq), 2048)
    k = min(max(n_negatives, 1), size - 1)
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(batches if len(uniq) > size else 1):
        pick = rng.choice(uniq, size, replace=False)
        x = torch.from_numpy(np.asarray(features, dtype=np.float64)[pick])
        d = pairwise_sq_dist(x, x)
        d[d <= 1e-12] = float("inf")  # itself and exact duplicates
        kth = torch.sort(d, dim=1).values[:, k - 1]
        found.append(kth[torch.isfinite(kth)])
    values = torch.cat(found)
    return float(values.median()) if len(values) else 1.0


def click_weights(pairs: Pairs, how: str) -> np.ndarray:
    """Per-pair loss weights: 1, log(1 + clicks) or clicks."""
    if pairs.counts is None or how == "none":
        return np.ones(len(pairs))
    if how == "log":
        return np.log1p(pairs.counts)
    return pairs.counts.copy()


def _stopwords(config: RetrievalConfig) -> frozenset[str] | None:
    extra = {w.strip().lower() for w in config.extra_stopwords.split(",") if w.strip()}
    return ENGLISH_STOPWORDS | extra if extra else None


def task_loss(text: torch.Tensor, image: torch.Tensor, rows: torch.Tensor, tokens: Sequence[Sequence[str]],
              weights: torch.Tensor, config: RetrievalConfig, margin: float) -> torch.Tensor:
    """Weighted mean loss of one task's batch: texts ``(B, D)`` against their images ``(B, D)``.

    ``rows`` (B,) identify the images (pairs of one image are never each other's negatives);
    ``tokens`` are the texts' tokens, for word-overlap exclusion in mining.
    """
    name = config.loss
    fn = LOSSES[name]
    if name in NEEDS_NEGATIVES:
        words = None if config.mining == "none" else tokens
        neg_index, valid = mine_negatives(text, image, words, rows, config.n_negatives, config.mining,
                                          stopwords=_stopwords(config))
        per = fn(text, image, image[neg_index], margin, valid, reduction="none")
    elif name == "l2":
        per = fn(text, image, reduction="none")
    elif name == "vse":
        per = fn(text, image, rows, margin, similarity="neg_sq_dist", reduction="none")
    else:  # infonce; identical texts of other images are not negatives either
        text_ids = torch.from_numpy(text_groups([" ".join(t) for t in tokens], len(tokens)))
        per = fn(text, image, rows, config.temperature, text_ids=text_ids, reduction="none")
    return (per * weights).sum() / weights.sum()


class _Batches:
    """Index batches of one task in an epoch: one exact pass, or cycling passes (smaller task)."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator, cycle: bool) -> None:
        self.n, self.rng, self.cycle = n, rng, cycle
        self.size = min(batch_size, n) if cycle else batch_size
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        if self.cycle and self.pos + self.size > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        out = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return out


@dataclass
class _Task:
    name: str
    pairs: Pairs
    tokens: list[list[str]]
    weights: np.ndarray


# --------------------------------------------------------------------------- validation


def validate(model_or_parts: RetrievalModel | tuple[TextEncoder, ImageProjection | None, RetrievalConfig],
             features: np.ndarray, val: Mapping[str, Pairs], ks: Sequence[int] = VAL_KS) -> dict[str, Any]:
    """Text-to-image R@K and median rank of each task's held-out texts among all held-out images.

    ``features`` are raw image features (normalisation and projection are applied here). Returns
    ``{task: {"R@1": ..., "median_rank": ...}, "score": mean over tasks of mean R@K}``.
    """
    from emit.retrieval.evaluate import similarity_matrix

    if isinstance(model_or_parts, RetrievalModel):
        model = model_or_parts
    else:
        encoder, projection, config = model_or_parts
        model = RetrievalModel(encoder, config, 0.0, projection)
    val = {k: v for k, v in val.items() if len(v)}
    if not val:
        return {"score": None}
    rows = np.unique(np.concatenate([p.images for p in val.values()]))
    col_of = {int(r): j for j, r in enumerate(rows)}
    images = model.image_vectors(features[rows])
    out: dict[str, Any] = {}
    scores = []
    for task, pairs in val.items():
        s = similarity_matrix(model.text_vectors(pairs.texts), images, model.metric)
        relevant = [[col_of[int(r)]] for r in pairs.images]
        recall = recall_at_k(s, relevant, ks)
        out[task] = {**{f"R@{k}": v for k, v in recall.items()}, "median_rank": median_rank(s, relevant),
                     "texts": len(pairs), "images": len(rows)}
        scores.append(float(np.mean(list(recall.values()))))
    out["score"] = float(np.mean(scores))
    return out


def split_validation(tasks: Mapping[str, Pairs], keys: Sequence[str], fraction: float, seed: int
                     ) -> tuple[dict[str, Pairs], dict[str, Pairs]]:
    """Hold out the images whose key hashes into validation, with all their texts in every task.

    If that leaves a task without training pairs or validation without any pair, nothing is
    held out (a warning says so).
    """
    if fraction <= 0:
        return dict(tasks), {}
    held = np.array([in_validation(str(k), fraction, seed) for k in keys], dtype=bool)
    train = {name: p.subset(~held[p.images]) for name, p in tasks.items()}
    val = {name: p.subset(held[p.images]) for name, p in tasks.items()}
    if any(len(p) == 0 for p in train.values()) or sum(len(p) for p in val.values()) == 0:
        log.warning("too few images to hold out %.0f%% for validation; training on all, without "
                    "validation (the last epoch is kept)", 100 * fraction)
        return dict(tasks), {}
    return train, val


# --------------------------------------------------------------------------- training


def _as_features(features: Any) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise EmitError(f"image features must be a non-empty (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise EmitError("image features hold NaN or infinite values; extract them again")
    return x


def _fingerprint(x: np.ndarray, train: Mapping[str, Pairs], val: Mapping[str, Pairs]) -> str:
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


def _select_tasks(config: RetrievalConfig, titles: Pairs | None, clicks: Pairs | None) -> dict[str, Pairs]:
    wanted = {"multitask": TASK_NAMES, "titles": ("titles",), "clicks": ("clicks",)}[config.tasks]
    given = {"titles": titles, "clicks": clicks}
    for name in wanted:
        if given[name] is None or len(given[name]) == 0:  # type: ignore[arg-type]
            raise EmitError(f"tasks={config.tasks!r} needs {name} pairs, but none were given; "
                            f"give {name} or choose tasks='{'clicks' if name == 'titles' else 'titles'}'")
    for name in TASK_NAMES:
        if name not in wanted and given[name] is not None:
            log.info("tasks=%r: the %s are not used", config.tasks, name)
    return {name: given[name] for name in wanted}  # type: ignore[misc]


def _check_rows(tasks: Mapping[str, Pairs], n: int, what: str) -> None:
    for name, p in tasks.items():
        if len(p) and (p.images.min() < 0 or p.images.max() >= n):
            raise EmitError(f"{what} {name}: image row out of range 0..{n - 1}")


def _state(module: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    if module is None:
        return None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _comparable(config: RetrievalConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the rerun. More epochs may be asked for, except
    with the cosine schedule, whose curve is laid over the epoch count."""
    return {k: v for k, v in to_dict(config).items() if k != "epochs" or config.lr_schedule == "cosine"}


def train_retrieval(
    features: Any,
    titles: Pairs | None = None,
    clicks: Pairs | None = None,
    config: RetrievalConfig | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    val_titles: Pairs | None = None,
    val_clicks: Pairs | None = None,
    image_keys: Sequence[str] | None = None,
    encoder: TextEncoder | None = None,
    vectors: WordVectors | None = None,
    backbone: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> RetrievalModel:
    """Train and return a :class:`RetrievalModel`; see the module docstring.

    ``features`` (N, D) are the frozen image features; ``titles`` / ``clicks`` index into them.
    Validation pairs are given, or held out by ``config.val_fraction`` of the images (named by
    ``image_keys``, default their row numbers). ``encoder`` overrides the configured one;
    ``vectors`` are the word vectors of a new 'lstm' encoder. ``backbone`` is the identity of
    the image backbone (recorded, and checked when the model meets an index). With ``out`` the
    run checkpoints every epoch and resumes; ``on_epoch(epoch, record)`` is called after each
    epoch's checkpoint.
    """
    config = (config or RetrievalConfig()).validate()
    x_raw = _as_features(features)
    n_images, dim = x_raw.shape
    tasks = _select_tasks(config, titles, clicks)
    _check_rows(tasks, n_images, "training")
    if val_titles is not None or val_clicks is not None:
        val = {k: v for k, v in {"titles": val_titles, "clicks": val_clicks}.items()
               if k in tasks and v is not None and len(v)}
        _check_rows(val, n_images, "validation")
        # A validation image leaves training in every task, so --val-titles alone cannot leak
        # through the same image's clicks.
        held = np.zeros(n_images, dtype=bool)
        for p in val.values():
            held[p.images] = True
        tasks = {name: p.subset(~held[p.images]) for name, p in tasks.items()}
        if any(len(p) == 0 for p in tasks.values()):
            raise EmitError("every training pair shows a validation image; give validation files "
                            "with other images")
    else:
        keys = [str(i) for i in range(n_images)] if image_keys is None else [str(k) for k in image_keys]
        if len(keys) != n_images:
            raise EmitError(f"{len(keys)} image keys for {n_images} feature rows")
        tasks, val = split_validation(tasks, keys, config.val_fraction, config.seed)
    # how validation images were chosen: 'evaluate --held-out' can find them again by their keys
    validation = "given" if val_titles is not None or val_clicks is not None else (
        "held_out" if val else "none")
    fingerprint = _fingerprint(x_raw, tasks, val)
    out_dir = Path(out) if out is not None else None

    done = None
    if out_dir is not None and is_trained(out_dir):
        try:
            done = RetrievalModel.load(out_dir)
        except TornFolderError as exc:  # a killed or mixed save: this run writes it again
            log.warning("%s; training it again", exc)
    if done is not None:
        if to_dict(done.config) != to_dict(config) or done.info.get("data_sha256") != fingerprint:
            raise EmitError(f"{out_dir}: already holds a model trained with other settings or data; "
                            "choose another output folder or delete this one")
        log.info("%s: already trained; loading it", out_dir)
        if not _bank_usable(out_dir, done):  # older emit, or a missing / unreadable / foreign bank
            with folder_commit(out_dir, label="retrieval-run"):
                write_bank(done, x_raw, tasks, out_dir)
        return done

    x = _normalise_rows(x_raw) if config.normalise_images else x_raw
    train_rows = np.concatenate([p.images for p in tasks.values()])
    margin = (float(config.margin) if config.margin is not None
              else auto_margin(x, train_rows, config.batch_size, config.n_negatives, config.seed))
    if encoder is None:
        encoder = build_encoder(config, [t for p in tasks.values() for t in p.texts], dim, vectors)
    if encoder.out_dim != dim:
        raise EmitError(f"the text encoder outputs {encoder.out_dim}-d vectors but the image features "
                        f"are {dim}-d; build it with out_dim={dim}")
    projection = None
    if config.image_projection:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            projection = ImageProjection(dim, dim)
    params = [p for p in encoder.parameters() if p.requires_grad]
    if projection is not None:
        params += list(projection.parameters())
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2))

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, resumed_from = 0, None
    ckpt = out_dir / CHECKPOINT if out_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        start_epoch, history, best = _resume(ckpt, config, encoder, projection, optimiser, fingerprint)
        resumed_from = start_epoch
        log.info("%s: resuming after epoch %d of %d", out_dir, start_epoch, config.epochs)

    x_t = torch.from_numpy(x)
    run = [_Task(name, p, [tokenize(t) for t in p.texts],
                 click_weights(p, config.click_weight) if name == "clicks" else np.ones(len(p)))
           for name, p in tasks.items()]
    n_steps = max(math.ceil(len(t.pairs) / config.batch_size) for t in run)

    plotted = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout: same per epoch on resume
        rng = np.random.default_rng([config.seed, epoch])
        batches = {t.name: _Batches(len(t.pairs), config.batch_size, rng,
                                    cycle=math.ceil(len(t.pairs) / config.batch_size) < n_steps) for t in run}
        encoder.train()
        if projection is not None:
            projection.train()
        sums = {t.name: 0.0 for t in run}
        seen = {t.name: 0 for t in run}
        total = 0.0
        bar = tqdm(range(n_steps), disable=not progress, desc=f"retrieval epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False)
        for i in bar:
            for group in optimiser.param_groups:
                group["lr"] = scheduled_lr(config, epoch * n_steps + i, config.epochs * n_steps)
            losses = []
            for t in run:
                idx = batches[t.name].next()
                rows = torch.from_numpy(t.pairs.images[idx])
                image = x_t[rows] if projection is None else projection(x_t[rows])
                text = encoder.encode([t.pairs.texts[i] for i in idx])
                weights = torch.from_numpy(t.weights[idx]).to(text.dtype)
                loss_t = task_loss(text, image, rows, [t.tokens[i] for i in idx], weights, config, margin)
                losses.append(loss_t)
                sums[t.name] += float(loss_t.detach())
                seen[t.name] += len(idx)
            loss = torch.stack(losses).mean()  # eq. 4: the mean of the task losses
            if not torch.isfinite(loss):
                raise EmitError(f"the training loss became {float(loss)} in epoch {epoch + 1}; lower --lr "
                                "or set --margin, or normalise the image features (--normalise-images)")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            total += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / n_steps, "steps": n_steps}
        for t in run:
            record[f"loss_{t.name}"] = sums[t.name] / n_steps
            record[f"pairs_{t.name}"] = seen[t.name]
        record["val"] = validate((encoder, projection, config), x_raw, val) if val else {"score": None}
        score = record["val"]["score"]
        record["seconds"] = round(time.perf_counter() - started, 2)
        history.append(record)
        if best is None or score is None or (best["score"] is not None and score > best["score"]):
            best = {"epoch": epoch + 1, "score": score, "encoder": _state(encoder),
                    "projection": _state(projection)}
        log.info("epoch %d/%d: loss %.4g%s", epoch + 1, config.epochs, record["loss"],
                 "" if score is None else f", validation mean R@1/5/10 {score:.1f}")
        if out_dir is not None:
            _checkpoint(ckpt, config, encoder, projection, optimiser, history, best, fingerprint)  # type: ignore[arg-type]
            if time.perf_counter() - plotted >= PLOT_EVERY_SECONDS:  # a plot costs ~0.3 s
                _write_curves(history, best["epoch"], out_dir / CURVES)
                plotted = time.perf_counter()
        if on_epoch is not None:
            on_epoch(epoch + 1, record)

    assert best is not None  # epochs >= 1
    encoder.load_state_dict(best["encoder"])
    if projection is not None and best["projection"] is not None:
        projection.load_state_dict(best["projection"])
    encoder.eval()
    if projection is not None:
        projection.eval()
    info = {"best_epoch": best["epoch"], "best_score": best["score"], "history": history,
            "pairs": {k: len(v) for k, v in tasks.items()}, "val_pairs": {k: len(v) for k, v in val.items()},
            "images": n_images, "dim": dim, "data_sha256": fingerprint, "resumed_from": resumed_from,
            "validation": validation}
    model = RetrievalModel(encoder, config, margin, projection,
                           None if backbone is None else dict(backbone), info)
    if out_dir is not None:
        save_run(out_dir, model, x_raw, tasks)
        ckpt.unlink(missing_ok=True)  # type: ignore[union-attr]
    return model


def save_run(out: Path, model: RetrievalModel, features: np.ndarray, tasks: Mapping[str, Pairs]) -> None:
    """The model, its hubness bank and its curves as one commit: all old or all new."""
    with folder_commit(out, label="retrieval-run"):
        write_bank(model, features, tasks, out)
        model.save(out)
        _write_curves(model.info.get("history", []), model.info.get("best_epoch"), out / CURVES)


def _bank_usable(folder: Path, model: RetrievalModel) -> bool:
    """Does ``folder`` hold a readable hubness bank written for ``model``?"""
    if not (folder / BANK_FILE).is_file():
        return False
    try:
        HubnessBank.load(folder, model)
    except EmitError as exc:
        log.warning("%s: its hubness bank is unreadable or another model's; writing it again", folder)
        log.debug("%s", exc)
        return False
    return True


def write_bank(model: RetrievalModel, features: np.ndarray, tasks: Mapping[str, Pairs], out: Path) -> Path:
    """Save the hubness bank of ``model``: the images and texts it was trained on (the
    validation images are not in ``tasks``), so held-out evaluation never meets its own items."""
    bank = build_bank(model, features, np.concatenate([p.images for p in tasks.values()]),
                      [t for p in tasks.values() for t in p.texts], seed=model.config.seed)
    return bank.save(out)


def _checkpoint(path: Path, config: RetrievalConfig, encoder: TextEncoder, projection: ImageProjection | None,
                optimiser: torch.optim.Optimizer, history: list[dict[str, Any]], best: dict[str, Any],
                fingerprint: str) -> None:
    state = {"format": FORMAT_VERSION, "epoch": len(history) and history[-1]["epoch"],
             "config": _comparable(config), "encoder_config": encoder.config(), "data_sha256": fingerprint,
             "encoder": _state(encoder), "projection": _state(projection),
             "optimiser": optimiser.state_dict(), "history": history, "best": best}
    atomic_write(path, lambda fh: torch.save(state, fh))


def _resume(path: Path, config: RetrievalConfig, encoder: TextEncoder, projection: ImageProjection | None,
            optimiser: torch.optim.Optimizer, fingerprint: str
            ) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise EmitError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                        "delete it to start the run again") from exc
    if state.get("format") != FORMAT_VERSION:
        raise EmitError(f"{path}: checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}; "
                        "delete it")
    # Settings added since the checkpoint was made take their defaults, as in a saved model.
    saved = _comparable(from_dict(RetrievalConfig, state.get("config") or {}))
    now = _comparable(config)
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


# --------------------------------------------------------------------------- curves


def plot_curves(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> bytes:
    """PNG of the training loss (total and per task) and the validation R@K per task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, val_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [int(r["epoch"]) for r in history]
    loss_ax.plot(epochs, [r["loss"] for r in history], "o-", label="training loss (mean of tasks)")
    for name in TASK_NAMES:
        if history and f"loss_{name}" in history[0]:
            loss_ax.plot(epochs, [r[f"loss_{name}"] for r in history], ".--", label=name)
    if history and all(r["loss"] > 0 for r in history):
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    shown = False
    for name in TASK_NAMES:
        for k, style in zip(VAL_KS, ("o-", "s--", "^:"), strict=True):
            ys = [(r.get("val") or {}).get(name, {}).get(f"R@{k}") for r in history]
            if any(y is not None for y in ys):
                val_ax.plot(epochs, [np.nan if y is None else y for y in ys], style, label=f"{name} R@{k}")
                shown = True
    if best_epoch is not None:
        for ax in (loss_ax, val_ax):
            ax.axvline(best_epoch, color="grey", alpha=0.3)
    val_ax.set(xlabel="epoch", ylabel="recall (%)", ylim=(0, 101),
               title="validation text -> image" + ("" if shown else " (no validation split)"))
    for ax in (loss_ax, val_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _write_curves(history: Sequence[Mapping[str, Any]], best_epoch: int | None, path: Path) -> Path:
    return atomic_write_bytes(path, plot_curves(history, best_epoch))
