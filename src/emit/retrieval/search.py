"""Searching an index folder: :class:`IndexSearcher`, opened once for many searches.

An index folder (``emit index build``) holds the FAISS index of the images
(:mod:`emit.retrieval.index`, whose manifest records the backbone's and the model's
identities), optionally ``texts/``, an index of caption texts for image -> text search, and
``retrieval_index.json``, which names the model folder that built it, so ``emit search IDX
"text"`` finds the text encoder by itself. ``emit search`` opens one searcher per call,
``emit serve`` one at start-up (:meth:`IndexSearcher.describe` is what it shows about it).
An index built from feature shards (``emit index build --from-features``) is opened
memory-mapped and read-only (:mod:`emit.retrieval.ondisk`), so several server processes share
one copy of it in the page cache.

Text queries are made fast for interactive use, without changing what a search finds:

* a sentence-model encoder runs MiniLM in the searcher's ``query_precision``
  (:func:`emit.retrieval.encoders.sentence.resolve_query_precision`: bfloat16 by default where
  the CPU computes it natively, else float; ``EMIT_QUERY_PRECISION=float`` turns it off);
* each searcher keeps the vectors of its recent queries (:class:`QueryCache`, an LRU of
  ``EMIT_QUERY_CACHE`` entries, default 4,096; 0 turns it off), keyed by the query as it is
  encoded (:func:`normalise_query`), so a repeated query is not encoded again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emit.commit import verify_folder
from emit.config import to_dict
from emit.devices import resolve_device
from emit.files import read_json
from emit.problems import EmitError, ProblemLog
from emit.retrieval.distances import normalise_rows
from emit.retrieval.encoders.sentence import SentenceTextEncoder, resolve_query_precision
from emit.retrieval.index import IDS_FILE, INDEX_FILE, LISTS_FILE, MANIFEST_FILE, SearchIndex, load_index
from emit.retrieval.layout import MODEL_FILE
from emit.retrieval.model import RetrievalModel, model_backbone
from emit.vision.backbones import Backbone
from emit.vision.features import default_cache_dir, extract_features

INDEX_MODEL_FILE = "retrieval_index.json"
TEXTS_DIR = "texts"
TARGETS = ("images", "texts")

QUERY_CACHE_SIZE = 4096
QUERY_CACHE_ENV = "EMIT_QUERY_CACHE"

PathLike = str | os.PathLike[str]


def normalise_query(text: str) -> str:
    """A text query as it is encoded and cached: white space trimmed, each run of it one space.
    MiniLM and the LSTM's tokenizer ignore such white space; e5 reads a trailing space as a
    token of its own, which no caption it was trained with has (captions are trimmed on reading)."""
    return " ".join(text.split())


def resolve_query_cache_size(size: int | None = None) -> int:
    """``size`` if given, else ``EMIT_QUERY_CACHE`` if set, else :data:`QUERY_CACHE_SIZE`."""
    if size is None:
        raw = os.environ.get(QUERY_CACHE_ENV, "").strip()
        if not raw:
            return QUERY_CACHE_SIZE
        try:
            size = int(raw)
        except ValueError:
            raise EmitError(f"{QUERY_CACHE_ENV}={raw!r} is not a whole number of queries; unset it, "
                            f"or give e.g. {QUERY_CACHE_SIZE} (0 turns the cache off)") from None
    if size < 0:
        raise EmitError(f"the query cache size must be >= 0 (0 turns it off), got {size}")
    return size


class QueryCache:
    """A bounded, thread-safe LRU from a query key to its (1, D) vector (``emit serve`` answers
    requests on several threads). Values are stored read-only and handed out as copies, so no
    caller can change another's result."""

    def __init__(self, size: int = QUERY_CACHE_SIZE) -> None:
        self.size = int(size)
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            vec = self._items.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return vec.copy()

    def put(self, key: tuple[str, str], vec: np.ndarray) -> None:
        if self.size <= 0:
            return
        stored = np.array(vec, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)  # the least recently used

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


def index_manifest(folder: PathLike) -> dict[str, Any]:
    """An index's manifest (``index.json``) without its id list (which can hold millions of paths)."""
    meta = read_json(Path(folder) / MANIFEST_FILE)
    return {k: v for k, v in meta.items() if k != "ids"}


def _index_model(index_dir: Path, model_dir: PathLike | None) -> tuple[RetrievalModel, str]:
    """The model of an index folder (given, or the one its pointer names) and its folder."""
    if model_dir is None:
        pointer = index_dir / INDEX_MODEL_FILE
        if not pointer.is_file():
            raise EmitError(f"{index_dir}: no {INDEX_MODEL_FILE}; not built by `emit index build`, or pass "
                            "--model RUN")
        model_dir = str(read_json(pointer).get("model", ""))
        if not Path(model_dir).is_dir():
            raise EmitError(f"{index_dir}: the model it was built with ({model_dir}) is gone; "
                            "pass --model RUN with that model")
    return RetrievalModel.load(model_dir), str(model_dir)


def check_query(text: str | None, image: PathLike | None) -> None:
    """Refuse a query that names neither or both of a text and an image, or an empty text."""
    if (text is None) == (image is None):
        raise EmitError("give either a text query or --image FILE, not both or neither")
    if text is not None and not text.strip():
        raise EmitError("the text query is empty")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise EmitError(f"unknown search target {target!r}; use 'images' or 'texts'")


@dataclass
class IndexSearcher:
    """An index folder opened once, for many searches (``emit search`` opens one per call,
    ``emit serve`` one at start-up): the retrieval model, the image index and, if it was built
    with ``--texts``, the text index.

    :meth:`query_vectors` runs the model and :meth:`rank` only FAISS, so a server can serialise
    model calls while searches run in parallel; :meth:`search` does both. A text query's vector
    comes from the searcher's own :class:`QueryCache` if it was asked before; else MiniLM (if
    the encoder has it) runs in ``query_precision`` (see the module docstring).
    """

    folder: Path
    model: RetrievalModel
    indexes: dict[str, SearchIndex]  # target ('images' / 'texts') -> index
    model_folder: str = ""  # the model's folder, as given or as the index's pointer names it
    _backbone: Backbone | None = None
    device: str = "cpu"  # where image queries' features are extracted (emit.devices)
    # 'float', 'bf16' or 'int8' (resolved once, so the cache never mixes two precisions)
    query_precision: str = field(default_factory=resolve_query_precision)
    # per searcher: another model or index never sees these vectors
    query_cache: QueryCache = field(default_factory=lambda: QueryCache(resolve_query_cache_size()),
                                    repr=False, compare=False)
    # the tokenizer and the model are not safe to call from two threads at once
    _encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def open(cls, index_dir: PathLike, model: PathLike | None = None,
             targets: Sequence[str] | None = None, device: str = "cpu", *,
             query_precision: str | None = None, query_cache_size: int | None = None) -> IndexSearcher:
        """Load the model and the indexes of ``targets`` (default: images, and texts if built).
        ``query_precision`` ('auto', 'float', 'bf16', 'int8'; None: ``EMIT_QUERY_PRECISION``) and
        ``query_cache_size`` (entries, 0 = off; None: ``EMIT_QUERY_CACHE``) are as the module says."""
        precision = resolve_query_precision(query_precision)  # a bad value is said before any loading
        cache = QueryCache(resolve_query_cache_size(query_cache_size))
        for target in targets or ():
            check_target(target)
        folder = Path(index_dir)
        # index.faiss files are checked against their index.json by load_index: not hashed twice
        # lists.ivfdata and ids.arrow of a build from shards can be gigabytes: load_index checks
        # their sizes and row counts instead of hashing them on every start
        verify_folder(folder, fix=f"build it again with `emit index build RUN IMAGES --out {folder}`",
                      skip=(INDEX_FILE, f"{TEXTS_DIR}/{INDEX_FILE}", LISTS_FILE, IDS_FILE))
        retrieval, model_folder = _index_model(folder, model)
        has_texts = (folder / TEXTS_DIR / MANIFEST_FILE).is_file()
        wanted = list(targets) if targets else ["images"] + (["texts"] if has_texts else [])
        if "texts" in wanted and not has_texts:
            raise EmitError(f"{folder}: has no text index; "
                            "build it with `emit index build ... --texts CAPTIONS`")
        indexes = {t: load_index(folder / TEXTS_DIR if t == "texts" else folder,
                                 expect_backbone=retrieval.backbone, expect_encoder=retrieval.identity())
                   for t in wanted}
        return cls(folder, retrieval, indexes, model_folder, device=str(resolve_device(device)),
                   query_precision=precision, query_cache=cache)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = model_backbone(self.model)
        return self._backbone

    def describe(self) -> dict[str, Any]:
        """What a server shows about the opened folder: each index's manifest (without its ids)
        and the model (folder, identity, backbone, configuration, the versions that saved it)."""
        model = self.model
        meta = read_json(Path(self.model_folder) / MODEL_FILE)
        return {"folder": str(self.folder), "images": index_manifest(self.folder),
                "texts": index_manifest(self.folder / TEXTS_DIR) if "texts" in self.indexes else None,
                "model": {"folder": self.model_folder, "identity": model.identity(),
                          "backbone": model.backbone, "config": to_dict(model.config),
                          "versions": meta.get("versions")}}

    def query_vectors(self, text: str | None = None, *, image: PathLike | None = None,
                      cache_dir: PathLike | None = None) -> np.ndarray:
        """The (1, D) query vector of a text, or of an image file (its features are cached)."""
        check_query(text, image)
        if text is not None:
            return self.text_vector(text)
        problems = ProblemLog(echo=False)
        feats, ok = extract_features([Path(image)], self.backbone,  # type: ignore[arg-type]
                                     cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                                     problems=problems, progress=False, device=self.device)
        if not ok[0]:
            raise EmitError(problems.summary())
        return self.model.image_vectors(feats)

    def text_vector(self, text: str) -> np.ndarray:
        """The (1, D) vector of a text query (:func:`normalise_query`'s form of it): from the
        query cache, or encoded (MiniLM in ``query_precision``) and remembered."""
        key = (self.query_precision, normalise_query(text))
        vec = self.query_cache.get(key)
        if vec is not None:
            return vec
        with self._encode_lock:
            vec = self._encode(key[1])
        self.query_cache.put(key, vec)
        return vec

    def _encode(self, text: str) -> np.ndarray:
        encoder = self.model.encoder
        if not isinstance(encoder, SentenceTextEncoder):
            return self.model.text_vectors([text])
        out = encoder.embed_queries([text], precision=self.query_precision)
        # as RetrievalModel.text_vectors does after encoder.embed
        return normalise_rows(out) if self.model.metric == "ip" else out

    def rank(self, query: np.ndarray, top: int = 10, target: str = "images", query_kind: str = "text",
             *, rows: bool = False) -> dict[str, Any]:
        """The ``top`` nearest ``target`` entries of a ``query_kind`` ('text' or 'image') query
        vector, nearest first. A hubness correction built into the index applies only across
        modalities (text -> images, image -> texts); same-modality search gets plain scores.
        ``rows`` adds each hit's row in its index (``"row"``)."""
        check_target(target)
        if query_kind not in ("text", "image"):
            raise EmitError(f"unknown query kind {query_kind!r}; use 'text' or 'image'")
        if target not in self.indexes:
            raise EmitError(f"{self.folder}: has no text index; "
                            "build it with `emit index build ... --texts CAPTIONS`")
        index = self.indexes[target]
        across = (query_kind == "text") == (target == "images")
        scores, found = index.search_positions(query, top, corrected=across)
        hits = [(int(p), float(s))
                for p, s in zip(found[0].tolist(), scores[0].tolist(), strict=True) if p >= 0]
        results = [{"rank": r + 1, "id": index.ids[p], "score": s, **({"row": p} if rows else {})}
                   for r, (p, s) in enumerate(hits)]
        hub = index.params.get("hubness") if across else None
        if index.higher_is_better:
            order = "higher is nearer"
        elif hub is None:
            order = "lower is nearer (squared distance)"
        else:  # the folded bias is part of every distance
            order = "lower is nearer (squared distance plus the hubness bias; may be negative)"
        if hub is not None:
            order += f"; hubness-corrected (beta {hub.get('beta')})"
        return {"target": target, "metric": index.metric, "order": order, "results": results}

    def search(self, text: str | None = None, *, image: PathLike | None = None, top: int = 10,
               target: str = "images", cache_dir: PathLike | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        check_query(text, image)
        check_target(target)
        query = self.query_vectors(text, image=image, cache_dir=cache_dir)
        kind = "text" if text is not None else "image"
        ranked = self.rank(query, top, target, kind)
        return {"query": text if text is not None else str(image), "kind": kind, **ranked,
                "seconds": round(time.perf_counter() - start, 3)}
