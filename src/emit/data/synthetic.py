"""Generate a small product-pairing data set: drawn garments in named colours, Chinese tags.

Used by ``emit demo`` and by the end-to-end tests, so both run on a fresh clone with no data.
Each product is one garment shape shown in 2-4 colours; its option tags are the Chinese
colour names, decorated the way real Taobao tags are (product codes, brackets, notes).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from emit.files import atomic_write_json

# (Chinese name, RGB) -- deliberately including close pairs, as real catalogues have
COLOURS: list[tuple[str, tuple[int, int, int]]] = [
    ("黑色", (25, 25, 28)), ("白色", (236, 236, 232)), ("红色", (200, 30, 35)),
    ("蓝色", (40, 90, 200)), ("藏青色", (25, 35, 80)), ("绿色", (40, 150, 60)),
    ("黄色", (235, 205, 40)), ("灰色", (128, 128, 130)), ("粉色", (240, 150, 180)),
    ("紫色", (120, 50, 150)), ("棕色", (120, 75, 40)), ("橙色", (240, 130, 30)),
]
DECORATIONS = ["{c}", "{c}", "{c}", "K{code}{c}", "{code}-{c}", "【{c}】", "{c}【加绒】", "{c}T恤"]
SHAPES = ["tshirt", "trousers", "dress", "shoe"]


def _draw_garment(shape: str, rgb: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    bg = tuple(int(v) for v in (248 - rng.randint(0, 10),) * 3)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size / 224
    jitter = [rng.uniform(-6, 6) * s for _ in range(4)]
    fill = tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in rgb)
    shade = tuple(max(0, v - 30) for v in fill)

    def P(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * s + jitter[0], y * s + jitter[1]) for x, y in pts]

    if shape == "tshirt":
        d.polygon(P([(60, 40), (95, 30), (129, 30), (164, 40), (200, 80), (175, 100), (160, 85),
                     (160, 200), (64, 200), (64, 85), (49, 100), (24, 80)]), fill=fill)
        d.line(P([(95, 30), (112, 48), (129, 30)]), fill=shade, width=max(1, int(4 * s)))
    elif shape == "trousers":
        d.polygon(P([(70, 25), (154, 25), (165, 205), (125, 205), (112, 90), (99, 205), (59, 205)]),
                  fill=fill)
    elif shape == "dress":
        d.polygon(P([(90, 25), (134, 25), (140, 90), (185, 205), (39, 205), (84, 90)]), fill=fill)
    else:
        d.ellipse(P([(30, 120), (200, 185)]), fill=fill)
        d.rectangle(P([(30, 150), (200, 185)]), fill=fill)
        d.rectangle(P([(30, 178), (200, 190)]), fill=shade)
    if rng.random() < 0.5:  # a pattern stripe, so colour is not the only thing in the picture
        y = rng.randint(100, 150) * s
        d.rectangle([(70 * s, y), (150 * s, y + 6 * s)], fill=shade)
    return img.filter(ImageFilter.GaussianBlur(radius=0.6))


def make_products(root: str | os.PathLike[str], n_products: int = 60, *, seed: int = 0,
                  size: int = 96, with_truth: bool = True) -> Path:
    """Write ``n_products`` product folders under ``root`` in the Taobao layout; return ``root``."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_products):
        pid = f"{900000000000 + seed * 100000 + k}"
        folder = root / pid
        folder.mkdir(exist_ok=True)
        shape = rng.choice(SHAPES)
        colours = rng.sample(COLOURS, rng.randint(2, 4))
        pattern = rng.choice(DECORATIONS)
        code = rng.randint(1000, 99999)
        tags = [pattern.format(c=name, code=code) for name, _ in colours]
        _write_product(folder, pid, tags, [(shape, rgb) for _, rgb in colours], size=size, rng=rng,
                       with_truth=with_truth)
    return root


def _write_product(folder: Path, pid: str, tags: list[str], looks: list[tuple[str, tuple[int, int, int]]],
                   *, size: int, rng: random.Random, with_truth: bool) -> None:
    """Draw the product's images (option k looks like ``looks[k]``: a garment shape and its
    colour) and write its profile: every option shown at least once, then a few extra views."""
    shown = list(range(len(tags))) + [rng.randrange(len(tags)) for _ in range(rng.randint(0, 2))]
    rng.shuffle(shown)
    imgs_tags = []
    for i, k in enumerate(shown):
        name = f"{pid}_{i}.jpg"
        _draw_garment(*looks[k], size, rng).save(folder / name, quality=90)
        imgs_tags.append({name: tags[k] if with_truth else ""})
    atomic_write_json(folder / "profile.json", {"optional_tags": tags, "imgs_tags": imgs_tags})


GARMENT_WORDS = {"tshirt": "T恤", "trousers": "长裤", "dress": "连衣裙", "shoe": "鞋"}
MIXED_DECORATIONS = ["{c}{g}", "{g}-{c}", "【{c}】{g}", "K{code}{c}{g}"]


def make_mixed_products(root: str | os.PathLike[str], n_products: int = 60, *, seed: int = 0,
                        size: int = 96, with_truth: bool = True) -> Path:
    """Products whose options differ by garment shape as well as colour (``黑色T恤`` /
    ``黑色长裤`` / ``白色长裤``): every product has two options that share a colour, so colour
    alone cannot tell them apart, plus up to two more."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_products):
        pid = f"{800000000000 + seed * 100000 + k}"
        folder = root / pid
        folder.mkdir(exist_ok=True)
        colour = rng.choice(COLOURS)
        first, second = rng.sample(SHAPES, 2)
        options = [(colour, first), (colour, second)]
        wanted = rng.randint(2, 4)
        while len(options) < wanted:
            option = (rng.choice(COLOURS), rng.choice(SHAPES))
            if option not in options:
                options.append(option)
        rng.shuffle(options)
        pattern, code = rng.choice(MIXED_DECORATIONS), rng.randint(1000, 99999)
        tags = [pattern.format(c=c[0], g=GARMENT_WORDS[g], code=code) for c, g in options]
        _write_product(folder, pid, tags, [(shape, rgb) for (_, rgb), shape in options], size=size, rng=rng,
                       with_truth=with_truth)
    return root


# ---- retrieval: shapes with captions -------------------------------------------------------

SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
    "purple": (140, 40, 170)}
SHAPE_NAMES = ("circle", "square", "triangle", "bar")


def _draw_shape(colour: tuple[int, int, int], shape: str, shift: tuple[int, int]) -> Image.Image:
    im = Image.new("RGB", (96, 96), (255, 255, 255))
    d = ImageDraw.Draw(im)
    dx, dy = shift
    if shape == "circle":
        d.ellipse((18 + dx, 18 + dy, 78 + dx, 78 + dy), fill=colour)
    elif shape == "square":
        d.rectangle((14 + dx, 14 + dy, 82 + dx, 82 + dy), fill=colour)
    elif shape == "triangle":
        d.polygon([(48 + dx, 12 + dy), (86 + dx, 84 + dy), (10 + dx, 84 + dy)], fill=colour)
    else:
        d.rectangle((40 + dx, 8 + dy, 56 + dx, 88 + dy), fill=colour)
    return im


def make_shapes(root: str | os.PathLike[str], variants: int = 1, *, seed: int = 0,
                vector_dim: int = 8) -> dict[str, Path]:
    """Images of coloured shapes with captions, click logs and a tiny word-vector file.

    Writes ``images/<colour>_<shape>[_<k>].png`` (5 colours x 4 shapes x ``variants``, shifted
    a little), ``titles.jsonl`` (two captions per image), ``clicks.jsonl`` (two queries per
    image) and ``vectors.txt`` (random ``vector_dim``-d GloVe-format vectors of the words), so
    a retrieval model trains and an index builds in seconds, with no downloads.
    """
    import json

    import numpy as np

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    titles, clicks = [], []
    for colour, rgb in SHAPE_COLOURS.items():
        for shape in SHAPE_NAMES:
            for k in range(variants):
                name = f"images/{colour}_{shape}{f'_{k}' if variants > 1 else ''}.png"
                shift = (0, 0) if k == 0 else (rng.randint(-6, 6), rng.randint(-6, 6))
                _draw_shape(rgb, shape, shift).save(root / name)
                titles += [{"image": name, "text": f"a {colour} {shape}", "category": colour},
                           {"image": name, "text": f"{shape} in {colour}", "category": colour}]
                clicks += [{"query": f"{colour} {shape}", "image": name, "count": 3},
                           {"query": colour, "image": name, "count": 1}]
    (root / "titles.jsonl").write_text("\n".join(json.dumps(t) for t in titles) + "\n", encoding="utf-8")
    (root / "clicks.jsonl").write_text("\n".join(json.dumps(c) for c in clicks) + "\n", encoding="utf-8")
    words = [*SHAPE_COLOURS, *SHAPE_NAMES, "a", "in"]
    vecs = np.random.default_rng(seed).standard_normal((len(words), vector_dim))
    lines = [w + " " + " ".join(f"{v:.4f}" for v in row) for w, row in zip(words, vecs, strict=True)]
    (root / "vectors.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "images": root / "images", "titles": root / "titles.jsonl",
            "clicks": root / "clicks.jsonl", "vectors": root / "vectors.txt"}
