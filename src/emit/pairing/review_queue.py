"""Review queues: the products a prediction is least sure of, for people to check first.

``emit pair predict MODEL DATA --out OUT/final_json.json --review-below P`` writes
``OUT/final_json.review.json`` beside its predictions::

    {"kind": "emit.pairing.review", "version": 1, "threshold": 0.9,
     "data": "/abs/path/of/DATA", "predictions": "/abs/path/OUT/final_json.json",
     "products": [{"product_id": "...", "confidence": 0.31, "tags": ["黑色", null, "白色"]}, ...]}

``products`` holds every product whose confidence (the probability that all its images are
right) is below ``threshold``, least confident first (ties by product id); ``tags`` are the
predicted tags of its images in profile order, null for an image that could not be read. The
review page of ``emit serve`` opens such a file directly (``/review?queue=...``).

This module is plain library code (no web framework), light to import (no torch).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emit.files import atomic_write_json, read_json
from emit.pairing.confidence import as_probability
from emit.problems import EmitError

KIND = "emit.pairing.review"
VERSION = 1
SUFFIX = ".review.json"
_REWRITE = "write it again with emit pair predict MODEL DATA --out OUT/final_json.json --review-below P"


@dataclass(frozen=True)
class QueueEntry:
    product_id: str
    confidence: float  # probability that all the product's images are right
    tags: list[str | None]  # predicted tag per image, in profile order; None = unreadable image


@dataclass(frozen=True)
class ReviewQueue:
    path: Path  # the file it was read from
    threshold: float
    data: Path  # the products that were predicted (a folder, or a combined JSON file)
    predictions: Path  # the final_json.json the queue was written beside
    products: list[QueueEntry]  # least confident first

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "version": VERSION, "threshold": self.threshold, "data": str(self.data),
                "predictions": str(self.predictions),
                "products": [{"product_id": e.product_id, "confidence": e.confidence, "tags": list(e.tags)}
                             for e in self.products]}


def review_path(pred_path: str | os.PathLike[str]) -> Path:
    """``<stem>.review.json`` beside the predictions: ``OUT/final_json.json`` ->
    ``OUT/final_json.review.json``."""
    path = Path(pred_path)
    return path.with_name(path.stem + SUFFIX)


def _is_number(value: object) -> bool:
    # numbers.Real: a numpy float32 from a model is a number too; True is not
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _probability(value: object) -> bool:
    return as_probability(value) is not None


def _text(value: object) -> bool:
    """A string that can be written as UTF-8 (JSON's "\\ud800" escapes decode to lone surrogates)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tag_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(t is None or _text(t) for t in value)


def _absolute(path: str | os.PathLike[str]) -> Path:
    # made absolute and normalised, but links are not resolved: the server checks where they lead
    return Path(os.path.abspath(path))


def build_review_queue(threshold: float, data: str | os.PathLike[str], predictions: str | os.PathLike[str],
                       confidence: Mapping[str, float],
                       tags: Mapping[str, Sequence[str | None]]) -> dict[str, Any]:
    """The queue (as JSON) of the products whose ``confidence`` is below ``threshold``.

    ``tags`` gives each product's predicted tag per image (None, or ``""`` as in
    ``final_json.json``, for an unreadable image). Raises :class:`EmitError` for a threshold
    outside [0, 1], or a listed product without a usable confidence or without tags.
    """
    if not _probability(threshold):
        raise EmitError(f"review threshold {threshold!r} (--review-below) is not a probability; give a "
                        "number from 0 to 1, e.g. 0.9 to review the products less than 90% sure to be right")
    below: list[dict[str, Any]] = []
    for pid, conf in confidence.items():
        if not _probability(conf):
            raise EmitError(f"product {pid!r}: confidence {conf!r} is not a probability from 0 to 1; "
                            "this is a bug in the code that computed it: report it")
        if conf >= threshold:
            continue
        if pid not in tags:
            raise EmitError(f"product {pid!r} has a confidence but no predicted tags; give the tags of "
                            "every product that has a confidence")
        seq = tags[pid]
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or not _tag_list(list(seq)):
            raise EmitError(f"product {pid!r}: tags {seq!r} are not one tag (a string, or None for "
                            "an unreadable image) per image; give the predicted tag of each image")
        below.append({"product_id": str(pid), "confidence": float(conf),
                      "tags": [t if t else None for t in seq]})
    below.sort(key=lambda e: (e["confidence"], e["product_id"]))
    return {"kind": KIND, "version": VERSION, "threshold": float(threshold), "data": str(_absolute(data)),
            "predictions": str(_absolute(predictions)), "products": below}


def write_review_queue(path: str | os.PathLike[str], queue: Mapping[str, Any]) -> Path:
    """Write ``queue`` atomically, after checking it as :func:`read_review_queue` will."""
    _parse(dict(queue), Path(path))  # never write a file that cannot be read back
    return atomic_write_json(path, dict(queue))


def read_review_queue(path: str | os.PathLike[str]) -> ReviewQueue:
    """Read and check a review queue; anything malformed is an :class:`EmitError` naming the file,
    the bad record and the fix. A :func:`emit.files.within` path is read inside its root only."""
    path = path if isinstance(path, Path) else Path(path)  # a within() path keeps its root
    return _parse(read_json(path), path)


def _parse(raw: Any, path: Path) -> ReviewQueue:
    def bad(what: str, fix: str = _REWRITE) -> EmitError:
        return EmitError(f"{path}: {what}; {fix}")

    if not isinstance(raw, dict):
        raise bad(f"not a review queue: expected a JSON object, got {type(raw).__name__}",
                  f"give a {SUFFIX} file written by emit pair predict --review-below")
    if raw.get("kind") != KIND:
        raise bad(f"not a review queue: kind is {raw.get('kind')!r}, expected {KIND!r}",
                  f"give a {SUFFIX} file written by emit pair predict --review-below")
    version = raw.get("version")
    if version != VERSION or not _is_number(version):
        raise bad(f"review queue version {version!r} is not supported (this emit reads version {VERSION})",
                  "upgrade emit, or " + _REWRITE)
    threshold = raw.get("threshold")
    if not _probability(threshold):
        raise bad(f"threshold {threshold!r} is not a number from 0 to 1")
    paths: dict[str, Path] = {}
    for key in ("data", "predictions"):
        value = raw.get(key)
        if not _text(value) or not value or not Path(value).is_absolute():  # type: ignore[arg-type]
            raise bad(f"{key} {value!r} is not an absolute path")
        paths[key] = Path(value)
    products = raw.get("products")
    if not isinstance(products, list):
        raise bad(f"products is {type(products).__name__}, not a list of products")
    entries: list[QueueEntry] = []
    seen: set[str] = set()
    for k, item in enumerate(products):
        where = f"products[{k}]"
        if not isinstance(item, dict):
            raise bad(f"{where} is {type(item).__name__}, not an object "
                      '{"product_id": ..., "confidence": ..., "tags": [...]}')
        pid, conf, tags = item.get("product_id"), item.get("confidence"), item.get("tags")
        if not _text(pid) or not pid.strip(". ") or "/" in pid or "\\" in pid:
            raise bad(f"{where}: product_id {pid!r} is not a product id (a product folder's name)")
        if pid in seen:
            raise bad(f"{where}: product {pid!r} is listed twice", "list each product once, or " + _REWRITE)
        if not _probability(conf):
            raise bad(f"{where} (product {pid!r}): confidence {conf!r} is not a number from 0 to 1")
        if not _tag_list(tags):
            raise bad(f"{where} (product {pid!r}): tags must be a list of tags (strings) or null, one per "
                      "image")
        seen.add(pid)
        entries.append(QueueEntry(pid, float(conf), [t if t else None for t in tags]))  # type: ignore[arg-type, union-attr]
    # written least confident first; sorted again so that a hand-edited file keeps that promise
    entries.sort(key=lambda e: (e.confidence, e.product_id))
    return ReviewQueue(path, float(threshold), paths["data"], paths["predictions"],  # type: ignore[arg-type]
                       entries)
