"""Review queues (emit.pairing.review_queue): built, written and read back, and malformed files refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.pairing.review_queue import (
    KIND,
    VERSION,
    QueueEntry,
    ReviewQueue,
    build_review_queue,
    read_review_queue,
    review_path,
    write_review_queue,
)
from emit.problems import EmitError

CONF = {"p3": 0.95, "p1": 0.31, "p2": 0.5, "p4": 0.31, "p5": 0.89999}
TAGS = {"p1": ["黑色", None, "白色"], "p2": ["红色", ""], "p3": ["蓝色"], "p4": ["黑色"],
        "p5": ["白色", "白色"]}


def good(tmp_path: Path) -> dict:
    return build_review_queue(0.9, tmp_path / "data", tmp_path / "out" / "final_json.json", CONF, TAGS)


def test_review_path_sits_beside_the_predictions() -> None:
    assert review_path(Path("out/final_json.json")) == Path("out/final_json.review.json")
    assert review_path("/a/b/preds.json") == Path("/a/b/preds.review.json")


def test_the_queue_holds_the_products_below_the_threshold_least_confident_first(tmp_path: Path) -> None:
    queue = good(tmp_path)
    assert queue["kind"] == KIND and queue["version"] == VERSION and queue["threshold"] == 0.9
    assert [e["product_id"] for e in queue["products"]] == ["p1", "p4", "p2", "p5"]  # ties by id
    assert queue["products"][0] == {"product_id": "p1", "confidence": 0.31, "tags": ["黑色", None, "白色"]}
    assert queue["products"][2]["tags"] == ["红色", None]  # "" (as in final_json.json) is no tag
    assert queue["data"] == str(tmp_path / "data") and Path(queue["predictions"]).is_absolute()


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    queue = build_review_queue(0.5, "data/../data", "out/final_json.json", {}, {})
    assert queue["data"] == str(tmp_path / "data") and queue["products"] == []


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_the_ends_of_the_threshold_range(tmp_path: Path, threshold: float) -> None:
    queue = build_review_queue(threshold, tmp_path, tmp_path / "p.json", {"a": 0.0, "b": 1.0},
                               {"a": [], "b": []})
    assert [e["product_id"] for e in queue["products"]] == ([] if threshold == 0 else ["a"])


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf"), True, "0.9", None])
def test_a_threshold_outside_0_to_1_is_refused_with_a_fix(tmp_path: Path, threshold: object) -> None:
    with pytest.raises(EmitError, match="number from 0 to 1"):
        build_review_queue(threshold, tmp_path, tmp_path / "p.json", CONF, TAGS)  # type: ignore[arg-type]


def test_bad_confidences_and_tags_are_refused_naming_the_product(tmp_path: Path) -> None:
    with pytest.raises(EmitError, match=r"'p1'.*confidence nan"):
        build_review_queue(0.9, tmp_path, tmp_path / "p.json", {"p1": float("nan")}, TAGS)
    with pytest.raises(EmitError, match="'px' has a confidence but no predicted tags"):
        build_review_queue(0.9, tmp_path, tmp_path / "p.json", {"px": 0.1}, TAGS)
    with pytest.raises(EmitError, match="'p1': tags"):
        build_review_queue(0.9, tmp_path, tmp_path / "p.json", {"p1": 0.1}, {"p1": "黑色"})  # type: ignore[dict-item]
    # a numpy number from a model is a number; a product above the threshold needs no tags
    queue = build_review_queue(0.9, tmp_path, tmp_path / "p.json", {"p1": np.float32(0.25), "p9": 0.99},
                               {"p1": ("黑色",)})
    assert queue["products"] == [{"product_id": "p1", "confidence": 0.25, "tags": ["黑色"]}]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    queue = good(tmp_path)
    path = write_review_queue(review_path(tmp_path / "out" / "final_json.json"), queue)
    assert path == tmp_path / "out" / "final_json.review.json"
    assert json.loads(path.read_text(encoding="utf-8")) == queue
    assert not list(path.parent.glob(".*.tmp"))
    back = read_review_queue(path)
    assert isinstance(back, ReviewQueue) and back.path == path and back.threshold == 0.9
    assert back.data == tmp_path / "data" and back.predictions == tmp_path / "out" / "final_json.json"
    assert back.products[0] == QueueEntry("p1", 0.31, ["黑色", None, "白色"])
    assert back.to_json() == queue


def test_a_hand_sorted_file_is_read_least_confident_first(tmp_path: Path) -> None:
    queue = good(tmp_path)
    queue["products"].reverse()
    path = tmp_path / "q.review.json"
    path.write_text(json.dumps(queue), encoding="utf-8")
    assert [e.product_id for e in read_review_queue(path).products] == ["p1", "p4", "p2", "p5"]


def _entry(**change: object) -> dict:
    return {"product_id": "p1", "confidence": 0.3, "tags": ["黑色", None], **change}


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "emit.pairing.other"}, "not a review queue: kind"),
    ({"version": 2}, "version 2 is not supported"),
    ({"version": True}, "version True is not supported"),
    ({"threshold": 1.2}, "threshold 1.2 is not a number from 0 to 1"),
    ({"threshold": "0.9"}, "threshold '0.9'"),
    ({"data": "relative/data"}, "data 'relative/data' is not an absolute path"),
    ({"predictions": None}, "predictions None is not an absolute path"),
    ({"products": {"p1": 0.3}}, "products is dict, not a list"),
    ({"products": [_entry(), "p2"]}, r"products\[1\] is str, not an object"),
    ({"products": [_entry(product_id="../x")]}, r"products\[0\]: product_id '../x' is not a product id"),
    ({"products": [_entry(product_id="")]}, r"products\[0\]: product_id '' is not a product id"),
    ({"products": [_entry(product_id=7)]}, r"products\[0\]: product_id 7"),
    ({"products": [_entry(product_id="\ud800")]}, r"products\[0\]: product_id"),
    ({"products": [_entry(), _entry()]}, r"products\[1\]: product 'p1' is listed twice"),
    ({"products": [_entry(confidence=1.5)]}, r"products\[0\] \(product 'p1'\): confidence 1.5"),
    ({"products": [_entry(confidence=None)]}, r"products\[0\] \(product 'p1'\): confidence None"),
    ({"products": [_entry(tags="黑色")]}, r"products\[0\] \(product 'p1'\): tags must be a list"),
    ({"products": [_entry(tags=[1])]}, r"products\[0\] \(product 'p1'\): tags must be a list"),
])
def test_a_malformed_queue_names_the_file_the_record_and_the_fix(tmp_path: Path, change: dict,
                                                                  message: str) -> None:
    queue = {**good(tmp_path), **change}
    path = tmp_path / "bad.review.json"
    path.write_text(json.dumps(queue), encoding="utf-8")
    with pytest.raises(EmitError, match=message) as caught:
        read_review_queue(path)
    assert str(path) in str(caught.value)
    assert "emit pair predict" in str(caught.value) or "upgrade emit" in str(caught.value) \
        or "list each product once" in str(caught.value)
    with pytest.raises(EmitError, match=message):  # nor is such a queue written
        write_review_queue(tmp_path / "never.review.json", queue)
    assert not (tmp_path / "never.review.json").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"), ("{", "malformed JSON"), ("[]", "expected a JSON object, got list"),
])
def test_a_file_that_is_not_a_queue_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.review.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EmitError, match=message):
        read_review_queue(path)
    with pytest.raises(EmitError, match="cannot read file"):
        read_review_queue(tmp_path / "missing.review.json")


ids = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1, max_size=8).filter(
    lambda s: s.strip(". ") != "")
probabilities = st.floats(0, 1, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(confidence=st.dictionaries(ids, probabilities, max_size=20), threshold=probabilities)
def test_the_written_queue_is_sorted_and_holds_exactly_the_products_below(
        tmp_path_factory: pytest.TempPathFactory, confidence: dict[str, float], threshold: float) -> None:
    tmp = tmp_path_factory.mktemp("q")
    tags = {pid: [pid, None] for pid in confidence}
    queue = build_review_queue(threshold, tmp / "data", tmp / "final_json.json", confidence, tags)
    path = write_review_queue(tmp / "final_json.review.json", queue)
    back = read_review_queue(path)
    keys = [(e.confidence, e.product_id) for e in back.products]
    assert keys == sorted(keys)
    assert {e.product_id for e in back.products} == {p for p, c in confidence.items() if c < threshold}
    assert all(e.tags == [e.product_id, None] and e.confidence == confidence[e.product_id]
               for e in back.products)
