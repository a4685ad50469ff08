"""Semantic labels for option tags (EMIT section 3.1).

A tag such as ``K38893枣红色`` or ``白色【加绒】`` is segmented with Jieba; tokens that carry
no meaning for the picture (product codes, digits, punctuation) are dropped, and a trailing
``色`` ("colour") is removed so that ``藏青`` and ``藏青色`` become one label. The vocabulary
keeps labels seen at least ``min_count`` times in the *training* tags, at most ``top_k`` of
them. A tag's embedding is multi-hot by substring match over that vocabulary, with a final
"other" slot for tags that match no label.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from emit.files import atomic_write_json, read_json
from emit.problems import EmitError

OTHER = "<other>"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # a CJK ideograph
COLOUR_SUFFIX = "色"


@lru_cache(maxsize=1)
def load_jieba():
    """The jieba module, imported and quietened once (its dictionary loads on first use)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its "building prefix dict" chatter is not for users
    return jieba


def normalise_label(token: str, strip_colour_suffix: bool = True) -> str | None:
    """Return the label a Jieba token stands for, or None if it carries no visual meaning."""
    token = token.strip()
    if not CJK.search(token):
        return None  # product codes, digits, punctuation, sizes
    if strip_colour_suffix and len(token) > 1 and token.endswith(COLOUR_SUFFIX):
        token = token[: -len(COLOUR_SUFFIX)]
    if strip_colour_suffix and token == COLOUR_SUFFIX:
        return None  # a bare 色 left over from 贡米|色 says nothing by itself
    return token


def segment(tag: str, strip_colour_suffix: bool = True) -> list[str]:
    """Split one tag into its semantic labels, in order, without duplicates."""
    labels: list[str] = []
    for token in load_jieba().lcut(tag):
        label = normalise_label(token, strip_colour_suffix)
        if label and label not in labels:
            labels.append(label)
    return labels


@dataclass
class LabelVocab:
    """The label vocabulary saved with every pairing model."""

    labels: list[str]
    counts: list[int]
    min_count: int = 5
    top_k: int = 64
    strip_colour_suffix: bool = True
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {label: i for i, label in enumerate(self.labels)}

    @property
    def size(self) -> int:
        """Embedding width: one slot per label plus the "other" slot."""
        return len(self.labels) + 1

    @property
    def names(self) -> list[str]:
        return [*self.labels, OTHER]

    def labels_of(self, tag: str) -> list[str]:
        """Vocabulary labels found in ``tag`` by substring match (the paper's matching rule)."""
        # labels are stored without 色, so 藏青 matches both 藏青 and 藏青色
        return [label for label in self.labels if label in tag]

    def encode(self, tag: str) -> np.ndarray:
        vec = np.zeros(self.size, dtype=np.float32)
        hits = [self._index[label] for label in self.labels_of(tag)]
        if hits:
            vec[hits] = 1.0
        else:
            vec[-1] = 1.0
        return vec

    def encode_many(self, tags: Sequence[str]) -> np.ndarray:
        if not tags:
            return np.zeros((0, self.size), dtype=np.float32)
        return np.stack([self.encode(t) for t in tags])

    def covers(self, tag: str) -> bool:
        return bool(self.labels_of(tag))

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("_index")
        return data

    @classmethod
    def from_json(cls, data: dict) -> LabelVocab:
        try:
            return cls(
                labels=list(data["labels"]),
                counts=[int(c) for c in data["counts"]],
                min_count=int(data.get("min_count", 5)),
                top_k=int(data.get("top_k", 64)),
                strip_colour_suffix=bool(data.get("strip_colour_suffix", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EmitError(f"label vocabulary is malformed ({exc}); retrain the model") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelVocab:
        return cls.from_json(read_json(path))


def count_labels(tags: Iterable[str], strip_colour_suffix: bool = True) -> Counter[str]:
    """How many tag occurrences contain each label (a tag counts once per label)."""
    counts: Counter[str] = Counter()
    for tag in tags:
        counts.update(segment(tag, strip_colour_suffix))
    return counts


def build_vocab(
    tags: Iterable[str], min_count: int = 5, top_k: int = 64, strip_colour_suffix: bool = True
) -> LabelVocab:
    """Keep labels seen at least ``min_count`` times, the ``top_k`` most frequent.

    Ties are broken by the label text so the vocabulary does not depend on input order.
    """
    if min_count < 1 or top_k < 1:
        raise EmitError("min_count and top_k must be at least 1")
    counts = count_labels(tags, strip_colour_suffix)
    kept = sorted(((c, label) for label, c in counts.items() if c >= min_count),
                  key=lambda cl: (-cl[0], cl[1]))[:top_k]
    return LabelVocab([label for _, label in kept], [c for c, _ in kept], min_count, top_k,
                      strip_colour_suffix)


def coverage(vocab: LabelVocab, tags: Sequence[str]) -> dict:
    """Share of tags that get at least one label, over distinct tags and over occurrences."""
    distinct = sorted(set(tags))
    covered = {t for t in distinct if vocab.covers(t)}
    occurrences = sum(1 for t in tags if t in covered)
    return {
        "distinct_tags": len(distinct),
        "distinct_covered": len(covered),
        "distinct_coverage": len(covered) / len(distinct) if distinct else 0.0,
        "tag_occurrences": len(tags),
        "occurrences_covered": occurrences,
        "occurrence_coverage": occurrences / len(tags) if tags else 0.0,
        "uncovered_examples": [t for t in distinct if t not in covered][:20],
    }
