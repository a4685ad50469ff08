"""What ``emit pair predict`` writes beside ``final_json.json``: the per-product confidences
(``<stem>.confidence.json``) and, with ``--review-below``, the review queue (``<stem>.review.json``),
committed with the predictions; and how ``pair evaluate`` finds the confidences.

Through the command line on generated products, except the crash test, which forks the writer."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from crash_helpers import count_steps, kill_at
from emit.cli import main
from emit.commit import MANIFEST_FILE, folder_commit, read_manifest
from emit.data.products import Product
from emit.data.synthetic import make_products
from emit.files import JOURNAL_SUFFIX, TEMP_SUFFIX, atomic_write_json, recover_folder
from emit.pairing.jobs import baseline_path, predict_job, problems_path, write_predictions
from emit.pairing.model import MODEL_FILE, PairingModel
from emit.pairing.pipeline import ProductDecision
from emit.pairing.report import confidence_path
from emit.pairing.review_queue import read_review_queue, review_path
from emit.problems import EmitError, ProblemLog

QUICK = ["-q", "--threads", "1", "--max-epochs", "4", "--bag-size", "2", "--min-count", "1",
         "--hidden", "16", "--val-fraction", "0.5"]
LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_884fa63"


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def run(*argv: str) -> tuple[int, dict | None]:
    """``emit ARGV``: the exit code and the summary it printed (None if none)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(argv))
    text = buffer.getvalue().strip()
    return code, (json.loads(text) if text.startswith("{") else None)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict-outputs")
    paths = {"root": root, "train": make_products(root / "train", 10, seed=1, size=32),
             "input": make_products(root / "input", 5, seed=2, size=32, with_truth=False),
             "truth": make_products(root / "truth", 5, seed=2, size=32),
             "model": root / "model", "cache": root / "cache", "out": root / "out" / "final_json.json"}
    code, _ = run("pair", "train", str(paths["train"]), "--out", str(paths["model"]),
                  "--cache-dir", str(paths["cache"]), *QUICK)
    assert code == 0
    code, summary = predict(paths, paths["out"])
    assert code == 0 and summary is not None
    paths["summary"] = summary  # type: ignore[assignment]
    return paths


def predict(env: dict, out: Path, *flags: str, data: Path | None = None, model: Path | None = None
            ) -> tuple[int, dict | None]:
    return run("pair", "predict", str(model or env["model"]), str(data or env["input"]), "--out", str(out),
               "--cache-dir", str(env["cache"]), "-q", "--threads", "1", *flags)


def product_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


# ---- the confidence file ------------------------------------------------------------------


def test_confidences_cover_exactly_the_predicted_products_as_probabilities(env) -> None:
    confidence = read_json(confidence_path(env["out"]))
    assert confidence_path(env["out"]) == env["out"].with_name("final_json.confidence.json")
    assert set(confidence) == set(read_json(env["out"])) == {p.name for p in product_dirs(env["input"])}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in confidence.values())
    summary = env["summary"]
    assert summary["confidence"] == str(confidence_path(env["out"])) and summary["calibrated"] is True
    assert summary["baseline"] == str(baseline_path(env["out"]))  # as before confidences existed
    assert "review" not in summary and not review_path(env["out"]).exists()
    assert PairingModel.load(env["model"]).calibration.products > 0  # type: ignore[union-attr]


def test_a_product_with_an_unreadable_or_missing_image_has_confidence_zero(env, tmp_path) -> None:
    data = shutil.copytree(env["input"], tmp_path / "input")
    broken, gone, *others = product_dirs(data)
    (bad_image := sorted(broken.glob("*.jpg"))[0]).write_bytes(b"not a jpeg")
    (lost_image := sorted(gone.glob("*.jpg"))[-1]).unlink()
    out = tmp_path / "out" / "final_json.json"
    code, summary = predict(env, out, "--review-below", "0.5", data=data)
    assert code == 0 and summary is not None and summary["unassigned_images"] == 2
    confidence = read_json(confidence_path(out))
    assert confidence[broken.name] == 0.0 and confidence[gone.name] == 0.0
    # the other products are decided on their own: the same confidences as in the clean run
    clean = read_json(confidence_path(env["out"]))
    assert {p.name: confidence[p.name] for p in others} == {p.name: clean[p.name] for p in others}
    # their images stay in the predictions, untagged, and the review queue lists them first
    predicted = read_json(out)
    tags = {name: tag for item in predicted[broken.name]["imgs_tags"] for name, tag in item.items()}
    assert tags[bad_image.name] == "" and all(t for n, t in tags.items() if n != bad_image.name)
    queue = read_review_queue(review_path(out))
    assert [e.product_id for e in queue.products[:2]] == sorted([broken.name, gone.name])
    entry = next(e for e in queue.products if e.product_id == gone.name)
    names = [name for item in predicted[gone.name]["imgs_tags"] for name in item]
    assert entry.confidence == 0.0 and entry.tags[names.index(lost_image.name)] is None
    assert {str(bad_image.name), str(lost_image.name)} <= {
        word for p in read_json(problems_path(out)) for word in p["record"].split()}


# ---- --review-below -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["local", "ray"])
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf"])
def test_review_below_outside_0_to_1_is_refused_before_any_work(tmp_path, caplog, value, engine) -> None:
    out = tmp_path / "out" / "final_json.json"
    caplog.clear()
    # neither the model nor the data exist: the threshold is checked before either is read
    code, _ = run("pair", "predict", str(tmp_path / "no-model"), str(tmp_path / "no-data"), "--out",
                  str(out), "-q", "--threads", "1", "--engine", engine, "--review-below", value)
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"--review-below {float(value)}" in errors[0]
    assert "between 0 and 1" in errors[0] and "no-model" not in errors[0]
    assert not out.parent.exists()


def test_review_below_writes_the_queue_and_a_run_without_it_removes_it(env, tmp_path) -> None:
    out = tmp_path / "final_json.json"
    code, summary = predict(env, out, "--review-below", "1.0")
    assert code == 0 and summary is not None
    confidence = read_json(confidence_path(out))
    queue = read_review_queue(review_path(out))
    assert summary["review"] == str(review_path(out)) and summary["review_products"] == len(queue.products)
    assert queue.threshold == 1.0 and queue.predictions == out.resolve()
    assert queue.data == env["input"].resolve()
    assert {e.product_id for e in queue.products} == {pid for pid, p in confidence.items() if p < 1.0}
    for entry in queue.products:
        assert entry.confidence == pytest.approx(confidence[entry.product_id], abs=1e-6)
    assert [e.confidence for e in queue.products] == sorted(e.confidence for e in queue.products)
    predicted = read_json(out)
    for entry in queue.products:
        assert entry.tags == [t for item in predicted[entry.product_id]["imgs_tags"] for t in item.values()]
    code, summary = predict(env, out)  # the next run, without a queue: the old one would mislead
    assert code == 0 and "review" not in summary  # type: ignore[operator]
    assert not review_path(out).exists() and confidence_path(out).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_review_below_zero_writes_an_empty_queue(env, tmp_path) -> None:
    out = tmp_path / "final_json.json"
    assert predict(env, out, "--review-below", "0")[0] == 0
    assert read_review_queue(review_path(out)).products == []


# ---- all written as one commit ------------------------------------------------------------

NAMES = ("final_json.json", "final_json.baseline.json", "final_json.confidence.json",
         "final_json.problems.json", "final_json.review.json")


def _decisions(products: list[Product], flip: bool) -> list[ProductDecision]:
    tags = ["白色", "黑色"] if flip else ["黑色", "白色"]
    return [ProductDecision(p.product_id, list(tags), [0.9, 0.9], np.zeros((2, 2)), list(reversed(tags)),
                            (0.95 if flip else 0.25) - 0.1 * k)
            for k, p in enumerate(products)]


def test_confidences_and_the_queue_are_old_or_new_with_the_predictions(tmp_path) -> None:
    """Killed after any rename or fsync of its commit, predict leaves the old outputs or the new
    ones, confidences and review queue included: never new tags beside old confidences."""
    products = [Product(f"p{k}", ["黑色", "白色"], [f"{k}_0.jpg", f"{k}_1.jpg"], [None, None])
                for k in range(3)]
    problems = ProblemLog(echo=False)
    problems.add("data/p1/profile.json", "p1", "a problem of the old run", "fix it")

    def write_old(root: Path) -> None:  # with problems and a review queue
        write_predictions(root / "final_json.json", products, _decisions(products, False), problems,
                          review_below=0.5, data=root / "data")

    def write_new(root: Path) -> None:  # neither: both files must go in the same commit
        write_predictions(root / "final_json.json", products, _decisions(products, True),
                          ProblemLog(echo=False))

    def load(root: Path) -> tuple[bytes | None, ...]:
        recover_folder(root)  # what every emit reader and writer of the folder does first
        return tuple((root / n).read_bytes() if (root / n).exists() else None for n in NAMES)

    def copy(name: str) -> Path:
        return shutil.copytree(base, tmp_path / name)

    base = tmp_path / "base"
    base.mkdir()
    write_old(base)
    old = load(copy("old"))
    write_new(reference := copy("new"))
    new = load(reference)
    assert all(old) and new[3] is None and new[4] is None and all(new[:3])
    assert json.loads(new[2]) == {"p0": 0.95, "p1": 0.85, "p2": 0.75}  # type: ignore[arg-type]
    steps = count_steps(lambda: write_new(copy("count")))
    outcomes: Counter = Counter()
    for step in range(1, steps + 1):
        work = copy(f"kill{step}")
        assert kill_at(step, lambda w=work: write_new(w)), f"step {step} of {steps} did not kill the writer"
        got = load(work)
        assert got in (old, new), f"killed after step {step}: old and new outputs mixed"
        outcomes["old" if got == old else "new"] += 1
        write_new(work)
        assert load(work) == new
        assert not [p for p in work.iterdir() if p.name.endswith((TEMP_SUFFIX, JOURNAL_SUFFIX))]
    assert outcomes["old"] and outcomes["new"], outcomes


# ---- models from before calibration -------------------------------------------------------


def _strip_calibration(model: Path) -> None:
    """model.json as an emit from before calibration and --extra wrote it, committed properly
    (the manifest records the new file's hash, as that emit's commit did)."""
    meta = read_json(model / MODEL_FILE)
    del meta["calibration"], meta["extra"]
    with folder_commit(model, label="pairing-model"):
        atomic_write_json(model / MODEL_FILE, meta)


def test_a_model_without_calibration_still_predicts_with_a_warning(env, tmp_path, caplog) -> None:
    model = shutil.copytree(env["model"], tmp_path / "model")
    _strip_calibration(model)
    assert read_manifest(model) is not None and "calibration" not in read_json(model / MODEL_FILE)
    loaded = PairingModel.load(model)  # not refused as torn
    assert loaded.calibration is None and loaded.extra_sources == []
    out = tmp_path / "out" / "final_json.json"
    caplog.clear()
    code, summary = predict(env, out, "--review-below", "0.9", model=model)
    assert code == 0 and summary is not None and summary["calibrated"] is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(model) in w and "did not calibrate confidence" in w and "retrain" in w for w in warnings)
    confidence = read_json(confidence_path(out))
    assert set(confidence) == set(read_json(out))
    # the uncalibrated default: sigmoid of the (non-negative) margin
    assert all(0.5 <= v <= 1.0 for v in confidence.values())
    assert read_json(out) == read_json(env["out"])  # the same heads: the same tags
    read_review_queue(review_path(out))


def test_an_old_model_folder_without_a_manifest_writes_confidences(tmp_path, caplog) -> None:
    """The model written by emit 884fa63 (tests/fixtures): no manifest, no calibration."""
    model = shutil.copytree(LEGACY / "pairing-model", tmp_path / "model")
    cache = shutil.copytree(LEGACY / "cache", tmp_path / "cache")
    assert not (model / MANIFEST_FILE).exists()
    out = tmp_path / "final_json.json"
    caplog.clear()
    summary = predict_job(model, LEGACY / "products" / "input", out, cache_dir=cache, progress=False)
    assert summary["calibrated"] is False and "did not calibrate confidence" in caplog.text
    confidence = read_json(confidence_path(out))
    old_predictions = read_json(LEGACY / "predictions" / "final_json.json")
    assert set(confidence) == set(read_json(out)) == set(old_predictions)
    assert all(0.0 <= v <= 1.0 for v in confidence.values())


# ---- evaluate -----------------------------------------------------------------------------


def test_evaluate_uses_the_confidences_beside_the_predictions(env, tmp_path) -> None:
    pred = shutil.copy(env["out"], tmp_path / "final_json.json")
    shutil.copy(confidence_path(env["out"]), confidence_path(pred))
    assert run("pair", "evaluate", str(pred), str(env["truth"]), "--threads", "1")[0] == 0
    report = read_json(tmp_path / "final_json_report.json")
    assert report["confidence"]["source"] == str(confidence_path(pred))
    assert report["confidence"]["products_without_confidence"] == 0
    assert report["confidence"]["coverage"][-1]["exact_match"] == report["exact_match"]


def test_evaluate_uses_the_confidence_file_it_is_given(env, tmp_path) -> None:
    pred = shutil.copy(env["out"], tmp_path / "final_json.json")
    shutil.copy(confidence_path(env["out"]), confidence_path(pred))  # not the one used
    other = tmp_path / "other.json"
    other.write_text(json.dumps({pid: 0.5 for pid in read_json(pred)}), encoding="utf-8")
    assert run("pair", "evaluate", str(pred), str(env["truth"]), "--confidence", str(other),
               "--out", str(tmp_path / "r"), "--threads", "1")[0] == 0
    assert read_json(tmp_path / "r.json")["confidence"]["source"] == str(other)


def test_evaluate_without_a_confidence_file_has_no_confidence_section(env, tmp_path) -> None:
    pred = shutil.copy(env["out"], tmp_path / "final_json.json")  # as an older predict wrote it
    assert run("pair", "evaluate", str(pred), str(env["truth"]), "--threads", "1")[0] == 0
    assert "confidence" not in read_json(tmp_path / "final_json_report.json")


def test_evaluate_with_a_missing_confidence_file_is_an_error(env, tmp_path, caplog) -> None:
    pred = shutil.copy(env["out"], tmp_path / "final_json.json")
    shutil.copy(confidence_path(env["out"]), confidence_path(pred))  # never used in its place
    caplog.clear()
    code, _ = run("pair", "evaluate", str(pred), str(env["truth"]), "--confidence",
                  str(tmp_path / "missing.json"), "--threads", "1")
    assert code == 2
    assert f"--confidence {tmp_path / 'missing.json'}: no such file" in caplog.text
    assert ".confidence.json" in caplog.text  # the fix names what to give
    assert not (tmp_path / "final_json_report.json").exists()


# ---- the confidence file and the queue agree ----------------------------------------------


def test_the_queue_lists_exactly_the_products_the_confidence_file_puts_below_the_threshold(tmp_path) -> None:
    products = [Product(f"p{k}", ["黑色", "白色"], [f"{k}_0.jpg", f"{k}_1.jpg"], [None, None])
                for k in range(2)]
    decisions = _decisions(products, False)
    decisions[0].product_confidence = 0.8999999996  # 0.9 in the confidence file
    decisions[1].product_confidence = 0.5
    out = tmp_path / "final_json.json"
    write_predictions(out, products, decisions, ProblemLog(echo=False), review_below=0.9, data=tmp_path)
    confidence = read_json(confidence_path(out))
    listed = [e.product_id for e in read_review_queue(review_path(out)).products]
    assert listed == [pid for pid, p in confidence.items() if p < 0.9]


def test_a_library_caller_gets_an_emit_error_for_a_bad_threshold(env, tmp_path) -> None:
    for value in (1.5, -0.1, math.nan):
        with pytest.raises(EmitError, match="--review-below"):
            predict_job(env["model"], env["input"], tmp_path / "final_json.json", review_below=value,
                        cache_dir=env["cache"], progress=False)
    assert not list(tmp_path.iterdir())
