"""End to end with the default settings on products whose options differ by garment shape as
well as colour (a T-shirt and trousers of one colour), through the command line: train,
predict with a review queue, evaluate with confidence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from emit.cli import main
from emit.data.synthetic import make_mixed_products
from emit.pairing.review_queue import read_review_queue


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("mixed")
    paths = {"root": root, "train": make_mixed_products(root / "train", 60, seed=1, size=64),
             "truth": make_mixed_products(root / "test", 12, seed=2, size=64),
             "input": make_mixed_products(root / "input", 12, seed=2, size=64, with_truth=False),
             "model": root / "model", "cache": root / "cache", "out": root / "out" / "final_json.json"}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMIT_CACHE_DIR", str(root / "default-cache"))  # never the user's ~/.cache
        assert main(["pair", "train", str(paths["train"]), "--out", str(paths["model"]),
                     "--cache-dir", str(paths["cache"]), "-q", "--threads", "1"]) == 0
        assert main(["pair", "predict", str(paths["model"]), str(paths["input"]), "--out",
                     str(paths["out"]), "--cache-dir", str(paths["cache"]), "-q", "--threads", "1",
                     "--review-below", "1.0"]) == 0
        assert main(["pair", "evaluate", str(paths["out"]), str(paths["truth"]), "--threads", "1"]) == 0
        yield paths
    torch.set_num_threads(threads)


def test_the_default_tells_garments_of_one_colour_apart(run):
    report = read_json(run["out"].with_name("final_json_report.json"))
    assert report["accuracy"] >= 0.95 and report["exact_match"] >= 0.9
    truth = {p.name: read_json(p / "profile.json") for p in run["truth"].iterdir()}
    pred = read_json(run["out"])
    same_colour = right = 0
    for pid, profile in truth.items():  # every product has two options of one colour
        want = {k: v for item in profile["imgs_tags"] for k, v in item.items()}
        got = {k: v for item in pred[pid]["imgs_tags"] for k, v in item.items()}
        same_colour += len(want)
        right += sum(got[k] == v for k, v in want.items())
    assert right / same_colour >= 0.95


def test_confidence_file_covers_exactly_the_predicted_products(run):
    confidence = read_json(run["out"].with_name("final_json.confidence.json"))
    assert set(confidence) == set(read_json(run["out"]))
    assert all(0.0 <= v <= 1.0 for v in confidence.values())
    model = read_json(run["model"] / "model.json")
    assert model["calibration"]["slope"] >= 0


def test_review_queue_lists_products_below_the_threshold_least_sure_first(run):
    confidence = read_json(run["out"].with_name("final_json.confidence.json"))
    queue = read_review_queue(run["out"].with_name("final_json.review.json"))
    listed = [item.product_id for item in queue.products]
    assert set(listed) == {pid for pid, p in confidence.items() if p < 1.0}
    values = [confidence[pid] for pid in listed]
    assert values == sorted(values)


def test_evaluate_reports_coverage_and_calibration(run):
    report = read_json(run["out"].with_name("final_json_report.json"))
    levels = [row["coverage"] for row in report["confidence"]["coverage"]]
    assert levels == [0.5, 0.7, 0.9, 1.0]
    assert report["confidence"]["coverage"][-1]["exact_match"] == report["exact_match"]
    assert 0.0 <= report["confidence"]["calibration"]["ece"] <= 1.0


def test_a_second_predict_without_the_flag_removes_the_stale_queue(run, tmp_path):
    out = tmp_path / "final_json.json"
    args = ["pair", "predict", str(run["model"]), str(run["input"]), "--out", str(out),
            "--cache-dir", str(run["cache"]), "-q", "--threads", "1"]
    assert main([*args, "--review-below", "0.5"]) == 0
    assert main(args) == 0
    assert not out.with_name("final_json.review.json").exists()
    assert out.with_name("final_json.confidence.json").is_file()
