"""The optional learned map of the image features (beyond the paper, which keeps the CNN space
fixed): :class:`ImageProjection`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emit.hashing import state_dict_sha256
from emit.problems import EmitError


class ImageProjection(nn.Module):
    """A learned linear map of the image features (beyond the paper; optional).

    Identity-initialised when ``dim_in == dim_out``, so training starts from the paper's fixed
    CNN space. Index vectors built through it depend on its weights: record :meth:`identity`.
    """

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        if dim_in < 1 or dim_out < 1:
            raise EmitError(f"image projection dims must be >= 1, got {dim_in} -> {dim_out}")
        self.dim_in, self.dim_out = int(dim_in), int(dim_out)
        self.linear = nn.Linear(self.dim_in, self.dim_out, bias=bias)
        if self.dim_in == self.dim_out:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(self.dim_in))
                if self.linear.bias is not None:
                    self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def config(self) -> dict[str, Any]:
        return {"dim_in": self.dim_in, "dim_out": self.dim_out, "bias": self.linear.bias is not None}

    def identity(self) -> dict[str, Any]:
        return {"name": "image-projection", **self.config(), "weights_sha256": state_dict_sha256(self)}
