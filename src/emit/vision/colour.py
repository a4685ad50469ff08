"""A hand-crafted foreground colour feature.

Product photos show the product on a plain light background and many option tags are colour
names ("红色", "藏青", "navy"). Pooled ImageNet features are trained to ignore colour, so this
module adds an explicit description of the product's colours:

1. undo the input normalisation to get RGB in [0, 1] (of every ``stride``-th pixel);
2. estimate the background colour as the median of a thin frame of border pixels;
3. foreground = pixels further than ``threshold`` (CIE76 ΔE in Lab) from the background.
   If the border is not uniform (the product touches the edges, or a busy scene) every
   pixel is used, and likewise if almost nothing is left;
4. convert to CIELAB (sRGB -> linear -> XYZ (D65) -> Lab), in torch;
5. a soft joint histogram of the foreground over ``bins = (nL, na, nb)`` Lab cells (each pixel
   spreads its weight linearly to the 2x2x2 nearest bin centres), L1-normalised;
6. plus the foreground fraction and the mean and std of foreground L, a, b.

Output dim = nL * na * nb + 7 (151 for the default 4 x 6 x 6 bins):
``[histogram (nL*na*nb), fg_fraction, mean L/100, mean a/100, mean b/100,
std L/50, std a/50, std b/50]``.

Everything is batched tensor arithmetic (no Python loop over pixels or images), and the
result is deterministic on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# sRGB (linear) -> XYZ for the D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# Reference white = the row sums above, so pure white maps exactly to L=100, a=b=0.
_WHITE_D65 = (0.95047, 1.00000, 1.08883)
_EPS = (6.0 / 29.0) ** 3
_KAPPA = 1.0 / (3.0 * (6.0 / 29.0) ** 2)

VERSION = 1  # bump when the feature changes, so caches keyed on the identity are refreshed


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve; ``rgb`` in [0, 1]."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def rgb_to_lab(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Convert sRGB in [0, 1] to CIELAB (D65, 2°); the colour channels are on ``dim``.

    L is in [0, 100]; a and b roughly in [-110, 100]. Pure white gives (100, 0, 0),
    pure red (53.24, 80.09, 67.20).
    """
    rgb = rgb.clamp(0.0, 1.0).movedim(dim, -1)
    lin = srgb_to_linear(rgb)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    xyz = (lin @ m.T) / white
    # The cube root has an infinite slope at 0; the linear segment avoids it (CIE standard).
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1.0 / 3.0), xyz * _KAPPA + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-1)
    lab = torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)
    return lab.movedim(-1, dim)


def _soft_assign(
    values: torch.Tensor, lo: float, hi: float, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each value between its two nearest bin centres (linear interpolation).

    Returns ``(index, weight)`` of shape ``values.shape + (2,)``; values beyond the outer
    centres go wholly to the edge bin.
    """
    if n == 1:
        index = torch.zeros(*values.shape, 2, dtype=torch.long, device=values.device)
        weight = torch.zeros(*values.shape, 2, dtype=values.dtype, device=values.device)
        weight[..., 0] = 1.0
        return index, weight
    # Continuous bin coordinate: centre of bin k is at k.
    t = ((values - lo) / (hi - lo) * n - 0.5).clamp(0.0, n - 1.0)
    i0 = t.floor().clamp(max=n - 2)
    frac = t - i0
    i0 = i0.long()
    return torch.stack((i0, i0 + 1), -1), torch.stack((1.0 - frac, frac), -1)


class ColourHistogram(nn.Module):
    """Foreground Lab colour histogram and statistics; see the module docstring.

    ``forward(x, mean=None, std=None)`` takes a normalised batch ``(B, 3, H, W)`` and the
    per-channel mean/std used to normalise it (defaults: the ones given here) and returns
    ``(B, dim)`` features. Works at any image size.
    """

    size_agnostic = True  # composites need not resize the input for this module

    def __init__(
        self,
        *,
        bins: Sequence[int] = (4, 6, 6),
        l_range: tuple[float, float] = (0.0, 100.0),
        a_range: tuple[float, float] = (-60.0, 60.0),
        b_range: tuple[float, float] = (-60.0, 60.0),
        border: int = 4,
        threshold: float = 12.0,
        uniform_border: float = 0.6,
        min_foreground: float = 0.02,
        stride: int = 2,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        if len(bins) != 3 or min(bins) < 1:
            raise ValueError(f"bins must be three positive counts (L, a, b), got {bins!r}")
        self.bins = tuple(int(b) for b in bins)
        self.ranges = (tuple(l_range), tuple(a_range), tuple(b_range))
        self.border = int(border)
        self.threshold = float(threshold)  # ΔE76; JPEG noise on white is ~1-3, a pale tint ~10
        self.uniform_border = float(uniform_border)
        self.min_foreground = float(min_foreground)
        # Every stride-th pixel per axis: a colour histogram needs far fewer than 50k pixels,
        # and subsampling (unlike pooling) keeps each pixel's colour unmixed.
        self.stride = max(1, int(stride))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def dim(self) -> int:
        n_l, n_a, n_b = self.bins
        return n_l * n_a * n_b + 7

    def identity(self) -> dict[str, Any]:
        """Everything that changes the output, for cache keys."""
        return {
            "name": "colour-hist",
            "version": VERSION,
            "bins": list(self.bins),
            "ranges": [list(r) for r in self.ranges],
            "border": self.border,
            "threshold": self.threshold,
            "uniform_border": self.uniform_border,
            "min_foreground": self.min_foreground,
            "stride": self.stride,
        }

    def foreground_mask(self, lab: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B, H, W)`` foreground mask from a Lab batch ``(B, 3, H, W)``."""
        bsz, _, h, w = lab.shape
        k = max(1, min(self.border, h // 4, w // 4))
        frame = torch.cat(
            (
                lab[:, :, :k, :].reshape(bsz, 3, -1),
                lab[:, :, h - k:, :].reshape(bsz, 3, -1),
                lab[:, :, k:h - k, :k].reshape(bsz, 3, -1),
                lab[:, :, k:h - k, w - k:].reshape(bsz, 3, -1),
            ),
            dim=2,
        )  # (B, 3, n_frame)
        background = frame.median(dim=2).values  # (B, 3); robust to a product touching an edge
        frame_dist = (frame - background[:, :, None]).norm(dim=1)  # (B, n_frame)
        plain = (frame_dist <= self.threshold).float().mean(dim=1) >= self.uniform_border
        mask = (lab - background[:, :, None, None]).norm(dim=1) > self.threshold  # (B, H, W)
        enough = mask.float().mean(dim=(1, 2)) >= self.min_foreground
        # No plain background, or nothing stands out from it: describe the whole image.
        use_mask = (plain & enough)[:, None, None]
        return torch.where(use_mask, mask, torch.ones_like(mask))

    def forward(
        self,
        x: torch.Tensor,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = torch.float32
        x = x.to(dtype)[:, :, :: self.stride, :: self.stride]
        m = self.mean if mean is None else torch.as_tensor(mean, dtype=dtype).view(1, 3, 1, 1)
        s = self.std if std is None else torch.as_tensor(std, dtype=dtype).view(1, 3, 1, 1)
        rgb = (x * s.to(x.device) + m.to(x.device)).clamp(0.0, 1.0)
        lab = rgb_to_lab(rgb, dim=1)  # (B, 3, H, W)
        bsz = lab.shape[0]
        fg = self.foreground_mask(lab)  # (B, H, W)
        weight = fg.reshape(bsz, -1).to(dtype)  # (B, P)
        count = weight.sum(dim=1).clamp_min(1.0)

        # Soft joint histogram: each pixel adds weight to its 2x2x2 surrounding bin centres.
        n_l, n_a, n_b = self.bins
        flat = lab.reshape(bsz, 3, -1)
        (il, wl), (ia, wa), (ib, wb) = (
            _soft_assign(flat[:, c], lo, hi, n)
            for c, ((lo, hi), n) in enumerate(zip(self.ranges, self.bins, strict=True))
        )
        index = (il[..., :, None, None] * (n_a * n_b) + ia[..., None, :, None] * n_b
                 + ib[..., None, None, :])  # (B, P, 2, 2, 2)
        w = (wl[..., :, None, None] * wa[..., None, :, None] * wb[..., None, None, :]
             * weight[..., None, None, None])
        hist = torch.zeros(bsz, n_l * n_a * n_b, dtype=dtype, device=x.device)
        hist.scatter_add_(1, index.reshape(bsz, -1), w.reshape(bsz, -1))  # deterministic on CPU
        hist = hist / hist.sum(dim=1, keepdim=True).clamp_min(1e-12)

        # Foreground statistics, scaled so each is roughly in [-1, 1].
        mean_lab = (flat * weight[:, None]).sum(dim=2) / count[:, None]  # (B, 3)
        var_lab = ((flat - mean_lab[:, :, None]) ** 2 * weight[:, None]).sum(dim=2) / count[:, None]
        std_lab = var_lab.clamp_min(0.0).sqrt()
        fraction = weight.mean(dim=1, keepdim=True)
        return torch.cat((hist, fraction, mean_lab / 100.0, std_lab / 50.0), dim=1)
