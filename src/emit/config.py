"""Typed configurations, saved beside every model and report together with the versions used."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from emit.problems import EmitError

T = TypeVar("T")


@dataclass
class PairingConfig:
    """Everything that decides a pairing model. The defaults are the tested CPU configuration."""

    # image side
    # The foreground colour histogram alone beat frozen EfficientNet-Lite0 features and their
    # concatenation on held-out products (docs/pairing.md); CNNs stay one flag away.
    backbone: str = "colour-hist"
    weights: str | None = None  # local checkpoint for the backbone
    hflip_tta: bool = False  # average features of each image and its mirror (CNNs only gain)
    # labels
    min_count: int = 5
    top_k: int = 64
    # head
    loss: Literal["bce", "softmax"] = "bce"
    hidden: int = 512  # 0 = a linear head
    dropout: float = 0.3
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    max_epochs: int = 60
    patience: int = 10  # epochs without a better validation score before stopping
    val_fraction: float = 0.1  # share of training *products* held back for early stopping
    listwise_weight: float = 1.0  # beyond the paper: also rank the product's own tags (0 = off)
    product_context: bool = True  # beyond the paper: features relative to the product's mean
    # bagging
    bag_size: int = 5
    bag_label_fraction: float = 0.85  # each member sees a random subset of the labels
    bag_data_fraction: float = 0.9  # ... and of the training products
    bag_combine: Literal["mean", "vote"] = "mean"
    # decisions
    assign: Literal["exact", "argmin"] = "exact"
    # full fine-tuning (the paper's setting; slow on a CPU)
    tune_full_model: bool = False
    finetune_epochs: int = 6
    finetune_lr: float = 1e-4
    seed: int = 0

    def validate(self) -> PairingConfig:
        checks = [
            (self.loss in ("bce", "softmax"), "loss must be 'bce' or 'softmax'"),
            (self.assign in ("exact", "argmin"), "assign must be 'exact' or 'argmin'"),
            (self.bag_combine in ("mean", "vote"), "bag_combine must be 'mean' or 'vote'"),
            (self.bag_size >= 1, "bag_size must be at least 1"),
            (0 < self.bag_label_fraction <= 1, "bag_label_fraction must be in (0, 1]"),
            (0 < self.bag_data_fraction <= 1, "bag_data_fraction must be in (0, 1]"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.batch_size >= 1 and self.max_epochs >= 1, "batch_size, max_epochs must be >= 1"),
            (self.lr > 0 and self.finetune_lr > 0, "lr and finetune_lr must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.hidden >= 0 and self.min_count >= 1 and self.top_k >= 1,
             "hidden must be >= 0, min_count and top_k >= 1"),
            (self.patience >= 1 and self.finetune_epochs >= 0, "patience must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmitError(f"bad pairing configuration: {message}")
        return self


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config, ignoring keys a newer version wrote and keeping defaults for missing ones."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


def versions() -> dict[str, str]:
    """Versions of the libraries that shape results, recorded in every artefact."""
    import numpy
    import scipy
    import torch

    import emit

    out = {
        "emit": emit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency, but keep reports working
        pass
    return out
