"""Each run's outputs describe that run alone: through the command line, on generated products.

Rerunning ``pair train`` / ``pair predict`` into the same place after fixing the data removes
the problem file of the earlier run; a model trained without fine-tuning never picks up a
fine-tuned backbone left in its folder; a baseline asked for by name is never dropped silently;
a torn model folder is refused with the fix, and the fix (training again) works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emit.cli import main
from emit.commit import MANIFEST_FILE
from emit.data.synthetic import make_products
from emit.pairing.finetune import TUNED_FILE
from emit.pairing.jobs import TRAIN_PROBLEMS, baseline_path, problems_path
from emit.pairing.model import MODEL_FILE, WEIGHTS_FILE, PairingModel

QUICK = ["-q", "--max-epochs", "4", "--bag-size", "1", "--threads", "1", "--min-count", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    return {"root": root, "train": make_products(root / "train", 8, seed=1, size=48),
            "input": make_products(root / "input", 4, seed=2, size=48, with_truth=False),
            "truth": make_products(root / "truth", 4, seed=2, size=48),
            "cache": root / "cache"}


def _with_bad_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "not-a-product").mkdir()  # no profile.json: reported and skipped
    return dst


def _train(data_dir: Path, out: Path, cache: Path, *extra: str) -> None:
    assert main(["pair", "train", str(data_dir), "--out", str(out), "--cache-dir", str(cache), *QUICK,
                 *extra]) == 0


def test_a_rerun_after_fixing_the_data_leaves_no_stale_problem_file(data, tmp_path) -> None:
    out = tmp_path / "m"
    bad = _with_bad_folder(data["train"], tmp_path / "train-bad")
    _train(bad, out, data["cache"])
    assert "not-a-product" in (out / TRAIN_PROBLEMS).read_text(encoding="utf-8")
    _train(data["train"], out, data["cache"])  # fixed
    assert not (out / TRAIN_PROBLEMS).exists()

    pred = tmp_path / "final_json.json"
    bad_input = _with_bad_folder(data["input"], tmp_path / "input-bad")
    args = ["pair", "predict", str(out), "--out", str(pred), "--cache-dir", str(data["cache"]), "-q"]
    assert main([*args[:3], str(bad_input), *args[3:]]) == 0
    assert "not-a-product" in problems_path(pred).read_text(encoding="utf-8")
    assert main([*args[:3], str(data["input"]), *args[3:]]) == 0
    assert pred.is_file() and baseline_path(pred).is_file() and not problems_path(pred).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_stray_fine_tuned_backbone_is_no_part_of_another_model(data, tmp_path) -> None:
    out = tmp_path / "m"
    _train(data["train"], out, data["cache"])
    before = PairingModel.load(out)
    (out / TUNED_FILE).write_bytes(b"left by an earlier, fine-tuned model")
    _train(data["train"], out, data["cache"])  # a model without fine-tuning drops it in its commit
    assert not (out / TUNED_FILE).exists()
    pred = tmp_path / "p.json"
    assert main(["pair", "predict", str(out), str(data["input"]), "--out", str(pred),
                 "--cache-dir", str(data["cache"]), "-q"]) == 0
    assert PairingModel.load(out).config == before.config


def test_a_torn_model_folder_is_refused_and_training_again_mends_it(data, tmp_path, caplog) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _train(data["train"], a, data["cache"])
    _train(data["train"], b, data["cache"], "--seed", "7")  # same settings: same file shapes
    assert (a / WEIGHTS_FILE).read_bytes() != (b / WEIGHTS_FILE).read_bytes()
    shutil.copy(b / WEIGHTS_FILE, a / WEIGHTS_FILE)  # new weights beside the old configuration
    pred = tmp_path / "p.json"
    caplog.clear()
    assert main(["pair", "predict", str(a), str(data["input"]), "--out", str(pred), "--cache-dir",
                 str(data["cache"]), "-q"]) == 2
    assert f"train it again with `emit pair train DATA --out {a}`" in caplog.text
    assert str(a / WEIGHTS_FILE) in caplog.text and not pred.exists()
    _train(data["train"], a, data["cache"])
    assert PairingModel.load(a).config.seed == 0
    assert (a / MODEL_FILE).is_file() and (a / MANIFEST_FILE).is_file()


def test_a_baseline_named_but_missing_is_an_error_not_a_dropped_row(data, tmp_path, caplog) -> None:
    out = tmp_path / "m"
    _train(data["train"], out, data["cache"])
    pred = tmp_path / "final_json.json"
    assert main(["pair", "predict", str(out), str(data["input"]), "--out", str(pred),
                 "--cache-dir", str(data["cache"]), "-q"]) == 0
    caplog.clear()
    assert main(["pair", "evaluate", str(pred), str(data["truth"]), "--baseline",
                 str(tmp_path / "nonexistent.json")]) == 2
    assert "nonexistent.json: no such file" in caplog.text
    assert main(["pair", "evaluate", str(pred), str(data["truth"])]) == 0  # the default one, found
