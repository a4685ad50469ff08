"""Pairing review: load a batch of products (a folder under ``--products-root``, an upload, or a
review queue written by ``emit pair predict --review-below``), see the proposed tags, correct
them, and export the batch's ``final_json.json``.

A batch lives in memory (the newest ``max_batches``) under a random id; its images are served
by product id and position only. Exports are written with the library's atomic
:func:`write_final_json`, so a server stopped in the middle of one leaves the previous file or
the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from emit.data.products import PROFILE, Product, read_products, write_final_json
from emit.files import OutsideRoot, open_read, within
from emit.pairing.pipeline import ProductDecision
from emit.pairing.review_queue import SUFFIX as QUEUE_SUFFIX
from emit.pairing.review_queue import ReviewQueue, read_review_queue
from emit.problems import EmitError, ProblemLog
from emit.serve.errors import ApiError, ErrorBody, not_configured
from emit.serve.pair_api import AssignField, PairResponse, decision_json
from emit.serve.services import PairingService
from emit.serve.settings import Limits
from emit.serve.uploads import check_product_id, clean_tags, read_images, save_product

log = logging.getLogger("emit.serve")
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody}
                                           for code in (400, 403, 404, 413, 415, 422)}
MAX_LISTED_FOLDERS = 500
MAX_SCANNED_FOLDERS = 2000  # folders a listing of review queues looks into, at most
QUEUE_DEPTH = 3  # review queues are listed down to <root>/a/b/<name>.review.json
QUEUE_ASSIGN = "as predicted (review queue)"  # the rule is not recorded in the queue
EXPORT_NAME = "final_json.json"
NAME_MAX = 255  # bytes in one file or folder name, on every common file system
MAX_LABEL_BYTES = 100  # an export folder's name


@dataclass
class Batch:
    batch_id: str
    label: str  # names the export folder
    source: str
    products: list[Product]
    decisions: dict[str, ProductDecision]
    assign: str
    problems: list[dict[str, str]]
    temp: Path | None = None  # uploaded images, removed with the batch
    exported: Path | None = None
    confidence: dict[str, float] = field(default_factory=dict)  # per product, from a review queue
    queue: dict[str, Any] | None = None  # the review queue the batch was opened from
    by_id: dict[str, Product] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {p.product_id: p for p in self.products}

    def product(self, product_id: str) -> Product:
        if product_id not in self.by_id:
            raise ApiError(404, "unknown_product", f"batch {self.batch_id} has no product {product_id!r}")
        return self.by_id[product_id]


class BatchStore:
    """The newest batches, by id; dropping one removes its uploaded images."""

    def __init__(self, max_batches: int) -> None:
        self.max_batches = max_batches
        self._batches: OrderedDict[str, Batch] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, batch: Batch) -> None:
        with self._lock:
            self._batches[batch.batch_id] = batch
            while len(self._batches) > self.max_batches:
                _, old = self._batches.popitem(last=False)
                if old.temp is not None:
                    shutil.rmtree(old.temp, ignore_errors=True)

    def get(self, batch_id: str) -> Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "unknown_batch", f"no batch {batch_id!r}: it was never loaded, or it was "
                           f"dropped (the server keeps the newest {self.max_batches}); load it again")
        return batch


# ---- folders under the products root ------------------------------------------------------


def _resolve_inside(root: Path, relative: str, what: str, example: str,
                    is_kind: Callable[[Path], bool]) -> Path:
    """``root / relative`` resolved, refusing anything that is not a ``what`` (folder, file) inside
    ``root``: absolute paths, '..', drive letters, and symbolic links that lead out."""
    text = relative.strip().replace("\\", "/")
    if not text or "\x00" in text:
        raise ApiError(422, f"bad_{what}", f"name a {what} under the products root, e.g. {example!r}")
    parts = PurePosixPath(text).parts
    if PurePosixPath(text).is_absolute() or PureWindowsPath(relative).drive or ".." in parts:
        raise ApiError(403, "outside_products_root", f"{relative!r} is not inside the products root; give a "
                       "path relative to it, without '..'")
    try:
        sizes = [len(os.fsencode(part)) for part in parts]
    except UnicodeError:  # a lone surrogate (JSON allows "\ud800"): no file name can hold it
        raise ApiError(422, f"bad_{what}", f"{relative[:60]!r} is not valid text for a {what} name") from None
    if max(sizes, default=0) > NAME_MAX:
        raise ApiError(422, f"bad_{what}", f"{relative[:60]!r}...: a {what} name is {max(sizes)} bytes "
                       f"long; file systems allow {NAME_MAX}, so no {what} under the products root has it")
    base = root.resolve()
    try:
        target = (base / text).resolve()
        if not target.is_relative_to(base):  # a symbolic link that leads out
            raise ApiError(403, "outside_products_root", f"{relative!r} leads outside the products root")
        found = is_kind(target)
    except (OSError, RuntimeError) as exc:  # a path too long; a loop of links (RuntimeError before 3.13)
        raise ApiError(404, f"no_such_{what}", f"no {what} {relative[:60]!r} under the products root "
                       f"({getattr(exc, 'strerror', None) or exc})") from exc
    if not found:
        raise ApiError(404, f"no_such_{what}", f"no {what} {relative!r} under the products root")
    return target


def resolve_folder(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that is not a folder inside ``root``."""
    return _resolve_inside(root, relative, "folder", "batch1", Path.is_dir)


def resolve_file(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that is not a file inside ``root``."""
    return _resolve_inside(root, relative, "file", f"out/final_json{QUEUE_SUFFIX}", Path.is_file)


def list_folders(root: Path) -> list[str]:
    """Folders (up to two levels down) that hold product folders, relative to ``root``."""
    base = root.resolve()
    found: list[str] = []

    def holds_products(folder: Path) -> bool:
        try:
            return any((child / PROFILE).is_file() for child in folder.iterdir() if child.is_dir())
        except OSError:
            return False

    candidates = [base]
    for child in sorted(base.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            candidates.append(child)
            candidates += sorted(g for g in child.iterdir() if g.is_dir() and not g.name.startswith("."))
    for folder in candidates:
        if len(found) >= MAX_LISTED_FOLDERS:
            break
        if not folder.resolve().is_relative_to(base):  # a link out of the root: not loadable
            continue
        if holds_products(folder):
            found.append(folder.relative_to(base).as_posix())
    return found


def list_queues(root: Path) -> list[str]:
    """Review queues (``*.review.json``) up to QUEUE_DEPTH levels under ``root``, relative to it.

    Bounded: at most MAX_LISTED_FOLDERS files and MAX_SCANNED_FOLDERS folders looked into, and
    product folders (those with a profile) are not looked into, since they hold only images."""
    base = root.resolve()
    found: list[str] = []
    level, scanned = [base], 0
    for _ in range(QUEUE_DEPTH):
        deeper: list[Path] = []
        for folder in level:
            if scanned >= MAX_SCANNED_FOLDERS:
                return found
            scanned += 1
            try:
                if not folder.resolve().is_relative_to(base):  # a link out of the root: not openable
                    continue
                with os.scandir(folder) as listing:  # the entry types come with the listing
                    entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
            except (OSError, RuntimeError):  # RuntimeError: a loop of links, before Python 3.13
                continue
            if any(e.name == PROFILE for e in entries):
                continue
            for entry in entries:
                try:
                    if entry.name.endswith(QUEUE_SUFFIX) and entry.is_file():
                        path = Path(entry.path)
                        if path.resolve().is_relative_to(base):
                            found.append(path.relative_to(base).as_posix())
                            if len(found) >= MAX_LISTED_FOLDERS:
                                return found
                    elif entry.is_dir():
                        deeper.append(Path(entry.path))
                except (OSError, RuntimeError):  # a loop of links, a name too long: not listed
                    continue
        level = deeper
    return found


def _label(text: str) -> str:
    """A file-system-safe name for the export folder, of at most MAX_LABEL_BYTES bytes."""
    label = re.sub(r"[^\w.-]+", "_", text.replace("/", "__")).strip("._") or "root"
    if len(label.encode("utf-8")) <= MAX_LABEL_BYTES:
        return label
    # shortened, plus a hash of the whole name: two long names that share a start stay apart
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    head = label.encode("utf-8")[:MAX_LABEL_BYTES - 13].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def _of_products(record: str, wanted: set[str]) -> bool:
    """Whether a problem's record ("<pid>" or "<pid> image x.jpg") is about one of ``wanted``."""
    return record in wanted or any(record[:k] in wanted for k, c in enumerate(record) if c == " ")


def _relative_problems(problems: ProblemLog, root: Path) -> list[dict[str, str]]:
    """Problems with their file named relative to the products root. Paths are not resolved: a
    link that leads out keeps its name inside the root, and where it leads is not shown."""
    bases = [root.resolve(), root.absolute()]
    out = []
    for p in problems.to_json():
        where = Path(p["where"])
        for base in bases:
            if where.is_relative_to(base):
                p["where"] = where.relative_to(base).as_posix()
                break
        out.append(p)
    return out


# ---- API ----------------------------------------------------------------------------------


class LoadFolder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field(min_length=1, max_length=1000, examples=["batch1"],
                        description="a folder of product folders (or one product folder), relative to "
                                    "the products root")


class OpenQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(min_length=1, max_length=1000, examples=[f"out/final_json{QUEUE_SUFFIX}"],
                      description="a review queue written by emit pair predict --review-below, relative to "
                                  "the products root")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: dict[str, list[str | None]] = Field(
        default_factory=dict, description="product id -> the final tag of each image, in the batch's order "
                                          "(null or '' for none); products left out keep the proposed tags")


class ReviewImage(BaseModel):
    index: int
    name: str
    tag: str | None
    confidence: float | None
    image_url: str


class ReviewProduct(PairResponse):
    images: list[ReviewImage]  # type: ignore[assignment]
    confidence: float | None = Field(None, description="the probability that all the product's images are "
                                     "right, from a review queue; null for other batches")


class QueueInfo(BaseModel):
    file: str = Field(description="the review queue, relative to the products root")
    data: str = Field(description="the products it lists, relative to the products root")
    threshold: float = Field(description="the queue lists the products whose confidence is below this")
    listed: int = Field(description="products in the queue; those not found are in the batch's problems")


class BatchView(BaseModel):
    batch_id: str
    label: str
    source: str
    assign: str
    products: list[ReviewProduct]
    problems: list[dict[str, str]]
    export_path: str | None
    download_url: str | None
    queue: QueueInfo | None = None


class ExportResult(BaseModel):
    path: str
    download_url: str
    products: int
    images: int
    changed: int = Field(description="images whose exported tag differs from the proposed one")
    final_json: dict[str, Any]


class FolderList(BaseModel):
    root: str | None
    folders: list[str]


class QueueList(BaseModel):
    root: str | None
    queues: list[str] = Field(description=f"*{QUEUE_SUFFIX} files under the products root, relative to it")


def review_router(service: PairingService | None, limits: Limits, workdir: Path, products_root: Path | None,
                  export_dir: Path) -> APIRouter:
    router = APIRouter(prefix="/review", tags=["review"], responses=ERRORS)
    store = BatchStore(limits.max_batches)

    def pairing() -> PairingService:
        if service is None:
            raise not_configured("pairing model", "--pairing-model MODEL")
        return service

    def view(batch: Batch) -> dict[str, Any]:
        products = []
        for product in batch.products:
            item = decision_json(product, batch.decisions[product.product_id], batch.assign)
            item["confidence"] = batch.confidence.get(product.product_id)
            if not item["cost"]:  # a queue's proposals come without costs: no rows then
                item["cost_rows"] = []
            for k, image in enumerate(item["images"]):
                image.update(index=k, image_url=f"/review/batches/{batch.batch_id}/images/"
                                                f"{quote(product.product_id, safe='')}/{k}")
            products.append(item)
        exported = batch.exported is not None
        return {"batch_id": batch.batch_id, "label": batch.label, "source": batch.source,
                "assign": batch.assign, "products": products, "problems": batch.problems,
                "export_path": str(batch.exported) if exported else None,
                "download_url": f"/review/batches/{batch.batch_id}/{EXPORT_NAME}" if exported else None,
                "queue": batch.queue}

    def decide(products: list[Product], problems: ProblemLog, label: str, source: str,
               assign: AssignField | None, temp: Path | None, root: Path | None) -> dict[str, Any]:
        svc = pairing()
        decisions = {d.product_id: d for d in svc.predict(products, problems, assign)}
        reported = _relative_problems(problems, root) if root else problems.to_json()
        batch = Batch(uuid.uuid4().hex, label, source, products, decisions, svc.assignment(assign), reported,
                      temp)
        store.add(batch)
        return view(batch)

    @router.get("/folders", response_model=FolderList, summary="Folders of products the review can load")
    def folders() -> dict[str, Any]:
        if products_root is None:
            return {"root": None, "folders": []}
        return {"root": str(products_root), "folders": list_folders(products_root)}

    @router.get("/queues", response_model=QueueList, summary="Review queues the review can open")
    def queues() -> dict[str, Any]:
        if products_root is None:
            return {"root": None, "queues": []}
        return {"root": str(products_root), "queues": list_queues(products_root)}

    @router.post("/load", response_model=BatchView, summary="Load a folder of products and propose tags")
    def load(body: LoadFolder, assign: AssignField | None = None) -> dict[str, Any]:
        pairing()
        if products_root is None:
            raise not_configured("products root", "--products-root DIR")
        target = resolve_folder(products_root, body.folder)
        single = (target / PROFILE).is_file()
        if single and target == products_root.resolve():
            raise ApiError(422, "bad_folder", "the products root itself is a product folder; give its parent "
                           "as --products-root")
        data = target.parent if single else target
        count = sum(1 for c in data.iterdir() if c.is_dir())
        if count > limits.max_products and not single:
            raise ApiError(413, "too_many_products", f"{body.folder!r} holds {count} folders; this server "
                           f"reviews at most {limits.max_products} products at once; split the batch")
        problems = ProblemLog(echo=False)
        try:  # confined: every profile and image is read inside the products root only
            products, _ = read_products(data, problems=problems, confine_to=products_root)
        except EmitError as exc:
            raise ApiError(422, "no_products", f"{body.folder!r}: {exc}") from exc
        if single:
            products = [p for p in products if p.product_id == target.name]
            problems.items = [p for p in problems.items if p.record.startswith(target.name)]
        if not products:
            raise ApiError(422, "no_products", f"{body.folder!r} holds no usable product folders "
                           f"(<product_id>/{PROFILE} with images)",
                           _relative_problems(problems, products_root)[:50])
        rel = target.relative_to(products_root.resolve()).as_posix()
        return decide(products, problems, _label(rel), f"folder:{rel}", assign, None, products_root)

    @router.post("/queue", response_model=BatchView,
                 summary="Open a review queue (emit pair predict --review-below): least confident first")
    def open_queue(body: OpenQueue) -> dict[str, Any]:
        """The queue's products with the tags the prediction gave them (not predicted again: the
        model may have changed since), least confident first. No pairing model is needed."""
        if products_root is None:
            raise not_configured("products root", "--products-root DIR")
        target = resolve_file(products_root, body.file)
        base = products_root.resolve()
        rel = target.relative_to(base).as_posix()
        if not target.name.endswith(QUEUE_SUFFIX):
            raise ApiError(422, "bad_file", f"{body.file!r} is not a review queue; give a *{QUEUE_SUFFIX} "
                           "file written by emit pair predict --review-below")
        queue = _read_queue(target, body.file, products_root)
        data = _queue_data(queue, body.file, base)
        if len(queue.products) > limits.max_products:
            raise ApiError(413, "too_many_products", f"{body.file!r} lists {len(queue.products)} products; "
                           f"this server reviews at most {limits.max_products} at once; write a shorter "
                           "queue with a lower --review-below")
        if not queue.products:
            raise ApiError(422, "empty_queue", f"{body.file!r} lists no products: every product was at least "
                           f"{queue.threshold:.0%} sure to be right, so there is nothing to review")
        problems = ProblemLog(echo=False)
        try:  # confined: every profile and image is read inside the products root only
            products, _ = read_products(data, problems=problems, confine_to=products_root)
        except EmitError as exc:
            raise ApiError(422, "no_products", f"{body.file!r}: its data {_shown(data, base)}: "
                           f"{_shown_text(str(exc), data, base)}") from exc
        wanted = {e.product_id for e in queue.products}
        # the data may hold many more products than the queue: only its products' problems count
        problems.items = [p for p in problems.items if _of_products(p.record, wanted)]
        found, decisions = _queued_decisions(queue, products, data, problems)
        if not found:
            raise ApiError(422, "no_products", f"none of the {len(queue.products)} products of {body.file!r} "
                           f"could be read from its data {_shown(data, base)}; predict again",
                           _relative_problems(problems, products_root)[:50])
        info = {"file": rel, "data": _shown(data, base), "threshold": queue.threshold,
                "listed": len(queue.products)}
        batch = Batch(uuid.uuid4().hex, _label(rel.removesuffix(".json")), f"queue:{rel}", found, decisions,
                      QUEUE_ASSIGN, _relative_problems(problems, products_root),
                      confidence={e.product_id: e.confidence for e in queue.products}, queue=info)
        store.add(batch)
        return view(batch)

    @router.post("/upload", response_model=BatchView, summary="Upload one product's images and tags")
    def upload(images: Annotated[list[UploadFile], File(description="the product's images")],
               tags: Annotated[list[str], Form(description="option tags: one per field, or one per line")],
               product_id: Annotated[str, Form(max_length=200)] = "upload",
               assign: Annotated[AssignField | None, Form()] = None) -> dict[str, Any]:
        pairing()
        pid = check_product_id(product_id)
        options = clean_tags(tags, limits)
        uploads = read_images(images, limits)
        temp = workdir / "batches" / uuid.uuid4().hex
        product = save_product(temp / pid, pid, uploads, options)
        return decide([product], ProblemLog(echo=False), _label(f"upload-{pid}-{temp.name[:8]}"), "upload",
                      assign, temp, None)

    @router.get("/batches/{batch_id}", response_model=BatchView, summary="A loaded batch and its proposals")
    def get_batch(batch_id: str) -> dict[str, Any]:
        return view(store.get(batch_id))

    @router.get("/batches/{batch_id}/images/{product_id}/{index}", response_class=StreamingResponse,
                responses={200: {"content": {"image/*": {}}}}, summary="An image of a batch's product")
    def batch_image(batch_id: str, product_id: str, index: int) -> StreamingResponse:
        product = store.get(batch_id).product(product_id)
        if not 0 <= index < len(product.images):
            raise ApiError(404, "no_such_image", f"product {product_id!r} has images "
                           f"0..{len(product.images) - 1}")
        name = product.images[index]
        path = product.image_path(name)
        try:  # the file is checked as opened (inside the root, a regular file) and sent from there
            fh = open_read(path)
        except OutsideRoot as exc:
            raise ApiError(403, "outside_products_root", f"image {name!r} of product {product_id!r} is a "
                           "symbolic link that leads outside the products root; it is not served") from exc
        except OSError as exc:
            raise ApiError(404, "no_such_image", f"image {name!r} is gone from its folder, or is not a "
                           "regular file") from exc
        size = os.fstat(fh.fileno()).st_size
        # the type comes from the name, which an upload chooses: only ever an image type, so a
        # file named x.html is never served to a browser as a page of this site
        kind = mimetypes.guess_type(path.name)[0] or ""
        media_type = kind if kind.startswith("image/") else "application/octet-stream"
        return StreamingResponse(_read_chunks(fh, size), media_type=media_type,
                                 headers={"content-length": str(size)})

    @router.post("/batches/{batch_id}/export", response_model=ExportResult,
                 summary="Write the batch's final_json.json with the reviewed tags")
    def export(batch_id: str, body: ExportRequest) -> dict[str, Any]:
        batch = store.get(batch_id)
        final = {pid: list(d.tags) for pid, d in batch.decisions.items()}
        unknown: list[dict[str, Any]] = []
        for pid, tags in body.tags.items():
            if pid not in batch.by_id:
                raise ApiError(422, "unknown_product", f"batch {batch_id} has no product {pid!r}")
            product = batch.by_id[pid]
            if len(tags) != len(product.images):
                raise ApiError(422, "wrong_image_count", f"product {pid!r} has {len(product.images)} images, "
                               f"the export gives {len(tags)} tags; give one per image, in order")
            for name, tag in zip(product.images, tags, strict=True):
                if tag and tag not in product.optional_tags:
                    unknown.append({"product_id": pid, "image": name, "tag": tag,
                                    "allowed": product.optional_tags})
            final[pid] = [t or None for t in tags]
        if unknown:
            first = unknown[0]
            raise ApiError(422, "unknown_tag", f"{len(unknown)} tag(s) are not options of their product, "
                           f"e.g. {first['tag']!r} for {first['product_id']} {first['image']}; use one of "
                           f"{first['allowed']}", unknown[:50])
        path = export_dir / batch.label / EXPORT_NAME
        try:
            write_final_json(path, batch.products, final)
        except OSError as exc:  # the server's disk, not the request: a 500, but one that says why
            log.error("export failed", extra={"fields": {"path": str(path), "error": str(exc)}})
            raise ApiError(500, "export_failed", f"the server could not write {path}: "
                           f"{exc.strerror or exc}; nothing was changed; tell the server's operator") from exc
        batch.exported = path
        changed = sum(a != b for pid, d in batch.decisions.items()
                      for a, b in zip(d.tags, final[pid], strict=True))
        return {"path": str(path), "download_url": f"/review/batches/{batch.batch_id}/{EXPORT_NAME}",
                "products": len(batch.products), "images": sum(len(p.images) for p in batch.products),
                "changed": changed,
                "final_json": {p.product_id: p.to_profile(final[p.product_id]) for p in batch.products}}

    @router.get(f"/batches/{{batch_id}}/{EXPORT_NAME}", response_class=FileResponse,
                responses={200: {"content": {"application/json": {}}}},
                summary="Download the batch's last exported final_json.json")
    def download(batch_id: str) -> FileResponse:
        batch = store.get(batch_id)
        if batch.exported is None or not batch.exported.is_file():
            raise ApiError(404, "not_exported", "this batch has not been exported yet; POST .../export first")
        return FileResponse(batch.exported, media_type="application/json", filename=EXPORT_NAME)

    return router


# ---- review queues ------------------------------------------------------------------------


def _shown(path: Path, base: Path) -> str:
    """``path`` relative to the products root where it is inside it (as written, links unresolved)."""
    for root in (base, base.absolute()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix() or "."
    return str(path)


def _shown_text(message: str, path: Path, base: Path) -> str:
    return message.replace(str(path), _shown(path, base))


def _read_queue(target: Path, given: str, root: Path) -> ReviewQueue:
    try:  # read inside the root only, checked on the opened file (a link swapped meanwhile is caught)
        return read_review_queue(within(target, root))
    except EmitError as exc:
        if isinstance(exc, OutsideRoot) or isinstance(exc.__cause__, OutsideRoot):
            raise ApiError(403, "outside_products_root",
                           f"{given!r} leads outside the products root") from exc
        raise ApiError(422, "bad_queue", str(exc).replace(str(target), given)) from exc


def _queue_data(queue: ReviewQueue, given: str, base: Path) -> Path:
    """The folder (or combined file) the queue's products were predicted from; inside the root."""
    data = queue.data
    move = ("move the data under the products root (or start emit serve with a --products-root that "
            "holds it), then write the queue again: emit pair predict MODEL DATA --out OUT/final_json.json "
            "--review-below P")
    try:
        real = data.resolve()
        inside = real.is_relative_to(base)
        exists = real.exists()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links, before Python 3.13
        raise ApiError(404, "no_such_folder", f"{given!r}: its data {data} cannot be read "
                       f"({getattr(exc, 'strerror', None) or exc}); {move}") from exc
    if not inside:  # as written, or through a link: where a link leads is not said
        raise ApiError(403, "outside_products_root", f"{given!r}: its data {data} is not inside the "
                       f"products root, so this server does not read it; {move}")
    if not exists:
        raise ApiError(404, "no_such_folder", f"{given!r}: its data {_shown(data, base)} is gone from the "
                       "products root; restore it, or predict again and open the new queue")
    return data


def _queued_decisions(queue: ReviewQueue, products: list[Product], data: Path,
                      problems: ProblemLog) -> tuple[list[Product], dict[str, ProductDecision]]:
    """The queue's products that were read, in the queue's order, each with the queue's tags as
    its proposal. A product that is gone, or whose images changed since the prediction, is
    reported in ``problems`` and left out; a tag that is no longer an option is left empty."""
    by_id = {p.product_id: p for p in products}
    found: list[Product] = []
    decisions: dict[str, ProductDecision] = {}
    for entry in queue.products:
        pid = entry.product_id
        product = by_id.get(pid)
        if product is None:
            problems.add(data, pid, "listed in the review queue but not read from its data (gone, or "
                         "skipped: see the other problems); not loaded",
                         "restore the product, or predict again and open the new queue")
            continue
        if len(entry.tags) != len(product.images):
            problems.add(product.source or data, pid, f"the review queue has {len(entry.tags)} tags, but the "
                         f"product now lists {len(product.images)} images: it changed since the prediction; "
                         "not loaded", "predict again and open the new queue, or load its folder")
            continue
        tags: list[str | None] = []
        for name, tag in zip(product.images, entry.tags, strict=True):
            if tag is not None and tag not in product.optional_tags:
                problems.add(product.source or data, f"{pid} image {name}", f"the queue's tag {tag!r} is no "
                             "longer one of the product's option tags; left empty", "choose its tag here")
                tag = None
            tags.append(tag)
        # the queue holds no costs nor per-image confidences: the product's confidence is shown
        no_cost = np.zeros((0, len(product.optional_tags)))
        decisions[pid] = ProductDecision(pid, tags, [None] * len(tags), no_cost)
        found.append(product)
    return found, decisions


def _read_chunks(fh: IO[bytes], size: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """At most ``size`` bytes of an open file (the Content-Length already sent), then close it."""
    try:
        left = size
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        fh.close()
