"""The foreground colour feature: exact Lab conversion, background removal, determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from emit.vision.colour import ColourHistogram, rgb_to_lab

HALF = (0.5, 0.5, 0.5)
WHITE = (255, 255, 255)
LIGHT_GREY = (225, 225, 225)
RED = (200, 30, 30)
BLUE = (30, 50, 190)




@pytest.mark.parametrize(
    ("rgb", "lab", "tol"),
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0), 1e-3),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1e-3),
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20), 1e-2),
        ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18), 1e-2),
        ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86), 1e-2),
        ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0), 1e-2),
    ],
)
def test_rgb_to_lab_known_values(rgb: tuple[float, ...], lab: tuple[float, ...],
                                 tol: float) -> None:
    for dtype in (torch.float32, torch.float64):
        got = rgb_to_lab(torch.tensor(rgb, dtype=dtype), dim=-1)
        assert torch.allclose(got, torch.tensor(lab, dtype=dtype), atol=tol), (dtype, got)


def test_rgb_to_lab_channel_dim() -> None:
    image = torch.rand(2, 3, 5, 7)
    per_pixel = rgb_to_lab(image.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
    assert torch.allclose(rgb_to_lab(image, dim=1), per_pixel, atol=1e-4)


def shirt(colour: tuple[int, int, int], background: tuple[int, int, int],
          size: int = 224) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    s = size / 224
    outline = [(60, 40), (164, 40), (200, 80), (175, 100), (160, 85), (160, 200),
               (64, 200), (64, 85), (49, 100), (24, 80)]
    ImageDraw.Draw(image).polygon([(x * s, y * s) for x, y in outline], fill=colour)
    return image


def as_batch(*images: Image.Image) -> torch.Tensor:
    """Normalise like the backbones do: (x - 0.5) / 0.5."""
    tensors = [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255
               for im in images]
    return (torch.stack(tensors) - 0.5) / 0.5


def jpeg(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@pytest.fixture(scope="module")
def module() -> ColourHistogram:
    return ColourHistogram(mean=HALF, std=HALF)


def hist(module: ColourHistogram, features: torch.Tensor) -> torch.Tensor:
    n_l, n_a, n_b = module.bins
    return features[..., : n_l * n_a * n_b]


def test_output_dim_and_histogram_sums_to_one(module: ColourHistogram) -> None:
    assert module.dim == 4 * 6 * 6 + 7 == 151
    x = as_batch(shirt(RED, WHITE), shirt(BLUE, LIGHT_GREY)) + 0.1 * torch.randn(2, 3, 224, 224)
    out = module(x)
    assert out.shape == (2, 151)
    assert torch.isfinite(out).all()
    assert torch.allclose(hist(module, out).sum(dim=1), torch.ones(2), atol=1e-5)
    assert (hist(module, out) >= 0).all()
    custom = ColourHistogram(bins=(3, 4, 5))
    assert custom(x).shape == (2, 3 * 4 * 5 + 7) and custom.dim == 67


def test_red_and_blue_shirts_differ(module: ColourHistogram) -> None:
    red, blue = module(as_batch(shirt(RED, WHITE), shirt(BLUE, WHITE)))
    # Disjoint colours: the L1 distance between histograms is near its maximum of 2.
    assert (hist(module, red) - hist(module, blue)).abs().sum() > 1.5
    # [144] fraction, [145:148] mean L, a, b (/100): this blue has a > 0 too; b separates.
    assert red[147] > 0.3 and blue[147] < -0.3


@pytest.mark.parametrize("codec", [lambda im: im, jpeg], ids=["png", "jpeg"])
def test_background_is_ignored(module: ColourHistogram, codec) -> None:  # type: ignore[no-untyped-def]
    on_white, on_grey, plain_red = module(as_batch(
        codec(shirt(RED, WHITE)), codec(shirt(RED, LIGHT_GREY)),
        Image.new("RGB", (224, 224), RED),
    ))
    tol = 0.01 if codec is not jpeg else 0.15  # JPEG blurs the edges a little
    assert (hist(module, on_white) - hist(module, on_grey)).abs().sum() < tol
    # With the background removed, the shirt looks like a plain red image.
    assert (hist(module, on_white) - hist(module, plain_red)).abs().sum() < tol
    # The foreground fraction is about the shirt's area, not the whole picture.
    assert 0.3 < on_white[144] < 0.6
    assert abs(on_white[144] - on_grey[144]) < 0.02


def test_busy_border_falls_back_to_all_pixels(module: ColourHistogram) -> None:
    # The product fills the frame: no plain background, so every pixel counts.
    full = Image.new("RGB", (224, 224), BLUE)
    ImageDraw.Draw(full).rectangle((0, 0, 111, 223), fill=RED)
    out = module(as_batch(full))[0]
    assert out[144] == pytest.approx(1.0)
    # Nothing differs from the background: fall back to the whole (white) image.
    blank = module(as_batch(Image.new("RGB", (224, 224), WHITE)))[0]
    assert blank[144] == pytest.approx(1.0)
    assert torch.isfinite(blank).all()


def test_deterministic_and_batch_independent(module: ColourHistogram) -> None:
    x = as_batch(shirt(RED, WHITE), shirt(BLUE, LIGHT_GREY), jpeg(shirt(BLUE, WHITE)))
    a, b = module(x), module(x)
    assert torch.equal(a, b)
    single = module(x[1:2])
    assert torch.allclose(a[1:2], single, atol=1e-6)


def test_mean_std_arguments_undo_any_normalisation(module: ColourHistogram) -> None:
    image = shirt(RED, WHITE)
    x_half = as_batch(image)
    rgb = x_half * 0.5 + 0.5
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x_imagenet = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(module(x_half), module(x_imagenet, mean, std), atol=1e-4)
