"""Typed configurations, saved beside every model and report together with the versions used."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from emit.problems import EmitError

T = TypeVar("T")


def setting(default: Any, help: str, *, choices: str | tuple[str, ...] | None = None,
            names: str | None = None) -> Any:
    """A config field with its command-line help: ``emit``'s flags are generated from these
    (:mod:`emit.cli.config_flags`), so a default, its help and its choices are written once.

    ``choices`` is a tuple, or the name of a registry (``"losses"``, ``"text_encoders"``) whose
    ``list_*()`` gives them; a ``Literal[...]`` annotation gives them too. ``names`` names a
    registry whose entries fill ``{names}`` in the help without restricting the value (the
    backbones, which also take ``timm:<name>`` and ``a+b``). ``help`` may use ``%`` freely.
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if names is not None:
        metadata["names"] = names
    return dataclasses.field(default=default, metadata=metadata)


BACKBONE_HELP = "{names}, timm:<name>, or parts joined with '+'"  # both workflows' --backbone


@dataclass
class PairingConfig:
    """Everything that decides a pairing model. The defaults are the tested CPU configuration."""

    # image side
    # Chosen on both dev sets (docs/pairing.md): the colour histogram tells colours apart, and 64
    # principal components of EfficientNet-Lite0 tell a T-shirt from trousers without the
    # overfitting that its full 1,280 features brought on colour-only products.
    backbone: str = setting("efficientnet-lite0+colour-hist", "image backbone: " + BACKBONE_HELP,
                            names="backbones")
    weights: str | None = setting(None, "local checkpoint for the backbone (no download needed)")
    hflip_tta: bool = setting(False, "average features with the mirrored image (helps CNN backbones)")
    cnn_components: int = setting(  # beyond the paper: raw CNN features overfit a few thousand photos
        64, "principal components kept of each CNN part of the features, fitted on the training "
        "images (0 = all)")
    # labels
    min_count: int = setting(5, "drop labels seen fewer times in the training tags")
    top_k: int = setting(64, "keep at most this many labels")
    # head
    loss: Literal["bce", "softmax"] = setting("bce", "bce or softmax (the paper's soft-target cross-entropy)")
    hidden: int = setting(512, "hidden width of the head (0 = linear)")
    dropout: float = setting(0.3, "dropout in the head")
    lr: float = setting(1e-3, "Adam learning rate")
    batch_size: int = setting(64, "batch size")
    weight_decay: float = setting(1e-4, "Adam weight decay")
    max_epochs: int = setting(60, "maximum epochs per head")
    patience: int = setting(10, "stop after this many epochs without a better validation loss")
    val_fraction: float = setting(0.1, "share of training products held back for early stopping")
    listwise_weight: float = setting(  # beyond the paper
        1.0, "weight of the loss that ranks a product's own tags (0 = paper only)")
    product_context: bool = setting(  # beyond the paper
        True, "give the head each image's difference from its product's mean (beyond the paper)")
    # confidence
    calibration_folds: int = setting(  # beyond the paper
        3, "calibrate confidence on out-of-fold bags trained on this many parts of the products "
        "(0 or 1 = on each bagged member's own hold-out: faster, under-confident)")
    # bagging
    bag_size: int = setting(5, "number of bagged models")
    bag_label_fraction: float = setting(0.85, "share of labels each bagged model sees")
    bag_data_fraction: float = setting(0.9, "share of training products each bagged model sees")
    bag_combine: Literal["mean", "vote"] = setting(
        "mean", "mean (average costs, then assign) or vote (the paper's rule)")
    # decisions
    assign: Literal["exact", "argmin"] = setting(
        "exact", "exact (cover-constrained) or argmin (the paper's per-image rule)")
    # full fine-tuning (the paper's setting; slow on a CPU)
    tune_full_model: bool = setting(False, "fine-tune the whole backbone as the paper does (slow on a CPU)")
    finetune_epochs: int = setting(6, "epochs of full fine-tuning with --tune-full-model")
    finetune_lr: float = setting(1e-4, "learning rate of the backbone when fine-tuning")
    seed: int = setting(0, "random seed")

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
            (self.cnn_components >= 0, "cnn_components must be >= 0"),
            (self.calibration_folds >= 0, "calibration_folds must be >= 0"),
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
