"""Small image folders for the feature-job tests, made with PIL (no shared data needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def make_images(root: Path, n_good: int = 7) -> dict[str, list[Path]]:
    """``root`` with ``n_good`` JPEG/PNG images in nested folders, a duplicate copy, a truncated
    JPEG and a text file named .png; returns the paths by kind."""
    rng = np.random.default_rng(0)
    good: list[Path] = []
    for i in range(n_good):
        folder = root / f"sub{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        size = (40 + 7 * i, 36 + 5 * i)
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        pixels[..., i % 3] = 200  # a different dominant colour per image
        path = folder / f"img{i}.{'png' if i % 4 == 0 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        good.append(path)
    copy = root / "copy_of_img1.jpg"
    shutil.copyfile(good[1], copy)
    truncated = root / "truncated.jpg"
    truncated.write_bytes(good[1].read_bytes()[:400])
    not_image = root / "notes.png"
    not_image.write_text("this is not an image\n")
    (root / "readme.txt").write_text("not listed: not an image suffix\n")
    (root / ".hidden.jpg").write_bytes(good[1].read_bytes())  # hidden: skipped
    return {"good": [*good, copy], "bad": [truncated, not_image]}


def read_rows(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def shard_files(out: Path) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))}
