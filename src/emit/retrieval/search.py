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
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emit.commit import verify_folder
from emit.config import to_dict
from emit.devices import resolve_device
from emit.files import read_json
from emit.problems import EmitError, ProblemLog
from emit.retrieval.index import IDS_FILE, INDEX_FILE, LISTS_FILE, MANIFEST_FILE, SearchIndex, load_index
from emit.retrieval.layout import MODEL_FILE
from emit.retrieval.model import RetrievalModel, model_backbone
from emit.vision.backbones import Backbone
from emit.vision.features import default_cache_dir, extract_features

INDEX_MODEL_FILE = "retrieval_index.json"
TEXTS_DIR = "texts"
TARGETS = ("images", "texts")

PathLike = str | os.PathLike[str]


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
    model calls while searches run in parallel; :meth:`search` does both.
    """

    folder: Path
    model: RetrievalModel
    indexes: dict[str, SearchIndex]  # target ('images' / 'texts') -> index
    model_folder: str = ""  # the model's folder, as given or as the index's pointer names it
    _backbone: Backbone | None = None
    device: str = "cpu"  # where image queries' features are extracted (emit.devices)

    @classmethod
    def open(cls, index_dir: PathLike, model: PathLike | None = None,
             targets: Sequence[str] | None = None, device: str = "cpu") -> IndexSearcher:
        """Load the model and the indexes of ``targets`` (default: images, and texts if built)."""
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
        return cls(folder, retrieval, indexes, model_folder, device=str(resolve_device(device)))

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
            return self.model.text_vectors([text])
        problems = ProblemLog(echo=False)
        feats, ok = extract_features([Path(image)], self.backbone,  # type: ignore[arg-type]
                                     cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                                     problems=problems, progress=False, device=self.device)
        if not ok[0]:
            raise EmitError(problems.summary())
        return self.model.image_vectors(feats)

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
