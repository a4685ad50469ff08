"""Read and write products in the Taobao pairing layout.

Two forms are accepted:

* a folder of product folders: ``<root>/<product_id>/profile.json`` with the images beside it;
* a combined file ``{product_id: profile}`` (``train_all.json``, ``test_all.json``), whose
  images are looked up under ``<image_root>/<product_id>/`` (default: the file's folder).

A profile is ``{"optional_tags": [...], "imgs_tags": [{"<pid>_<k>.jpg": tag}, ...]}``. In data
to predict the tags are empty strings. Bad records are reported in a :class:`ProblemLog`
and skipped; only an unusable root raises :class:`EmitError`.

A listed image whose file is missing is reported. In data to predict it stays in its product,
marked in :attr:`Product.missing`, so ``final_json.json`` still lists every input image in
input order (the missing ones with ``""``); in labelled data it is skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from emit.files import (
    JSONTextError,
    OutsideRoot,
    atomic_write_json,
    json_object_members,
    parse_json,
    read_json,
    read_text,
    within,
)
from emit.problems import EmitError, ProblemLog

PROFILE = "profile.json"
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone \\uXXXX escape, or a non-UTF-8 file name


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
    # if set, the product's files are read inside this folder only (emit serve's products root):
    # image_path() marks its paths so (emit.files.within), and symbolic links out are refused
    confine: Path | None = None
    missing: set[str] = field(default_factory=set)  # listed images whose files are missing (no tag)

    def image_path(self, name: str) -> Path:
        if self.folder is None:
            raise EmitError(f"{self.source}: product {self.product_id} has no image folder")
        return self.folder / name if self.confine is None else within(self.folder / name, self.confine)

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


def brief(value: Any, limit: int = 120) -> str:
    """``value`` as a problem message shows it: a str as it is, anything else as its repr; cut
    to about ``limit`` characters (head and tail kept), so a multi-megabyte tag or name is not
    a multi-megabyte message; and lone surrogates escaped, so the message can be written out."""
    text = value if isinstance(value, str) else repr(value)
    if _SURROGATE.search(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    return f"{text[: limit * 2 // 3]}...({len(text):,} characters)...{text[-limit // 3:]}"


def _lone_surrogate(value: Any) -> str | None:
    """Where in ``value`` a string (or key) holds a lone surrogate, e.g. ``imgs_tags[1]``; such a
    string is not Unicode and could not be written to final_json.json. Iterative, not recursive."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where or "the value"
        elif isinstance(item, dict):
            for key, v in item.items():
                if _SURROGATE.search(key):
                    return f"the key {key!a}"
                stack.append((f"{where}.{key}" if where else key, v))
        elif isinstance(item, list):
            stack.extend((f"{where}[{k}]", v) for k, v in enumerate(item))
    return None


def _parse_profile(
    pid: str, profile: Any, source: str, folder: Path | None, problems: ProblemLog
) -> Product | None:
    """Validate one profile; return None (after reporting) if the product is unusable."""
    if not isinstance(profile, dict):
        problems.add(source, pid, f"profile is {type(profile).__name__}, not an object",
                     'write {"optional_tags": [...], "imgs_tags": [...]}')
        return None
    bad = _lone_surrogate(profile)
    if bad is not None:
        problems.add(source, pid, f"{bad} holds a lone surrogate (a \\ud800-style escape without its "
                     "other half), which is not Unicode text; product skipped",
                     "fix the \\u escape: a character beyond U+FFFF needs both halves of its surrogate "
                     "pair (e.g. \\ud83d\\ude00), or write the character itself")
        return None
    raw_tags = profile.get("optional_tags")
    if not isinstance(raw_tags, list) or not raw_tags:
        problems.add(source, pid, "optional_tags is missing or empty; product skipped",
                     "list the product's option tags in optional_tags")
        return None
    tags: list[str] = []
    for t in raw_tags:
        if not isinstance(t, str) or not t.strip():
            problems.add(source, pid, f"optional tag {brief(repr(t))} is not a non-empty string; "
                         "tag dropped",
                         "remove it or write the tag text")
        elif t in tags:
            problems.add(source, pid, f"optional tag {brief(repr(t))} is listed twice; duplicate dropped",
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
            problems.add(source, f"{pid} image {brief(repr(name))}",
                         "image name leaves the product folder (path or '..'); refused",
                         "use a plain file name inside the product folder")
            continue
        if name in names:
            problems.add(source, f"{pid} image {brief(name)}", "image listed twice; duplicate skipped",
                         "list each image once")
            continue
        if tag is None or tag == "":
            tag = None
        elif not isinstance(tag, str):
            problems.add(source, f"{pid} image {brief(name)}", f"tag {brief(repr(tag))} is not a string; "
                         "skipped",
                         "write the tag as a string")
            continue
        elif tag not in tags:
            problems.add(source, f"{pid} image {brief(name)}",
                         f"tag {brief(repr(tag))} is not one of optional_tags {brief(tags)}; image skipped",
                         "fix the tag or add it to optional_tags")
            continue
        names.append(name)
        truth.append(tag)
    if not names:
        problems.add(source, pid, "no usable images; product skipped", "list the product's images")
        return None
    extra = {k: v for k, v in profile.items() if k not in ("optional_tags", "imgs_tags")}
    return Product(pid, tags, names, truth, folder, source, extra)


def _check_images(product: Product, problems: ProblemLog, keep_missing: bool) -> Product | None:
    """Report images whose files are missing. With ``keep_missing`` (data to predict) they stay,
    marked in ``product.missing``, so the predictions list every input image; otherwise they
    are dropped, as they would fail later with a worse message."""
    found = [i for i, name in enumerate(product.images) if _exists(product, name, problems, keep_missing)]
    if keep_missing:
        product.missing = set(product.images) - {product.images[i] for i in found}
        return product
    if not found:
        problems.add(product.source, product.product_id, "none of its images exist; product skipped",
                     f"put the images in {brief(str(product.folder))}")
        return None
    product.images = [product.images[i] for i in found]
    product.tags = [product.tags[i] for i in found]
    return product


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False instead of an OSError for a name too long for the file
    system (ENAMETOOLONG), which pathlib raises: such a file cannot exist."""
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # as _is_file
        return False


def _exists(product: Product, name: str, problems: ProblemLog, keep_missing: bool = False) -> bool:
    path = product.image_path(name)
    if _is_file(path):
        return True
    then = 'it gets "" in the predictions' if keep_missing else "image skipped"
    problems.add(product.source, f"{product.product_id} image {brief(name)}",
                 f"image file {brief(str(path))} not found; {then}", "add the file or remove the entry")
    return False


def _read_combined(path: Path, problems: ProblemLog) -> Any:
    """A combined ``{product_id: profile}`` file. If it cannot be parsed whole, but its products
    can still be told apart (one nested too deep, a huge number, a raw control character), each
    is parsed on its own: the bad ones are reported and skipped, the others kept."""
    text = read_text(path)
    try:
        return parse_json(text, path)
    except JSONTextError:
        members = json_object_members(text)
        if members is None:  # the file's own structure is broken: nothing can be trusted
            raise
    data: dict[str, Any] = {}
    for key_text, value_text, line in members:
        try:
            key = parse_json(key_text, path)
        except JSONTextError:  # a lone surrogate's escape decodes; anything else cannot be here
            raise EmitError(f"{path}: line {line}: unreadable product id {brief(key_text)}") from None
        try:
            data[key] = parse_json(value_text, path)
        except JSONTextError as exc:
            problems.add(path, f"{brief(key)} (line {line})", f"{exc.reason}; product skipped", exc.fix)
    return data


def read_products(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    require_images: bool = True,
    problems: ProblemLog | None = None,
    confine_to: str | os.PathLike[str] | None = None,
    keep_missing: bool | None = None,
) -> tuple[list[Product], ProblemLog]:
    """Read every product under ``path`` (a folder of product folders, or a combined JSON file).

    With ``require_images`` images whose files are missing are reported (and dropped or kept:
    see ``keep_missing``); set it to False for tag-only sources such as
    ``taobao-tags/test_all.json``. With ``confine_to``
    every file (profiles, the combined file, later the images) is read inside that folder only:
    a symbolic link that leads out of it is reported and refused.

    ``keep_missing`` (for prediction) keeps a missing image in its product, marked in
    :attr:`Product.missing`, so it gets ``""`` in ``final_json.json``; False drops it (and a
    product left without images). The default, None, keeps them in products with no known tag
    (data to predict) and drops them in labelled ones (training data).
    """
    problems = problems if problems is not None else ProblemLog()
    path = Path(path)
    confine = Path(confine_to) if confine_to is not None else None
    products: list[Product] = []
    if _is_file(path):
        data = _read_combined(within(path, confine), problems)
        if not isinstance(data, dict):
            raise EmitError(f"{path}: expected an object {{product_id: profile}}, "
                            f"got {type(data).__name__}")
        root = Path(image_root) if image_root is not None else path.parent
        for pid, profile in data.items():
            if not safe_image_name(str(pid)):  # the id becomes a folder name under root
                problems.add(path, brief(pid), "product id is a path (or '..'), not a folder name; "
                             "product refused", "use the plain product id")
                continue
            if _SURROGATE.search(pid):
                problems.add(path, f"{pid!a}", "product id holds a lone surrogate (a \\ud800-style escape "
                             "without its other half), which is not Unicode text; product skipped",
                             "fix the \\u escape in the product id")
                continue
            product = _parse_profile(str(pid), profile, str(path), root / str(pid), problems)
            if product is not None:
                products.append(product)
    elif _is_dir(path):
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        if not folders:
            raise EmitError(f"{path}: no product folders found; expected <root>/<product_id>/{PROFILE}")
        for folder in folders:
            if _SURROGATE.search(folder.name):  # the id would be written to final_json.json
                problems.add(path, f"{folder.name!a}", "folder name is not valid UTF-8; folder skipped",
                             "rename the folder to its product id, in UTF-8")
                continue
            profile_path = folder / PROFILE
            if not profile_path.is_file():
                problems.add(folder, folder.name, f"no {PROFILE}; folder skipped",
                             f"add {PROFILE} or move the folder out of the data root")
                continue
            try:
                profile = read_json(within(profile_path, confine))
            except JSONTextError as exc:  # malformed, nested too deep, ...: this product only
                problems.add(profile_path, folder.name, f"{exc.reason}; product skipped", exc.fix)
                continue
            except EmitError as exc:  # unreadable, not UTF-8, a link out of the root
                outside = isinstance(exc, OutsideRoot) or isinstance(exc.__cause__, OutsideRoot)
                problems.add(profile_path, folder.name, f"{exc}; product skipped",
                             "copy the product folder into the root folder instead of linking to it"
                             if outside else "fix or remove the profile")
                continue
            product = _parse_profile(folder.name, profile, str(profile_path), folder, problems)
            if product is not None:
                products.append(product)
    else:
        raise EmitError(f"{path}: no such file or folder; give a product folder or a *_all.json file")

    for product in products:  # its images too are read inside the root only
        product.confine = confine
    if require_images:
        checked = [_check_images(p, problems, not p.labelled if keep_missing is None else keep_missing)
                   for p in products]
        products = [p for p in checked if p is not None]
        if products and all(len(p.missing) == len(p.images) for p in products):
            # kept for prediction, yet not one image exists: a wrong image root, not bad records
            example = brief(str(products[0].image_path(products[0].images[0])))
            raise EmitError(f"{path}: none of the {sum(len(p.images) for p in products)} listed image "
                            f"files exist (e.g. {example}); give the folder that holds the product "
                            "folders (--image-root for a combined file)")
    return products, problems


def write_final_json(path: str | os.PathLike[str], products: Iterable[Product],
                     predictions: dict[str, list[str | None]]) -> Path:
    """Write ``{product_id: profile}`` with ``imgs_tags`` filled from ``predictions``, atomically.

    Every image of every product is written, in the product's order; an image without a
    prediction (None: missing or unreadable) gets ``""``, as an image to predict is written."""
    out = {p.product_id: p.to_profile(predictions.get(p.product_id, p.tags)) for p in products}
    return atomic_write_json(path, out)


def read_truth(path: str | os.PathLike[str], problems: ProblemLog | None = None) -> dict[str, Product]:
    """Read products with their true tags (a folder or a combined file) keyed by product id."""
    products, _ = read_products(path, require_images=False, problems=problems)
    return {p.product_id: p for p in products}
