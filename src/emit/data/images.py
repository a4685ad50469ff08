"""Decode product images safely.

:func:`load_image` turns every way an image file can be broken (missing, not an image,
truncated, more pixels than :data:`MAX_IMAGE_PIXELS`) into an :class:`ImageError` that names
the file and the fix. :func:`load_images_threaded` decodes many images on a thread pool for feature
extraction; there a bad image is only a :class:`~emit.problems.Problem` and an empty slot,
never the end of the run.

PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left alone: a half-written JPEG
should be reported, not silently padded with grey.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from emit.files import OutsideRoot
from emit.problems import EmitError, ProblemLog

T = TypeVar("T")

# the file suffixes taken as images when a folder is read for images
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Transparent product cut-outs are shown on white in shops, so composite them on white
# rather than on PIL's default black (which would look like a black product to colour features).
BACKGROUND = (255, 255, 255)

# emit's one cap on the pixels of an image it decodes (library, CLI and server alike): a small
# file can declare a size that decodes to gigabytes. Product photos are ~224-1000 px a side;
# 25 megapixels is a 6000 x 4000 camera photo. EMIT_MAX_IMAGE_PIXELS overrides it (emit serve
# reads the same variable for its upload limit).
MAX_IMAGE_PIXELS = 25_000_000
MAX_PIXELS_ENV = "EMIT_MAX_IMAGE_PIXELS"

# PIL warns (DecompressionBombWarning) while *opening* an image over its own, higher limit,
# before emit can look at the size. emit refuses every such image itself, with a problem that
# names the file, so PIL's raw warning on stderr would only repeat it. The filter is put back
# if something (a test runner, an app) reset the filters since.
_PIL_BOMB_MESSAGE = r"Image size \(\d+ pixels\) exceeds limit"


def _quiet_pil_bomb_warning() -> None:
    for action, message, category, _, _ in warnings.filters:
        if (action == "ignore" and category is Image.DecompressionBombWarning
                and getattr(message, "pattern", None) == _PIL_BOMB_MESSAGE):
            return
    warnings.filterwarnings("ignore", message=_PIL_BOMB_MESSAGE, category=Image.DecompressionBombWarning)


_quiet_pil_bomb_warning()


class ImageError(EmitError):
    """One image file cannot be used; ``what`` and ``fix`` are kept for problem reports."""

    def __init__(self, path: str | os.PathLike[str], what: str, fix: str) -> None:
        self.path = str(path)
        self.what = what
        self.fix = fix
        super().__init__(f"{self.path}: {what} -- fix: {fix}")


class ImageTooLarge(ImageError):
    """An image with more pixels than the cap (``pixels`` is None if PIL refused it unmeasured)."""

    def __init__(self, path: str | os.PathLike[str], pixels: int | None, limit: int) -> None:
        self.pixels = pixels
        self.limit = limit
        size = pixel_count(pixels) if pixels is not None else "too many pixels"
        super().__init__(path, f"image is too large to decode safely ({size}; emit decodes at most "
                               f"{pixel_count(limit)})",
                         "re-save it at a normal size (product photos are ~224-1000 px), or raise "
                         f"{MAX_PIXELS_ENV} if you trust the file")


def pixel_count(pixels: int) -> str:
    """'36 megapixels', or '10,000 pixels' below one megapixel."""
    return f"{pixels / 1e6:.0f} megapixels" if pixels >= 1_000_000 else f"{pixels:,} pixels"


def max_image_pixels() -> int:
    """The pixel cap: ``EMIT_MAX_IMAGE_PIXELS`` if set to a positive whole number, else the default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise EmitError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels; unset it or "
                            f"give e.g. {MAX_IMAGE_PIXELS}") from None
        if value >= 1:
            return value
        raise EmitError(f"{MAX_PIXELS_ENV}={raw!r} must be at least 1")
    return MAX_IMAGE_PIXELS


def load_image(path: str | os.PathLike[str], data: bytes | None = None, *,
               max_pixels: int | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB the image at ``path``.

    ``data`` (the file's bytes, if the caller already read them) avoids a second read;
    ``path`` is then only used in messages. An image over ``max_pixels`` (default
    :func:`max_image_pixels`) is refused before it is decoded. A path marked by
    :func:`emit.files.within` is read inside its root only. Raises :class:`ImageError`
    (:class:`ImageTooLarge` for too many pixels) for any bad file.
    """
    path = path if isinstance(path, Path) else Path(path)  # a within() path keeps its root
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if data is None:
        try:
            data = path.read_bytes()
        except OutsideRoot as exc:
            raise ImageError(path, "the image file is a symbolic link that leads outside the folder it "
                             "must be read in; refused",
                             "copy the image into the product folder instead of linking to it") from exc
        except FileNotFoundError as exc:
            raise ImageError(path, "image file not found",
                             "check the path, or add the file / remove its entry") from exc
        except IsADirectoryError as exc:
            raise ImageError(path, "is a folder, not an image file",
                             "point to the image file inside it") from exc
        except OSError as exc:
            raise ImageError(path, f"cannot read the file ({exc.strerror or exc})",
                             "check its permissions and the disk") from exc
    if not data:
        raise ImageError(path, "file is empty (0 bytes)", "re-copy or re-download the image")
    _quiet_pil_bomb_warning()
    try:
        with Image.open(io.BytesIO(data)) as im:
            pixels = im.size[0] * im.size[1]  # from the header: nothing is decoded yet
            if pixels > limit:
                raise ImageTooLarge(path, pixels, limit)
            im.load()  # decode now, so truncated or corrupt data fails here and not later
            im = ImageOps.exif_transpose(im) or im  # phone photos may be stored rotated
            return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # over PIL's own limit, which it checks on opening (the warning: where warnings are errors)
        raise ImageTooLarge(path, None, limit) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not an image, or an image format PIL cannot read",
                         "replace it with a JPEG or PNG (check it is not a text/HTML file "
                         "saved with an image extension)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # PIL reports damaged data with any of these, depending on the format plugin.
        msg = str(exc)
        if "truncated" in msg.lower():
            what = f"image data is truncated ({msg})"
            fix = "the file was cut short (interrupted copy or download); re-copy it"
        else:
            what = f"image data is corrupt ({type(exc).__name__}: {msg})"
            fix = "re-copy the file, or re-save it with an image editor"
        raise ImageError(path, what, fix) from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert to RGB, compositing any transparency onto white."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    # Copy so the result does not keep a reference to the (closed) file object.
    return im.copy()


def _load_and_transform(
    path: str | os.PathLike[str], transform: Callable[[Image.Image], T] | None
) -> T | Image.Image:
    image = load_image(path)
    if transform is None:
        return image
    try:
        return transform(image)
    except (OSError, ValueError) as exc:
        raise ImageError(path, f"image could not be transformed ({type(exc).__name__}: {exc})",
                         "re-save it as an ordinary RGB JPEG or PNG") from exc


def load_images_threaded(
    paths: Iterable[str | os.PathLike[str]],
    transform: Callable[[Image.Image], T] | None,
    num_threads: int,
    problems: ProblemLog,
    record_names: Sequence[object] | None = None,
) -> Generator[T | Image.Image | None, None, None]:
    """Yield ``transform(load_image(p))`` for each path, in order, decoding on ``num_threads``.

    A bad image is added to ``problems`` (where = its path, record = ``record_names[i]`` or
    the file name) and yields ``None`` in its slot. At most a few images per thread are in
    flight, so memory stays flat for any number of paths. With ``transform=None`` the RGB
    PIL images are yielded.
    """
    paths = list(paths)
    if record_names is not None and len(record_names) != len(paths):
        raise ValueError(f"record_names has {len(record_names)} entries for {len(paths)} paths")
    num_threads = max(1, int(num_threads))
    window = num_threads * 4  # enough read-ahead to keep threads busy, bounded memory
    pending: deque[tuple[int, Future[T | Image.Image]]] = deque()
    executor = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="emit-img")
    try:
        next_index = 0
        while next_index < len(paths) or pending:
            while next_index < len(paths) and len(pending) < window:
                fut = executor.submit(_load_and_transform, paths[next_index], transform)
                pending.append((next_index, fut))
                next_index += 1
            i, fut = pending.popleft()
            try:
                yield fut.result()
            except ImageError as exc:
                record = record_names[i] if record_names is not None else Path(paths[i]).name
                problems.add(paths[i], record, exc.what + "; image skipped", exc.fix)
                yield None
    finally:
        # The consumer may stop early (or raise): do not leave decodes running.
        executor.shutdown(wait=True, cancel_futures=True)
