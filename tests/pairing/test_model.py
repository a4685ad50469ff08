"""PairingModel: trained on hand-made features (no images, no backbone), saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from emit.config import PairingConfig
from emit.data.products import Product
from emit.pairing.model import MODEL_FILE, VOCAB_FILE, WEIGHTS_FILE, PairingModel, colour_one_hot
from emit.pairing.pipeline import ProductFeatures, predict_pairing, train_pairing
from emit.problems import EmitError
from emit.text.colours import COLOUR_CLASSES

COLOURS = ["黑色", "白色", "红色", "蓝色", "绿色"]
DIM = 12




def make_features(n_products: int, seed: int, *, labelled: bool = True) -> ProductFeatures:
    """Products of 2-4 colours; each image's feature is its colour's prototype plus noise."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(0, 1, (len(COLOURS), DIM)).astype(np.float32) * 2
    products, feats, groups, rows = [], [], [], []
    for k in range(n_products):
        chosen = rng.permutation(len(COLOURS))[: rng.integers(2, 5)]
        tags = [f"K{100 + k}{COLOURS[c]}" if k % 3 == 0 else COLOURS[c] for c in chosen]
        shown = list(range(len(chosen))) + list(rng.integers(0, len(chosen), rng.integers(0, 3)))
        shown = [int(s) for s in rng.permutation(shown)]
        images = [f"{k}_{i}.jpg" for i in range(len(shown))]
        truth = [tags[s] if labelled else None for s in shown]
        products.append(Product(f"p{seed}_{k}", tags, images, truth))
        product_rows = []
        for s in shown:
            product_rows.append(len(feats))
            feats.append(protos[chosen[s]] + rng.normal(0, 0.3, DIM).astype(np.float32))
            groups.append(k)
        rows.append(product_rows)
    return ProductFeatures(products, np.stack(feats), np.asarray(groups), rows)


STAND_IN = SimpleNamespace(identity={"name": "stand-in", "weights": "none"}, dim=DIM, name="stand-in",
                           segments=[("stand-in", 0, DIM)])


def small_config(**changes) -> PairingConfig:
    base = {"backbone": "colour-hist", "min_count": 1, "hidden": 32, "max_epochs": 25, "patience": 5,
            "bag_size": 3, "lr": 3e-3, "val_fraction": 0.2}
    return PairingConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained() -> tuple[PairingModel, ProductFeatures]:
    pf = make_features(30, seed=1)
    model = train_pairing(pf.products, small_config(), backbone=STAND_IN, features=pf,  # type: ignore[arg-type]
                          progress=False)
    return model, pf


def test_train_pairing_builds_the_bag(trained):
    model, _ = trained
    assert len(model.members) == 3
    assert sorted(model.vocab.labels) == sorted(c[0] for c in COLOURS)
    assert model.backbone_identity == STAND_IN.identity and model.feature_dim == DIM
    for member in model.members:
        # each member sees a subset of the labels (bag_label_fraction 0.85) plus "other"
        assert len(member.label_ids) == int(np.ceil(0.85 * len(model.vocab.labels)))
        assert member.head.n_labels == len(member.label_ids) + 1
        assert member.head.in_dim == 2 * DIM  # product context doubles the width
        assert 1 <= member.info["best_epoch"] <= member.info["epochs"] <= 25
    assert [m.seed for m in model.members] == [0, 1, 2]
    assert model.baseline is not None and model.baseline.n_labels == len(COLOUR_CLASSES)


def test_trained_model_pairs_new_products(trained):
    model, _ = trained
    test = make_features(12, seed=2)
    decisions = predict_pairing(model, test)
    truth = [t for p in test.products for t in p.tags]
    got = [t for d in decisions for t in d.tags]
    assert np.mean([a == b for a, b in zip(got, truth, strict=True)]) >= 0.9


def test_save_load_round_trip(trained, tmp_path):
    model, pf = trained
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {MODEL_FILE, VOCAB_FILE, WEIGHTS_FILE}
    assert not list((tmp_path / "m").glob("*.tmp")) and not list((tmp_path / "m").glob(".*"))
    again = PairingModel.load(tmp_path / "m")
    assert again.config == model.config
    assert again.vocab == model.vocab
    assert again.backbone_identity == model.backbone_identity and again.feature_dim == DIM
    assert [m.label_ids.tolist() for m in again.members] == [m.label_ids.tolist() for m in model.members]
    assert [m.info for m in again.members] == [json.loads(json.dumps(m.info)) for m in model.members]

    inputs = model.inputs(pf.features, pf.groups)
    for a, b in zip(model.member_logits(inputs), again.member_logits(inputs), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.baseline.logits(inputs), again.baseline.logits(inputs))
    for combine_mode in ("mean", "vote"):
        for assign_mode in ("exact", "argmin"):
            ours = predict_pairing(model, pf, assign_mode=assign_mode, combine_mode=combine_mode)
            theirs = predict_pairing(again, pf, assign_mode=assign_mode, combine_mode=combine_mode)
            for d1, d2 in zip(ours, theirs, strict=True):
                assert d1.tags == d2.tags and d1.baseline_tags == d2.baseline_tags
                assert d1.confidence == d2.confidence
                np.testing.assert_array_equal(d1.cost, d2.cost)


def test_save_overwrites_an_older_model(trained, tmp_path):
    model, pf = trained
    other = train_pairing(pf.products, small_config(bag_size=1, hidden=0, seed=5),
                          backbone=STAND_IN, features=pf, progress=False)  # type: ignore[arg-type]
    other.save(tmp_path / "m")
    model.save(tmp_path / "m")
    again = PairingModel.load(tmp_path / "m")
    assert len(again.members) == 3 and again.members[0].head.hidden == 32


def test_load_without_model_json_names_the_folder(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(EmitError, match=str(folder)) as info:
        PairingModel.load(folder)
    assert MODEL_FILE in str(info.value)
    with pytest.raises(EmitError, match="no-such-folder"):
        PairingModel.load(tmp_path / "no-such-folder")


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_load_with_corrupted_weights_names_the_file(trained, tmp_path, damage):
    model, _ = trained
    folder = model.save(tmp_path / "m")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"not safetensors at all" * 10, "truncate": data[: len(data) // 2],
                         "empty": b""}[damage])
    with pytest.raises(EmitError) as info:
        PairingModel.load(folder)
    assert str(weights) in str(info.value)


def test_load_with_weights_of_another_model_names_the_file(trained, tmp_path):
    model, pf = trained
    folder = model.save(tmp_path / "m")
    other = train_pairing(pf.products, small_config(hidden=8, bag_size=1, max_epochs=2),
                          backbone=STAND_IN, features=pf, progress=False)  # type: ignore[arg-type]
    other_folder = other.save(tmp_path / "other")
    (folder / WEIGHTS_FILE).write_bytes((other_folder / WEIGHTS_FILE).read_bytes())
    with pytest.raises(EmitError) as info:
        PairingModel.load(folder)
    assert str(folder / WEIGHTS_FILE) in str(info.value)


def test_load_with_bad_model_json_names_the_file(trained, tmp_path):
    model, _ = trained
    folder = model.save(tmp_path / "m")
    meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    meta["format"] = 999
    (folder / MODEL_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(EmitError, match=str(folder / MODEL_FILE)):
        PairingModel.load(folder)
    (folder / MODEL_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(EmitError, match=str(folder / MODEL_FILE)):
        PairingModel.load(folder)


def test_train_needs_labelled_products():
    pf = make_features(3, seed=3, labelled=False)
    with pytest.raises(EmitError, match="imgs_tags"):
        train_pairing(pf.products, small_config(), backbone=STAND_IN, features=pf,  # type: ignore[arg-type]
                      progress=False)


def test_colour_one_hot():
    out = colour_one_hot(["藏青色", "K1红色", "加绒"])
    assert out.shape == (3, len(COLOUR_CLASSES))
    assert (out.sum(axis=1) == 1).all()
    assert [COLOUR_CLASSES[i] for i in out.argmax(axis=1)] == ["navy", "red", "other"]


def test_model_folder_is_plain_json(trained, tmp_path):
    model, _ = trained
    folder = Path(model.save(tmp_path / "m"))
    meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    assert meta["backbone"] == STAND_IN.identity
    assert len(meta["members"]) == 3 and meta["baseline"]["classes"] == COLOUR_CLASSES
    assert meta["config"]["bag_size"] == 3


def test_a_projected_cnn_part_is_saved_and_used_the_same_way(tmp_path):
    """A stand-in whose first 8 columns are a CNN's: the model keeps 4 principal components."""
    pf = make_features(30, seed=1)
    cnn = SimpleNamespace(identity={"name": "cnn"}, dim=DIM, name="cnn",
                          segments=[("efficientnet-lite0", 0, 8), ("colour-hist", 8, DIM)])
    model = train_pairing(pf.products, small_config(cnn_components=4), backbone=cnn,  # type: ignore[arg-type]
                          features=pf, progress=False)
    assert model.projection is not None and model.projection.out_dim == 4 + (DIM - 8)
    assert all(m.head.in_dim == 2 * (4 + DIM - 8) for m in model.members)
    model.save(tmp_path / "m")
    again = PairingModel.load(tmp_path / "m")
    assert again.projection is not None
    ours, theirs = predict_pairing(model, pf), predict_pairing(again, pf)
    for d1, d2 in zip(ours, theirs, strict=True):
        assert d1.tags == d2.tags and d1.product_confidence == d2.product_confidence
        np.testing.assert_array_equal(d1.cost, d2.cost)
