"""Check uploaded images and option tags before any model sees them.

Each check answers with an :class:`ApiError` that names the file or tag at fault: too many
images, a name that is a path or too long for a file name, a file that is not an image or is
damaged, too many pixels, blank, duplicate or overlong tags.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from emit.data.images import ImageError, ImageTooLarge, load_image, pixel_count
from emit.data.products import Product, safe_image_name
from emit.files import atomic_write_bytes
from emit.serve.errors import ApiError
from emit.serve.settings import Limits

MAX_TAG_CHARS = 200
# Uploaded names become file names (an image, the product's folder, and a temporary beside
# each, whose name adds about 30 bytes); file systems take 255 bytes a name.
MAX_NAME_BYTES = 200


def _name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def read_images(files: Sequence[UploadFile], limits: Limits) -> list[Upload]:
    """The uploaded files' names and bytes, each checked to decode as an image."""
    if not files:
        raise ApiError(422, "no_images", "upload at least one image (multipart field 'images')")
    if len(files) > limits.max_images:
        raise ApiError(413, "too_many_images", f"{len(files)} images uploaded; this server takes at most "
                       f"{limits.max_images} per request")
    out: list[Upload] = []
    for k, upload in enumerate(files):
        name = upload.filename or ""
        if not safe_image_name(name):
            raise ApiError(422, "bad_image_name", f"image {k + 1}: file name {name!r} is empty or a path; "
                           "send plain file names such as 123_0.jpg")
        if _name_bytes(name) > MAX_NAME_BYTES:
            raise ApiError(422, "bad_image_name", f"image {k + 1}: file name {name[:40]!r}... is "
                           f"{_name_bytes(name)} bytes long (UTF-8); this server takes names of at most "
                           f"{MAX_NAME_BYTES} bytes; rename the file")
        if any(u.name == name for u in out):
            raise ApiError(422, "duplicate_image", f"image {name!r} is uploaded twice; send each image once")
        data = upload.file.read()
        check_image(name, data, limits)
        out.append(Upload(name, data))
    return out


def check_image(name: str, data: bytes, limits: Limits) -> None:
    """Refuse bytes that are not a decodable image of a sane size (the library's pixel cap, at
    this server's limit)."""
    try:
        load_image(name, data, max_pixels=limits.max_image_pixels)
    except ImageTooLarge as exc:
        size = pixel_count(exc.pixels) if exc.pixels is not None else "too many pixels"
        raise ApiError(413, "image_too_large", f"{name}: {size}; this server decodes at most "
                       f"{pixel_count(limits.max_image_pixels)}; send a smaller image") from exc
    except ImageError as exc:
        raise ApiError(422, "bad_image", f"{name}: {exc.what}; fix: {exc.fix}") from exc
    except Exception as exc:  # PIL has more failure modes than load_image names
        raise ApiError(422, "bad_image", f"{name}: not a readable image ({type(exc).__name__}); "
                       "send a JPEG or PNG") from exc


def clean_tags(raw: Sequence[str], limits: Limits) -> list[str]:
    """Option tags from form fields: one per field, or several separated by new lines."""
    tags: list[str] = []
    for field in raw:
        for line in str(field).splitlines():
            tag = line.strip()
            if not tag:
                continue
            if len(tag) > MAX_TAG_CHARS:
                raise ApiError(422, "bad_tag", f"tag {tag[:40]!r}... is longer than {MAX_TAG_CHARS} "
                               "characters")
            if tag in tags:
                raise ApiError(422, "duplicate_tag", f"tag {tag!r} is given twice; list each option once")
            tags.append(tag)
    if not tags:
        raise ApiError(422, "no_tags", "give the product's option tags (multipart field 'tags', one per "
                       "field or one per line)")
    if len(tags) > limits.max_tags:
        raise ApiError(422, "too_many_tags", f"{len(tags)} tags; this server takes at most {limits.max_tags}")
    return tags


def check_product_id(product_id: str) -> str:
    product_id = product_id.strip()
    if not safe_image_name(product_id):
        raise ApiError(422, "bad_product_id", f"product id {product_id!r} must be a plain name (no '/', "
                       "no '..')")
    if _name_bytes(product_id) > MAX_NAME_BYTES:  # it names the product's folder
        raise ApiError(422, "bad_product_id", f"product id {product_id[:40]!r}... is "
                       f"{_name_bytes(product_id)} bytes long (UTF-8); give at most {MAX_NAME_BYTES}")
    return product_id


def scratch(workdir: Path, prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for one request's files, removed when the request is done."""
    workdir.mkdir(parents=True, exist_ok=True)  # the app's shutdown removes workdir; a new start needs it
    return tempfile.TemporaryDirectory(dir=workdir, prefix=prefix)


def save_product(folder: Path, product_id: str, images: Sequence[Upload], tags: Sequence[str]) -> Product:
    """Write the images into ``folder`` (a product folder of the Taobao layout) as a Product."""
    for image in images:
        atomic_write_bytes(folder / image.name, image.data)
    return Product(product_id, list(tags), [i.name for i in images], [None] * len(images), folder,
                   source="upload", confine=folder)  # read back from this folder only
