"""The backbone registry: every offline backbone runs, local weights load, errors are clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from emit.problems import EmitError
from emit.vision.backbones import (
    Backbone,
    create_backbone,
    list_backbones,
    load_state_dict_file,
)

# (name, pretrained, dim): nothing here downloads.
OFFLINE = [
    ("efficientnet-lite0", True, 1280),
    ("efficientnet-lite2", True, 1280),
    ("densenet121", False, 1024),
    ("colour-hist", True, 151),
    ("efficientnet-lite0+colour-hist", True, 1431),
    ("colour-hist+timm:resnet18", False, 151 + 512),
    ("timm:resnet18", False, 512),
]


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds_offline_and_runs(name: str) -> None:
    """Every name the registry lists (the help and the config offer exactly these) builds without a
    download when pretrained weights are not asked for, and gives ``dim`` finite features."""
    backbone = create_backbone(name, pretrained=False)
    assert backbone.name == name and not backbone.model.training
    size = backbone.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = features(backbone, x)
    assert out.shape == (1, backbone.dim)
    assert torch.isfinite(out).all()


def features(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.model(x)


@pytest.mark.parametrize(("name", "pretrained", "dim"), OFFLINE, ids=[n for n, _, _ in OFFLINE])
def test_backbone_gives_finite_features(name: str, pretrained: bool, dim: int) -> None:
    backbone = create_backbone(name, pretrained=pretrained)
    assert backbone.name == name
    assert backbone.dim == dim
    assert not backbone.model.training
    torch.manual_seed(0)
    x = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    out = features(backbone, x)
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()
    assert len(backbone.key) == 16
    assert backbone.segments[-1][2] == dim
    image = Image.new("RGB", (300, 200), (250, 250, 250))
    assert backbone.transform(image).shape == (3, backbone.image_size, backbone.image_size)


def test_registry_lists_the_builtins() -> None:
    names = list_backbones()
    for name in ("efficientnet-lite0", "efficientnet-lite2", "densenet121", "densenet161",
                 "colour-hist"):
        assert name in names


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(EmitError, match="unknown backbone 'resnet-9000'") as info:
        create_backbone("resnet-9000")
    assert "efficientnet-lite0" in str(info.value) and "timm:" in str(info.value)
    with pytest.raises(EmitError, match="unknown"):
        create_backbone("efficientnet-lite0+nope")
    with pytest.raises(EmitError, match="unknown timm model"):
        create_backbone("timm:definitely_not_a_model")


def test_composite_identity_reflects_parts() -> None:
    lite = create_backbone("efficientnet-lite0")
    colour = create_backbone("colour-hist")
    both = create_backbone("efficientnet-lite0+colour-hist")
    assert len({lite.key, colour.key, both.key}) == 3
    assert [p["name"] for p in both.identity["parts"]] == ["efficientnet-lite0", "colour-hist"]
    assert both.segments == [("efficientnet-lite0", 0, 1280), ("colour-hist", 1280, 1431)]
    x = torch.randn(2, 3, 224, 224)
    out = features(both, x)
    # The parts are computed on the same batch and concatenated in order.
    assert torch.allclose(out[:, :1280], features(lite, x), atol=1e-5)
    assert torch.allclose(out[:, 1280:], features(colour, x), atol=1e-5)


def test_composite_converts_normalisation() -> None:
    # densenet uses ImageNet mean/std; the colour part must undo that, not its own (0.5, 0.5).
    both = create_backbone("densenet121+colour-hist", pretrained=False)
    colour = create_backbone("colour-hist")
    rgb = torch.rand(1, 3, 224, 224)
    mean = torch.tensor(both.mean).view(1, 3, 1, 1)
    std = torch.tensor(both.std).view(1, 3, 1, 1)
    out = features(both, (rgb - mean) / std)[:, 1024:]
    assert torch.allclose(out, features(colour, (rgb - 0.5) / 0.5), atol=1e-4)


def test_key_is_stable_and_weights_sensitive() -> None:
    assert create_backbone("colour-hist").key == create_backbone("colour-hist").key
    lite0 = create_backbone("efficientnet-lite0")
    assert lite0.identity["weights_sha256"] and len(lite0.identity["weights_sha256"]) == 64
    assert lite0.key == create_backbone("efficientnet-lite0").key
    assert lite0.key != create_backbone("efficientnet-lite0", pretrained=False).key


def test_weights_path_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_backbone("densenet121", pretrained=False)
    plain = tmp_path / "densenet121.pth"
    torch.save(source.model.state_dict(), plain)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": source.model.state_dict(), "epoch": 3}, wrapped)
    x = torch.randn(2, 3, 224, 224)
    expected = features(source, x)
    for path in (plain, wrapped):
        torch.manual_seed(2)  # a different random init, overwritten by the file
        loaded = create_backbone("densenet121", weights=str(path))
        assert torch.allclose(features(loaded, x), expected, atol=1e-5)
        assert loaded.identity["weights"] == f"file:{path.name}"
    assert (create_backbone("densenet121", weights=str(plain)).key
            == create_backbone("densenet121", weights=str(plain)).key)


def test_weights_for_lite0_and_composite(tmp_path: Path) -> None:
    lite = create_backbone("efficientnet-lite0")
    path = tmp_path / "lite0.pt"
    torch.save(lite.model.net.state_dict(), path)  # without the wrapper: plain EfficientNet keys
    loaded = create_backbone("efficientnet-lite0+colour-hist", weights=str(path))
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(features(loaded, x)[:, :1280], features(lite, x), atol=1e-5)
    # The head is not needed for features, so a checkpoint without it loads too.
    headless = {k: v for k, v in lite.model.net.state_dict().items() if not k.startswith("_fc.")}
    torch.save(headless, tmp_path / "headless.pt")
    create_backbone("efficientnet-lite0", weights=str(tmp_path / "headless.pt"))


def test_bad_weights_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(EmitError, match="not found") as info:
        create_backbone("densenet121", weights=str(missing))
    assert str(missing) in str(info.value)

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(EmitError, match="cannot read") as info:
        create_backbone("efficientnet-lite0", weights=str(text))
    assert str(text) in str(info.value)

    other = tmp_path / "resnet18.pth"
    torch.save(create_backbone("timm:resnet18", pretrained=False).model.state_dict(), other)
    with pytest.raises(EmitError, match="do not fit") as info:
        create_backbone("efficientnet-lite0", weights=str(other))
    assert str(other) in str(info.value)

    with pytest.raises(EmitError, match="has no weights"):
        create_backbone("colour-hist", weights=str(other))
    with pytest.raises(EmitError, match="ambiguous"):
        create_backbone("efficientnet-lite0+densenet121", weights=str(other))


def test_timm_weights_path(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = create_backbone("timm:resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    state = source.model.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # a full checkpoint still has its classifier
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, path)
    loaded = create_backbone("timm:resnet18", weights=str(path))
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(features(loaded, x), features(source, x), atol=1e-5)


def test_load_state_dict_file_strips_module_prefix(tmp_path: Path) -> None:
    path = tmp_path / "dp.pth"
    torch.save({"model": {"module.a": torch.ones(2), "module.b": torch.zeros(1)}}, path)
    assert sorted(load_state_dict_file(path)) == ["a", "b"]


def _product(colour: tuple[int, int, int], shape: str) -> Image.Image:
    image = Image.new("RGB", (224, 224), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((40, 40, 184, 184), fill=colour)
    else:
        for y in range(20, 204, 24):
            draw.rectangle((20, y, 204, y + 10), fill=colour)
    return image


def test_pretrained_lite0_tells_images_apart() -> None:
    backbone = create_backbone("efficientnet-lite0")
    images = [_product((200, 30, 30), "circle"), _product((30, 50, 190), "stripes"),
              _product((200, 30, 30), "circle")]
    x = torch.stack([backbone.transform(im) for im in images])
    out = features(backbone, x).numpy()
    unit = out / np.linalg.norm(out, axis=1, keepdims=True)
    assert unit[0] @ unit[1] < 0.95  # different pictures, clearly different features
    assert np.allclose(out[0], out[2], atol=1e-4)  # same picture, same features


def test_failed_download_says_to_pass_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import torchvision.models as tvm

    real_densenet = tvm.densenet121

    def offline_densenet(*, weights=None, **kwargs):  # type: ignore[no-untyped-def]
        if weights is not None:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        return real_densenet(weights=None, **kwargs)

    monkeypatch.setattr(tvm, "densenet121", offline_densenet)
    with pytest.raises(EmitError, match="--weights PATH") as info:
        create_backbone("densenet121")
    assert "network" in str(info.value)

    real_timm = timm.create_model

    def offline_timm(name, pretrained=False, **kwargs):  # type: ignore[no-untyped-def]
        if pretrained:
            raise OSError("offline")
        return real_timm(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_timm)
    with pytest.raises(EmitError, match="--weights PATH"):
        create_backbone("timm:resnet18")
