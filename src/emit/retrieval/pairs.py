"""The training data: texts paired with the feature-matrix rows of their images, per task.

Inputs are plain data: a feature matrix ``(N, D)`` of the N images (from
:func:`emit.vision.features.extract_features`, or synthetic in tests) and, per task, the texts
with the row of their image (:class:`Pairs`). Titles are one task, click-through queries the
other (:data:`TASK_NAMES`).

Validation: a share of the training *images* (a hash of their key, :mod:`emit.split`) is held
out with all their texts, in every task (:func:`split_validation`); or validation pairs are
given, and their images leave training in every task (:func:`training_split`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emit.data.captions import Caption
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.split import in_validation

log = logging.getLogger("emit")

TASK_NAMES = ("titles", "clicks")


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


def select_tasks(config: RetrievalConfig, titles: Pairs | None, clicks: Pairs | None) -> dict[str, Pairs]:
    """The pairs of the tasks ``config.tasks`` trains, refusing a task without pairs."""
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


def check_rows(tasks: Mapping[str, Pairs], n: int, what: str) -> None:
    for name, p in tasks.items():
        if len(p) and (p.images.min() < 0 or p.images.max() >= n):
            raise EmitError(f"{what} {name}: image row out of range 0..{n - 1}")


def training_split(config: RetrievalConfig, n_images: int, titles: Pairs | None, clicks: Pairs | None, *,
                   val_titles: Pairs | None = None, val_clicks: Pairs | None = None,
                   image_keys: Sequence[str] | None = None
                   ) -> tuple[dict[str, Pairs], dict[str, Pairs], str]:
    """``(train, validation, how)``: the tasks' training and validation pairs, and how the
    validation images were chosen ('given', 'held_out' or 'none'), so that ``evaluate
    --held-out`` can find them again by their keys.

    Validation pairs are given, or held out by ``config.val_fraction`` of the images (named by
    ``image_keys``, default their row numbers).
    """
    tasks = select_tasks(config, titles, clicks)
    check_rows(tasks, n_images, "training")
    if val_titles is not None or val_clicks is not None:
        val = {k: v for k, v in {"titles": val_titles, "clicks": val_clicks}.items()
               if k in tasks and v is not None and len(v)}
        check_rows(val, n_images, "validation")
        # A validation image leaves training in every task, so --val-titles alone cannot leak
        # through the same image's clicks.
        held = np.zeros(n_images, dtype=bool)
        for p in val.values():
            held[p.images] = True
        tasks = {name: p.subset(~held[p.images]) for name, p in tasks.items()}
        if any(len(p) == 0 for p in tasks.values()):
            raise EmitError("every training pair shows a validation image; give validation files "
                            "with other images")
        return tasks, val, "given"
    keys = [str(i) for i in range(n_images)] if image_keys is None else [str(k) for k in image_keys]
    if len(keys) != n_images:
        raise EmitError(f"{len(keys)} image keys for {n_images} feature rows")
    tasks, val = split_validation(tasks, keys, config.val_fraction, config.seed)
    return tasks, val, "held_out" if val else "none"
