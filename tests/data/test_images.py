"""Decoding images: every kind of bad file becomes a clear ImageError or a Problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emit.data.images import ImageError, load_image, load_images_threaded
from emit.problems import EmitError, ProblemLog


def noisy_image(size: tuple[int, int] = (160, 120), seed: int = 0) -> Image.Image:
    """Noise compresses badly, so a JPEG of it is long enough to cut in half meaningfully."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_jpeg(path: Path, size: tuple[int, int] = (160, 120), seed: int = 0) -> Path:
    noisy_image(size, seed).save(path, "JPEG", quality=90)
    return path


def test_loads_png_and_jpeg_as_rgb(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.new("L", (30, 20), 128).save(png)  # greyscale input still comes back RGB
    jpg = write_jpeg(tmp_path / "b.jpg", (40, 50))
    for path, size in ((png, (30, 20)), (jpg, (40, 50))):
        image = load_image(path)
        assert image.mode == "RGB"
        assert image.size == size
    assert load_image(png).getpixel((0, 0)) == (128, 128, 128)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((5, 5), (255, 0, 0, 255))
    image.save(path)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((5, 5)) == (255, 0, 0)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, EmitError)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_text("<html>404 not found</html>", encoding="utf-8")
    with pytest.raises(ImageError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "fix:" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px > 2x the limit
    with pytest.raises(ImageError, match="too large") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_threaded_keeps_order_and_reports_bad_images(tmp_path: Path) -> None:
    paths: list[Path] = []
    for k in range(7):
        paths.append(write_jpeg(tmp_path / f"ok{k}.jpg", (20 + k, 10), seed=k))
    bad_text = tmp_path / "bad.jpg"
    bad_text.write_text("not an image", encoding="utf-8")
    cut = write_jpeg(tmp_path / "cut.jpg")
    cut.write_bytes(cut.read_bytes()[:300])
    missing = tmp_path / "missing.jpg"
    order = [paths[0], bad_text, paths[1], paths[2], missing, paths[3], cut, *paths[4:]]
    names = [f"rec{i}" for i in range(len(order))]
    problems = ProblemLog(echo=False)

    out = list(load_images_threaded(order, lambda im: im.size, 3, problems, names))

    assert len(out) == len(order)
    expected = [None if p in (bad_text, missing, cut) else Image.open(p).size for p in order]
    assert out == expected
    reported = {(p.where, p.record) for p in problems}
    assert reported == {(str(bad_text), "rec1"), (str(missing), "rec4"), (str(cut), "rec6")}
    assert all(p.fix for p in problems)


def test_threaded_without_transform_and_early_stop(tmp_path: Path) -> None:
    paths = [write_jpeg(tmp_path / f"{k}.jpg", (16, 16), seed=k) for k in range(20)]
    problems = ProblemLog(echo=False)
    images = load_images_threaded(paths, None, 2, problems)
    first = next(images)
    assert isinstance(first, Image.Image) and first.mode == "RGB"
    images.close()  # must not hang or leave work running
    assert len(problems) == 0


def test_threaded_record_names_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        list(load_images_threaded([tmp_path / "a.jpg"], None, 1, ProblemLog(), ["a", "b"]))
