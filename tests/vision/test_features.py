"""Cached feature extraction: reuse, resilience to bad images, duplicates, flip TTA."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from emit.problems import ProblemLog
from emit.vision.backbones import Backbone, create_backbone
from emit.vision.features import FeatureCache, extract_features, feature_key


class Counting(nn.Module):
    """Counts how many images reach the wrapped model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.inner(x)


def counting(backbone: Backbone) -> tuple[Backbone, Counting]:
    wrapper = Counting(backbone.model)
    return dataclasses.replace(backbone, model=wrapper), wrapper


@pytest.fixture(scope="module")
def colour() -> Backbone:
    return create_backbone("colour-hist")


def product(path: Path, colour: tuple[int, int, int], offset: int = 0) -> Path:
    image = Image.new("RGB", (224, 224), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((40 + offset, 50, 150 + offset, 190), fill=colour)
    image.save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    colours = [(200, 30, 30), (30, 50, 190), (30, 160, 60), (240, 200, 40), (20, 20, 20)]
    folder = tmp_path / "img"
    folder.mkdir()
    return [product(folder / f"{k}.png", c, offset=5 * k) for k, c in enumerate(colours)]


def test_features_match_the_model(colour: Backbone, images: list[Path]) -> None:
    feats, ok = extract_features(images, colour, batch_size=2, progress=False)
    assert feats.dtype == np.float32 and feats.shape == (len(images), colour.dim)
    assert ok.dtype == bool and ok.all()
    with torch.inference_mode():
        direct = colour.model(torch.stack([colour.transform(Image.open(p)) for p in images]))
    assert np.allclose(feats, direct.numpy(), atol=1e-5)


def test_second_call_uses_cache_only(colour: Backbone, images: list[Path],
                                     tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, counter = counting(colour)
    feats1, ok1 = extract_features(images, first, cache_dir=cache, batch_size=2, progress=False)
    assert counter.images == len(images)
    assert (cache / f"{colour.key}.sqlite").is_file()

    second, counter2 = counting(colour)
    feats2, ok2 = extract_features(images, second, cache_dir=cache, progress=False)
    assert counter2.calls == 0
    assert np.array_equal(feats1, feats2) and ok2.all() and ok1.all()

    # Renamed copies are the same content: still nothing to compute.
    copies = []
    for p in images[:2]:
        copies.append(p.with_name("copy-" + p.name))
        shutil.copy(p, copies[-1])
    third, counter3 = counting(colour)
    feats3, _ = extract_features([*copies, images[2]], third, cache_dir=cache, progress=False)
    assert counter3.calls == 0
    assert np.array_equal(feats3, feats1[:3])


def test_resume_computes_only_missing(colour: Backbone, images: list[Path],
                                      tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract_features(images[:3], colour, cache_dir=cache, progress=False)  # a "killed" run
    backbone, counter = counting(colour)
    _, ok = extract_features(images, backbone, cache_dir=cache, progress=False)
    assert ok.all()
    assert counter.images == 2


def test_bad_images_do_not_stop_the_others(colour: Backbone, images: list[Path],
                                           tmp_path: Path) -> None:
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a full jpeg")
    missing = tmp_path / "img" / "missing.jpg"
    paths = [images[0], corrupt, images[1], missing, images[2]]
    names = ["p0", "p1", "p2", "p3", "p4"]
    problems = ProblemLog(echo=False)
    feats, ok = extract_features(paths, colour, cache_dir=tmp_path / "cache", batch_size=2,
                                 problems=problems, progress=False, record_names=names)
    assert ok.tolist() == [True, False, True, False, True]
    assert not feats[~ok].any()
    assert feats[ok].any(axis=1).all()
    assert {(p.where, p.record) for p in problems} == {(str(corrupt), "p1"), (str(missing), "p3")}
    good, _ = extract_features([images[0], images[1], images[2]], colour, progress=False)
    assert np.allclose(feats[ok], good, atol=1e-6)
    # Bad images are not cached: a fixed file is picked up on the next run.
    product(corrupt, (90, 90, 200))
    _, ok2 = extract_features(paths, colour, cache_dir=tmp_path / "cache", progress=False,
                              problems=ProblemLog(echo=False))
    assert ok2.tolist() == [True, True, True, False, True]


def test_identical_files_computed_once(colour: Backbone, images: list[Path],
                                       tmp_path: Path) -> None:
    dupes = [tmp_path / f"dup{k}.png" for k in range(3)]
    for d in dupes:
        shutil.copy(images[0], d)
    backbone, counter = counting(colour)
    feats, ok = extract_features([*dupes, images[1], dupes[0]], backbone, progress=False)
    assert ok.all()
    assert counter.images == 2
    assert np.array_equal(feats[0], feats[1]) and np.array_equal(feats[0], feats[4])


def test_identical_bad_files_are_each_reported(colour: Backbone, tmp_path: Path) -> None:
    bad = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for b in bad:
        b.write_text("oops", encoding="utf-8")
    problems = ProblemLog(echo=False)
    _, ok = extract_features(bad, colour, problems=problems, progress=False)
    assert not ok.any()
    assert {p.where for p in problems} == {str(b) for b in bad}


class LeftHalfMean(nn.Module):
    """Not mirror-symmetric, so flip TTA visibly changes its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] // 2].mean(dim=(2, 3))


def test_hflip_tta(images: list[Path], tmp_path: Path) -> None:
    backbone = Backbone("left-half", LeftHalfMean(), 3, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                        {"name": "left-half"})
    assert feature_key(backbone, True) != feature_key(backbone, False)
    cache = tmp_path / "cache"
    plain, _ = extract_features(images, backbone, cache_dir=cache, progress=False)
    flipped, _ = extract_features(images, backbone, cache_dir=cache, progress=False,
                                  hflip_tta=True)
    assert not np.allclose(plain, flipped)  # not served from the plain cache
    assert (cache / f"{feature_key(backbone, True)}.sqlite").is_file()
    with torch.inference_mode():
        x = torch.stack([backbone.transform(Image.open(p)) for p in images])
        expected = (backbone.model(x) + backbone.model(x.flip(-1))) / 2
    assert np.allclose(flipped, expected.numpy(), atol=1e-5)


def test_cache_shared_between_connections(tmp_path: Path) -> None:
    a = FeatureCache(tmp_path, "k")
    b = FeatureCache(tmp_path, "k")
    a.put_many({"h1": np.arange(4, dtype=np.float32), "h2": np.ones(4, dtype=np.float32)})
    got = b.get_many(["h1", "h2", "h3"])
    assert sorted(got) == ["h1", "h2"]
    assert np.array_equal(got["h1"], np.arange(4, dtype=np.float32))
    assert len(b) == 2
    a.close()
    b.close()
    with FeatureCache(tmp_path, "k") as c:
        many = {f"x{i}": np.full(2, i, dtype=np.float32) for i in range(1200)}
        c.put_many(many)  # more than one IN (...) chunk
        assert len(c.get_many(many)) == 1200


def test_empty_input(colour: Backbone) -> None:
    feats, ok = extract_features([], colour, progress=False)
    assert feats.shape == (0, colour.dim) and ok.shape == (0,)


def test_lite0_end_to_end(images: list[Path], tmp_path: Path) -> None:
    backbone = create_backbone("efficientnet-lite0+colour-hist")
    feats, ok = extract_features(images[:3], backbone, cache_dir=tmp_path, batch_size=2,
                                 progress=False)
    assert ok.all() and feats.shape == (3, 1431) and np.isfinite(feats).all()


def _open_and_put(task: tuple[str, int]) -> int:
    from emit.vision.features import FeatureCache

    folder, row = task
    with FeatureCache(folder, "key") as cache:
        cache.put_many({str(row): np.zeros(3, np.float32)})
    return row


def test_many_processes_can_create_one_new_cache_at_once(tmp_path) -> None:
    """The ranks of a torchrun job open the same new cache together. Switching it to WAL does not
    wait for SQLite's busy timeout, so this used to fail some of them with 'database is locked'
    (an EmitError that killed one rank); every process now gets in and every row is kept."""
    import multiprocessing

    for trial in range(4):
        folder = tmp_path / f"cache{trial}"
        with multiprocessing.get_context("fork").Pool(8) as pool:
            done = pool.map(_open_and_put, [(str(folder), row) for row in range(8)])
        assert done == list(range(8))
        from emit.vision.features import FeatureCache

        with FeatureCache(folder, "key") as cache:
            assert len(cache) == 8
