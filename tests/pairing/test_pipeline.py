"""predict_pairing and friends on hand-made features: no images, no backbone."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.config import PairingConfig
from emit.data.products import Product
from emit.pairing.model import PairingModel
from emit.pairing.pipeline import (
    ProductFeatures,
    check_backbone,
    labelled_rows,
    predict_pairing,
    train_pairing,
)
from emit.problems import EmitError

COLOURS = ["黑色", "白色", "红色", "蓝色", "绿色", "黄色"]
DIM = 10
PROTOS = np.random.default_rng(0).normal(0, 1, (len(COLOURS), DIM)).astype(np.float32) * 2
STAND_IN = SimpleNamespace(identity={"name": "stand-in"}, dim=DIM, name="stand-in",
                           segments=[("stand-in", 0, DIM)])




def build(specs: list[tuple[list[int], list[int]]], seed: int = 0, unreadable: frozenset = frozenset(),
          labelled: bool = True) -> ProductFeatures:
    """``specs``: per product (colour ids of its tags, tag index shown by each image).

    ``unreadable`` holds (product, image) pairs that get a None row, as an unreadable file does.
    """
    rng = np.random.default_rng(seed)
    products, feats, groups, rows = [], [], [], []
    for k, (colours, shown) in enumerate(specs):
        tags = [f"{COLOURS[c]}【{k}】" if k % 2 else COLOURS[c] for c in colours]
        images = [f"p{k}_{i}.jpg" for i in range(len(shown))]
        products.append(Product(f"p{k}", tags, images, [tags[s] if labelled else None for s in shown]))
        product_rows: list[int | None] = []
        for i, s in enumerate(shown):
            if (k, i) in unreadable:
                product_rows.append(None)
                continue
            product_rows.append(len(feats))
            feats.append(PROTOS[colours[s]] + rng.normal(0, 0.3, DIM).astype(np.float32))
            groups.append(k)
        rows.append(product_rows)
    features = np.stack(feats) if feats else np.zeros((0, DIM), np.float32)
    return ProductFeatures(products, features, np.asarray(groups, dtype=np.int64), rows)


def random_specs(rng: np.random.Generator, n: int) -> list[tuple[list[int], list[int]]]:
    specs = []
    for _ in range(n):
        m = int(rng.integers(2, 5))
        colours = [int(c) for c in rng.permutation(len(COLOURS))[:m]]
        shown = list(range(m)) + [int(s) for s in rng.integers(0, m, rng.integers(0, 3))]
        specs.append((colours, [int(s) for s in rng.permutation(shown)]))
    return specs


@pytest.fixture(scope="module")
def model() -> PairingModel:
    pf = build(random_specs(np.random.default_rng(1), 30), seed=1)
    config = PairingConfig(backbone="colour-hist", min_count=1, hidden=32, max_epochs=25, patience=5,
                           bag_size=2, lr=3e-3, val_fraction=0.2)
    return train_pairing(pf.products, config, backbone=STAND_IN, features=pf,  # type: ignore[arg-type]
                         progress=False)


def check_decisions(pf: ProductFeatures, decisions, assign_mode: str, combine_mode: str = "mean") -> None:
    assert [d.product_id for d in decisions] == [p.product_id for p in pf.products]
    for product, rows, d in zip(pf.products, pf.rows, decisions, strict=True):
        readable = [i for i, r in enumerate(rows) if r is not None]
        assert len(d.tags) == len(d.confidence) == len(d.baseline_tags) == len(product.images)
        assert d.cost.shape == (len(readable), len(product.optional_tags))
        for i in range(len(rows)):
            if i in readable:
                assert d.tags[i] in product.optional_tags
                assert d.baseline_tags[i] in product.optional_tags
                assert 0 < d.confidence[i] <= 1
            else:
                assert d.tags[i] is None and d.baseline_tags[i] is None and d.confidence[i] is None
        chosen = [d.tags[i] for i in readable]
        if assign_mode == "exact" and combine_mode == "mean":  # vote is per-image argmin by design
            if len(readable) >= len(product.optional_tags):
                assert set(chosen) == set(product.optional_tags), "every tag must be shown"
            else:
                assert len(set(chosen)) == len(chosen), "fewer images than tags: distinct tags"


@pytest.mark.parametrize("combine_mode", ["mean", "vote"])
def test_every_readable_image_gets_one_of_its_tags(model, combine_mode):
    pf = build(random_specs(np.random.default_rng(2), 15), seed=2)
    decisions = predict_pairing(model, pf, combine_mode=combine_mode)
    check_decisions(pf, decisions, "exact", combine_mode)
    truth = [t for p in pf.products for t in p.tags]
    got = [t for d in decisions for t in d.tags]
    assert np.mean([a == b for a, b in zip(got, truth, strict=True)]) >= 0.9


def test_unreadable_image_is_left_none(model):
    specs = [([0, 1, 2], [0, 1, 2, 0]), ([3, 4], [1, 0]), ([0, 5], [0, 1])]
    # product 0 loses one image but still has 3 readable for 3 tags; product 1 drops to one
    # image for two tags; product 2 has no readable image at all
    pf = build(specs, seed=3, unreadable=frozenset({(0, 3), (1, 0), (2, 0), (2, 1)}))
    decisions = predict_pairing(model, pf)
    check_decisions(pf, decisions, "exact")
    assert decisions[0].tags[3] is None and None not in decisions[0].tags[:3]
    assert decisions[1].tags[0] is None and decisions[1].tags[1] in pf.products[1].optional_tags
    assert decisions[2].tags == [None, None] and decisions[2].cost.shape == (0, 2)


def test_baseline_can_be_skipped(model):
    pf = build([([0, 1], [0, 1])], seed=4)
    decisions = predict_pairing(model, pf, baseline=False)
    assert decisions[0].baseline_tags == [None, None]
    assert None not in decisions[0].tags


def test_argmin_mode_may_repeat_a_tag(model):
    # three images all showing colour 0, tags 0 and 1: argmin picks tag 0 three times,
    # exact must still show tag 1 once
    pf = build([([0, 1], [0, 0, 0])], seed=5)
    pf.products[0].tags = [pf.products[0].optional_tags[0]] * 3
    exact = predict_pairing(model, pf, assign_mode="exact")[0].tags
    argmin = predict_pairing(model, pf, assign_mode="argmin")[0].tags
    assert argmin == [pf.products[0].optional_tags[0]] * 3
    assert sorted(set(exact)) == sorted(pf.products[0].optional_tags)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["exact", "argmin"]), st.sampled_from(["mean", "vote"]))
def test_decisions_are_well_formed(model, seed, assign_mode, combine_mode):
    rng = np.random.default_rng(seed)
    specs = random_specs(rng, 4)
    holes = frozenset((k, i) for k, (_, shown) in enumerate(specs) for i in range(len(shown))
                      if rng.random() < 0.25)
    pf = build(specs, seed=seed, unreadable=holes)
    decisions = predict_pairing(model, pf, assign_mode=assign_mode, combine_mode=combine_mode)
    check_decisions(pf, decisions, assign_mode, combine_mode)


def test_decisions_are_independent_of_other_products(model):
    specs = random_specs(np.random.default_rng(6), 6)
    # product context is per product, so other products in the batch change nothing
    alone = predict_pairing(model, build(specs[:1], seed=6))[0]
    together = predict_pairing(model, build(specs, seed=6))[0]
    assert alone.tags == together.tags
    np.testing.assert_allclose(alone.cost, together.cost, rtol=1e-5, atol=1e-6)


def test_labelled_rows_skip_unknown_and_unreadable():
    pf = build([([0, 1], [0, 1, 1]), ([2, 3, 4], [2, 1, 0])], seed=7, unreadable=frozenset({(0, 1)}))
    pf.products[1].tags[0] = None  # unknown truth
    from emit.text.labels import build_vocab

    vocab = build_vocab([t for p in pf.products for t in p.optional_tags], 1)
    data, pids = labelled_rows(pf, pf.features, vocab.encode_many)
    assert pids.tolist() == ["p0", "p0", "p1", "p1"]
    assert data.true_index.tolist() == [0, 1, 1, 0]
    assert data.candidates.shape == (4, 3, vocab.size)
    assert data.candidate_mask.tolist() == [[True, True, False]] * 2 + [[True, True, True]] * 2
    np.testing.assert_array_equal(data.candidates[0, 2], 0)  # padding
    for row in range(4):
        np.testing.assert_array_equal(data.targets[row], data.candidates[row, data.true_index[row]])


def test_check_backbone_refuses_another_identity(model):
    check_backbone(model, STAND_IN)  # type: ignore[arg-type]
    other = SimpleNamespace(identity={"name": "other", "weights": "x"}, name="other")
    with pytest.raises(EmitError, match="retrain"):
        check_backbone(model, other)  # type: ignore[arg-type]


def val_only_products() -> ProductFeatures:
    """Three products whose ids all hash into validation (val_fraction 0.5, seed 0)."""
    from emit.split import in_validation

    ids = [pid for pid in (f"held-{i}" for i in range(200)) if in_validation(pid, 0.5, 0)][:3]
    pf = build([([0, 1], [0, 1]), ([2, 3], [1, 0]), ([4, 5], [0, 1])], seed=9)
    for product, pid in zip(pf.products, ids, strict=True):
        product.product_id = pid
    return pf


@pytest.mark.parametrize("bag_size", [1, 3])
def test_training_when_every_product_is_held_out(bag_size):
    pf = val_only_products()
    config = PairingConfig(backbone="colour-hist", min_count=1, hidden=8, max_epochs=2, bag_size=bag_size,
                           val_fraction=0.5)
    with contextlib.suppress(EmitError):  # a clear error is fine; a ValueError traceback is not
        train_pairing(pf.products, config, backbone=STAND_IN, features=pf,  # type: ignore[arg-type]
                      progress=False)


def test_images_the_reader_marked_missing_are_not_read_again(tmp_path):
    # a missing image stays in its product (it gets "" in final_json.json), reported once by
    # the reader; feature extraction skips it instead of failing on it a second time
    from PIL import Image

    from emit.pairing.pipeline import extract_product_features
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    for name in ("a_0.jpg", "a_2.jpg", "b_0.jpg"):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / name)
    products = [Product("a", ["x", "y"], ["a_0.jpg", "a_1.jpg", "a_2.jpg"], [None] * 3, tmp_path,
                        missing={"a_1.jpg"}),
                Product("gone", ["x"], ["g_0.jpg"], [None], tmp_path, missing={"g_0.jpg"}),
                Product("b", ["x"], ["b_0.jpg"], [None], tmp_path)]
    problems = ProblemLog(echo=False)
    pf = extract_product_features(products, create_backbone("colour-hist"), cache_dir=None,
                                  hflip_tta=False, problems=problems, progress=False)
    assert len(problems) == 0, problems.summary()
    assert pf.rows == [[0, None, 1], [None], [2]]
    assert pf.features.shape[0] == 3 and pf.groups.tolist() == [0, 0, 2]
