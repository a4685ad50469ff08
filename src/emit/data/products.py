"""Read and write products in the Taobao pairing layout.

Two forms are accepted:

* a folder of product folders: ``<root>/<product_id>/profile.json`` with the images beside it;
* a combined file ``{product_id: profile}`` (``train_all.json``, ``test_all.json``), whose
  images are looked up under ``<image_root>/<product_id>/`` (default: the file's folder).

A profile is ``{"optional_tags": [...], "imgs_tags": [{"<pid>_<k>.jpg": tag}, ...]}``. In data
to predict the tags are empty strings. Bad records are reported in a :class:`ProblemLog`
and skipped; only an unusable root raises :class:`EmitError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from emit.files import atomic_write_json, read_json
from emit.problems import EmitError, ProblemLog

PROFILE = "profile.json"


@dataclass
class Product:
    """One product: its option tags and its images, with the true tag of each image if known."""

    product_id: str
    optional_tags: list[str]
    images: list[str]  # image file names, in the order of the profile
    tags: list[str | None]  # tag per image; None where unknown (data to predict)
    folder: Path | None = None  # where the images live; None if the source has no images
    source: str = ""  # the file the product was read from, for error messages
    extra: dict[str, Any] = field(default_factory=dict)  # unknown profile keys, kept on write

    def image_path(self, name: str) -> Path:
        if self.folder is None:
            raise EmitError(f"{self.source}: product {self.product_id} has no image folder")
        return self.folder / name

    @property
    def labelled(self) -> bool:
        return any(t is not None for t in self.tags)

    def to_profile(self, tags: list[str | None] | None = None) -> dict[str, Any]:
        tags = self.tags if tags is None else tags
        profile = dict(self.extra)
        profile["optional_tags"] = list(self.optional_tags)
        profile["imgs_tags"] = [{n: (t or "")} for n, t in zip(self.images, tags, strict=True)]
        return profile


def safe_image_name(name: str) -> bool:
    """True if ``name`` is a plain file name that stays inside its product folder."""
    if not name or not name.strip(". ") or "\x00" in name:
        return False  # also ".. " and "...": Windows drops trailing dots and spaces
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return False
    if PureWindowsPath(name).drive:
        return False  # "C:x.jpg" is relative to drive C:, not to the product folder
    return "/" not in name and "\\" not in name


def _parse_profile(
    pid: str, profile: Any, source: str, folder: Path | None, problems: ProblemLog
) -> Product | None:
    """Validate one profile; return None (after reporting) if the product is unusable."""
    if not isinstance(profile, dict):
        problems.add(source, pid, f"profile is {type(profile).__name__}, not an object",
                     'write {"optional_tags": [...], "imgs_tags": [...]}')
        return None
    raw_tags = profile.get("optional_tags")
    if not isinstance(raw_tags, list) or not raw_tags:
        problems.add(source, pid, "optional_tags is missing or empty; product skipped",
                     "list the product's option tags in optional_tags")
        return None
    tags: list[str] = []
    for t in raw_tags:
        if not isinstance(t, str) or not t.strip():
            problems.add(source, pid, f"optional tag {t!r} is not a non-empty string; tag dropped",
                         "remove it or write the tag text")
        elif t in tags:
            problems.add(source, pid, f"optional tag {t!r} is listed twice; duplicate dropped",
                         "list each tag once")
        else:
            tags.append(t)
    if not tags:
        problems.add(source, pid, "no usable optional tags; product skipped",
                     "list the product's option tags in optional_tags")
        return None

    raw_images = profile.get("imgs_tags")
    if not isinstance(raw_images, list):
        problems.add(source, pid, "imgs_tags is missing or not a list; product skipped",
                     'write imgs_tags as [{"<image>.jpg": "<tag or empty>"}, ...]')
        return None
    names: list[str] = []
    truth: list[str | None] = []
    for k, entry in enumerate(raw_images):
        if not (isinstance(entry, dict) and len(entry) == 1):
            problems.add(source, f"{pid} imgs_tags[{k}]", "entry is not a one-key object; skipped",
                         'write {"<image>.jpg": "<tag>"}')
            continue
        ((name, tag),) = entry.items()
        if not safe_image_name(name):
            problems.add(source, f"{pid} image {name!r}",
                         "image name leaves the product folder (path or '..'); refused",
                         "use a plain file name inside the product folder")
            continue
        if name in names:
            problems.add(source, f"{pid} image {name}", "image listed twice; duplicate skipped",
                         "list each image once")
            continue
        if tag is None or tag == "":
            tag = None
        elif not isinstance(tag, str):
            problems.add(source, f"{pid} image {name}", f"tag {tag!r} is not a string; skipped",
                         "write the tag as a string")
            continue
        elif tag not in tags:
            problems.add(source, f"{pid} image {name}",
                         f"tag {tag!r} is not one of optional_tags {tags}; image skipped",
                         "fix the tag or add it to optional_tags")
            continue
        names.append(name)
        truth.append(tag)
    if not names:
        problems.add(source, pid, "no usable images; product skipped", "list the product's images")
        return None
    extra = {k: v for k, v in profile.items() if k not in ("optional_tags", "imgs_tags")}
    return Product(pid, tags, names, truth, folder, source, extra)


def _check_images(product: Product, problems: ProblemLog) -> Product | None:
    """Drop images whose files are missing; they would fail later with a worse message."""
    keep = [
        i for i, name in enumerate(product.images)
        if _exists(product, name, problems)
    ]
    if not keep:
        problems.add(product.source, product.product_id, "none of its images exist; product skipped",
                     f"put the images in {product.folder}")
        return None
    product.images = [product.images[i] for i in keep]
    product.tags = [product.tags[i] for i in keep]
    return product


def _exists(product: Product, name: str, problems: ProblemLog) -> bool:
    path = product.image_path(name)
    if path.is_file():
        return True
    problems.add(product.source, f"{product.product_id} image {name}",
                 f"image file {path} not found; image skipped", "add the file or remove the entry")
    return False


def read_products(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    require_images: bool = True,
    problems: ProblemLog | None = None,
) -> tuple[list[Product], ProblemLog]:
    """Read every product under ``path`` (a folder of product folders, or a combined JSON file).

    With ``require_images`` images whose files are missing are reported and dropped; set it
    to False for tag-only sources such as ``taobao-tags/test_all.json``.
    """
    problems = problems if problems is not None else ProblemLog()
    path = Path(path)
    products: list[Product] = []
    if path.is_file():
        data = read_json(path)
        if not isinstance(data, dict):
            raise EmitError(f"{path}: expected an object {{product_id: profile}}, "
                            f"got {type(data).__name__}")
        root = Path(image_root) if image_root is not None else path.parent
        for pid, profile in data.items():
            if not safe_image_name(str(pid)):  # the id becomes a folder name under root
                problems.add(path, pid, "product id is a path (or '..'), not a folder name; "
                             "product refused", "use the plain product id")
                continue
            product = _parse_profile(str(pid), profile, str(path), root / str(pid), problems)
            if product is not None:
                products.append(product)
    elif path.is_dir():
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        if not folders:
            raise EmitError(f"{path}: no product folders found; expected <root>/<product_id>/{PROFILE}")
        for folder in folders:
            profile_path = folder / PROFILE
            if not profile_path.is_file():
                problems.add(folder, folder.name, f"no {PROFILE}; folder skipped",
                             f"add {PROFILE} or move the folder out of the data root")
                continue
            try:
                profile = read_json(profile_path)
            except EmitError as exc:
                problems.add(profile_path, folder.name, f"{exc}; product skipped",
                             "fix or remove the profile")
                continue
            product = _parse_profile(folder.name, profile, str(profile_path), folder, problems)
            if product is not None:
                products.append(product)
    else:
        raise EmitError(f"{path}: no such file or folder; give a product folder or a *_all.json file")

    if require_images:
        products = [p for p in (_check_images(p, problems) for p in products) if p is not None]
    return products, problems


def write_final_json(path: str | os.PathLike[str], products: Iterable[Product],
                     predictions: dict[str, list[str | None]]) -> Path:
    """Write ``{product_id: profile}`` with ``imgs_tags`` filled from ``predictions``, atomically."""
    out = {p.product_id: p.to_profile(predictions.get(p.product_id, p.tags)) for p in products}
    return atomic_write_json(path, out)


def read_truth(path: str | os.PathLike[str], problems: ProblemLog | None = None) -> dict[str, Product]:
    """Read products with their true tags (a folder or a combined file) keyed by product id."""
    products, _ = read_products(path, require_images=False, problems=problems)
    return {p.product_id: p for p in products}
