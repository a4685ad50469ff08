"""Extra labelled catalogue images for training pairing models (``emit pair train --extra``).

A shop has many more labelled photos than the products being paired. They come in either form:

* product folders or a combined ``*_all.json``, in the Taobao layout (already-paired products);
* a JSON-lines file, one image a line: ``{"image": "photos/123.jpg", "tag": "藏青色衬衫",
  "group": "brandA-men"}``. ``image`` is relative to the file's folder (or absolute), ``tag`` is
  the option tag the image shows, and the optional ``group`` gathers images into one
  pseudo-product whose option tags are the group's distinct tags (a brand's line, a
  catalogue page), so the head also learns to tell siblings apart. Without ``group`` every
  image is a product of its own.

Bad lines (not JSON, no image or tag, a missing file) are reported and skipped.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

from emit.data.products import Product, brief, read_products
from emit.files import JSONTextError, parse_json, read_text
from emit.problems import EmitError, ProblemLog

JSONL_SUFFIXES = (".jsonl", ".ndjson")
EXAMPLE = '{"image": "photos/1.jpg", "tag": "藏青色衬衫", "group": "brand-men"}'
_SURROGATE = re.compile("[\ud800-\udfff]")  # a broken \uXXXX escape: no file name or tag holds it


def read_extra_images(path: str | os.PathLike[str], problems: ProblemLog) -> list[Product]:
    """The labelled products in ``path`` (a product folder, a combined file or a JSON-lines file)."""
    path = Path(path)
    if not path.exists():
        raise EmitError(f"--extra {path}: no such file or folder; give product folders, a combined "
                        f"*_all.json, or a JSON-lines file of {EXAMPLE}")
    if path.is_file() and path.suffix.lower() in JSONL_SUFFIXES:
        products = _read_jsonl(path, problems)
    else:
        products, _ = read_products(path, problems=problems, keep_missing=False)
    products = [p for p in products if p.labelled]
    if not products:
        raise EmitError(f"--extra {path}: no labelled image could be used; see the problems above")
    return products


def _read_jsonl(path: Path, problems: ProblemLog) -> list[Product]:
    groups: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        record = f"line {number}"
        try:
            item = parse_json(line)
        except JSONTextError as exc:
            problems.add(path, record, f"{exc.reason}; skipped", f"{exc.fix}; one object a line: {EXAMPLE}")
            continue
        if not isinstance(item, dict):
            problems.add(path, record, "not a JSON object; skipped", f"write {EXAMPLE}")
            continue
        image, tag, group = item.get("image"), item.get("tag"), item.get("group")
        if not (isinstance(image, str) and image and isinstance(tag, str) and tag.strip()):
            problems.add(path, record, "needs a non-empty string 'image' and 'tag'; skipped",
                         f"write {EXAMPLE}")
            continue
        bad = next((what for what, found in [("a NUL byte", "\x00" in image + tag),
                                               ("a lone surrogate", _SURROGATE.search(image + tag))]
                    if found), None)
        if bad:
            problems.add(path, record, f"the image or tag holds {bad}, which no file name or tag can; "
                         "skipped", "fix the text (a \\u escape must be a whole character)")
            continue
        try:
            file = (path.parent / image).resolve()
            found = file.is_file()
        except (OSError, ValueError):  # a name too long for the file system, and the like
            found = False
        if not found:
            problems.add(path, f"{record} image {brief(image)}", "image file not found; skipped",
                         "give the path relative to the JSON-lines file, or an absolute one")
            continue
        # one namespace for groups (1 and "1" are one group) and another for ungrouped lines
        key = f"group:{group}" if group is not None else f"line:{number}"
        groups.setdefault(key, []).append((str(file), tag.strip()))
    products = []
    for key, members in groups.items():
        tags = list(dict.fromkeys(tag for _, tag in members))  # distinct, in order of appearance
        # absolute image paths: folder / name keeps them as they are
        products.append(Product(f"extra:{path.name}:{key}", tags, [f for f, _ in members],
                                [t for _, t in members], folder=Path("/"), source=str(path)))
    return products
