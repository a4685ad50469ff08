"""What the service loads once at start-up: the search index with its model, the pairing model
with its backbone. Requests only use them.

Torch modules are not documented as safe to call from several threads at once, and on a
2-core machine parallel forward passes gain nothing, so each service runs its model calls
under one lock. FAISS searches of a loaded index are read-only and run outside it.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from emit.config import to_dict
from emit.data.images import IMAGE_SUFFIXES, load_image
from emit.data.products import Product
from emit.devices import resolve_device
from emit.files import read_json
from emit.pairing.assign import AssignMode
from emit.pairing.jobs import assignment_used, load_pairing_model
from emit.pairing.model import MODEL_FILE, PairingModel
from emit.pairing.pipeline import ProductDecision, predict_products
from emit.problems import EmitError, ProblemLog
from emit.retrieval.search import IndexSearcher
from emit.vision.backbones import Backbone

log = logging.getLogger("emit.serve")

THUMBNAIL_PX = 256
THUMBNAIL_CACHE = 2048  # thumbnails kept in memory (~10 kB each)
WARM_UP_TEXT = "warm-up 红色"  # Chinese too: Jieba reads its dictionary on first use (about a second)


def _warm_up_image(folder: Path, name: str = "warm-up.png") -> Path:
    path = folder / name
    Image.new("RGB", (64, 64), (200, 30, 35)).save(path)
    return path


class RowLookup:
    """Image id -> row in the index. A small index gets a full dict; a large one, memory-mapped
    (:class:`emit.retrieval.ondisk.IdColumn`), would cost every server process millions of Python
    strings, so it remembers the rows of recent results instead (a search saw them first)."""

    FULL_UP_TO = 1_000_000
    REMEMBERED = 100_000

    def __init__(self, ids: Sequence[str]) -> None:
        self._full = ({image_id: row for row, image_id in enumerate(ids)}
                      if isinstance(ids, list) or len(ids) <= self.FULL_UP_TO else None)
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, image_id: str, row: int) -> None:
        if self._full is not None:
            return
        with self._lock:
            self._recent[image_id] = row
            self._recent.move_to_end(image_id)
            while len(self._recent) > self.REMEMBERED:
                self._recent.popitem(last=False)

    def get(self, image_id: str) -> int | None:
        if self._full is not None:
            return self._full.get(image_id)
        with self._lock:
            return self._recent.get(image_id)

    def __getitem__(self, image_id: str) -> int:
        row = self.get(image_id)
        if row is None:
            raise KeyError(image_id)
        return row

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self.get(image_id) is not None


class SearchService:
    """An index folder opened once (see :class:`emit.retrieval.search.IndexSearcher`)."""

    def __init__(self, index_dir: Path, model_dir: Path | None = None, cache_dir: Path | None = None,
                 device: str = "cpu") -> None:
        self.searcher = IndexSearcher.open(index_dir, model_dir, device=device)
        self.cache_dir = cache_dir
        self.lock = threading.Lock()
        self.ids = self.searcher.indexes["images"].ids
        self.row_of = RowLookup(self.ids)
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self.info = self.searcher.describe()
        self.warm_up()

    def warm_up(self) -> None:
        """One text and one image query at start-up, so that whatever the library loads on first
        use (the image backbone, Jieba's dictionary) is loaded before the first request, not in it."""
        with tempfile.TemporaryDirectory(prefix="emit-serve-warm-") as tmp:
            self.searcher.query_vectors(WARM_UP_TEXT)
            # a throwaway feature cache: the warm-up image must not land in the real one
            self.searcher.query_vectors(image=_warm_up_image(Path(tmp)), cache_dir=tmp)

    @property
    def targets(self) -> list[str]:
        return list(self.searcher.indexes)

    def search(self, *, text: str | None = None, image: Path | None = None, top_k: int = 10,
               target: str = "images") -> dict[str, Any]:
        with self.lock:  # the model; FAISS below runs outside the lock
            query = self.searcher.query_vectors(text, image=image, cache_dir=self.cache_dir)
        found = self.searcher.rank(query, top_k, target, "text" if text is not None else "image",
                                   rows=target == "images")
        for hit in found["results"]:
            if "row" in hit:
                self.row_of.remember(hit["id"], hit.pop("row"))
        return found

    def image_path(self, row: int) -> Path | None:
        """The file of indexed image ``row``, if it is still there and is an image file."""
        if not 0 <= row < len(self.ids):
            return None
        path = Path(self.ids[row])
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            return None
        return path

    def thumbnail(self, row: int) -> bytes | None:
        """A JPEG of at most THUMBNAIL_PX pixels a side, made once and kept (least recently used out)."""
        with self._thumbs_lock:
            if row in self._thumbs:
                self._thumbs.move_to_end(row)
                return self._thumbs[row]
        path = self.image_path(row)
        if path is None:
            return None
        try:
            image = load_image(path)
        except EmitError:
            return None
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._thumbs_lock:
            self._thumbs[row] = data
            while len(self._thumbs) > THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        return data


class PairingService:
    """A pairing model and its backbone, loaded once."""

    def __init__(self, model_dir: Path, cache_dir: Path | None = None, device: str = "cpu") -> None:
        self.folder = model_dir
        self.device = str(resolve_device(device))
        self.model: PairingModel
        self.backbone: Backbone
        self.model, self.backbone = load_pairing_model(model_dir)
        self.cache_dir = cache_dir
        self.lock = threading.Lock()
        meta = read_json(model_dir / MODEL_FILE)
        self.info = {"folder": str(model_dir), "config": to_dict(self.model.config),
                     "backbone": self.model.backbone_identity, "labels": len(self.model.vocab.labels),
                     "members": len(self.model.members), "assign": self.assignment(),
                     "versions": meta.get("versions")}
        self.warm_up()

    def warm_up(self) -> None:
        """Tag one generated product at start-up: a model that cannot run stops start-up instead of
        failing the first request, and the first request pays no first-call costs."""
        with tempfile.TemporaryDirectory(prefix="emit-serve-warm-") as tmp:
            folder = Path(tmp) / "warm-up"
            folder.mkdir()
            image = _warm_up_image(folder)
            product = Product("warm-up", ["红色", "黑色"], [image.name], [None], folder, source="warm-up")
            predict_products(self.model, self.backbone, [product], cache_dir=None,
                             problems=ProblemLog(echo=False), progress=False, device=self.device)

    def assignment(self, assign: AssignMode | None = None) -> str:
        return assignment_used(self.model, assign)

    def predict(self, products: Sequence[Product], problems: ProblemLog,
                assign: AssignMode | None = None) -> list[ProductDecision]:
        with self.lock:
            return predict_products(self.model, self.backbone, products, cache_dir=self.cache_dir,
                                    problems=problems, progress=False, assign_mode=assign,
                                    device=self.device)


@dataclass
class Services:
    search: SearchService | None = None
    pairing: PairingService | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)


def load_services(index: Path | None, retrieval_model: Path | None, pairing_model: Path | None,
                  cache_dir: Path | None, device: str = "cpu") -> Services:
    """Load everything the settings name; a missing or mismatched model stops start-up here."""
    services = Services()
    if index is not None:
        start = time.perf_counter()
        services.search = SearchService(index, retrieval_model, cache_dir, device)
        log.info("search index loaded", extra={"fields": {
            "index": str(index), "images": len(services.search.ids), "targets": services.search.targets,
            "seconds": round(time.perf_counter() - start, 3)}})
    if pairing_model is not None:
        start = time.perf_counter()
        services.pairing = PairingService(pairing_model, cache_dir, device)
        log.info("pairing model loaded", extra={"fields": {
            "model": str(pairing_model), "members": len(services.pairing.model.members),
            "seconds": round(time.perf_counter() - start, 3)}})
    return services

