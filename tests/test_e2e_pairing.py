"""End to end through the command line: generate products, train, predict, evaluate.

Run with the default backbone (EfficientNet-Lite0, bundled weights, offline, plus the colour
histogram) and with the colour histogram alone. Training happens once per backbone; the tests
reuse the model and the cache.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import emit.pairing.jobs as pairing_jobs
from emit.cli import main
from emit.config import PairingConfig
from emit.data.synthetic import make_products
from emit.vision.backbones import create_backbone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_ACCURACY = 0.8  # the synthetic colours are easy: a working pipeline gets ~1.0


OTHER = "colour-hist"  # the colour-only backbone, once the default
BACKBONES = list(dict.fromkeys([PairingConfig().backbone, OTHER]))


@pytest.fixture(scope="module", params=BACKBONES,
                ids=["default" if b == PairingConfig().backbone else b for b in BACKBONES])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[dict[str, Path]]:
    backbone = request.param
    root = tmp_path_factory.mktemp("e2e")
    paths = {
        "root": root,
        "train": make_products(root / "train", 36, seed=1, size=64),
        "truth": make_products(root / "test", 12, seed=2, size=64),
        # the same products and images, with the answers left out, as users predict them
        "input": make_products(root / "input", 12, seed=2, size=64, with_truth=False),
        "model": root / "model",
        "cache": root / "cache",
        "backbone": backbone,
    }
    chosen = [] if backbone == PairingConfig().backbone else ["--backbone", backbone]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMIT_CACHE_DIR", str(root / "default-cache"))  # never the user's ~/.cache
        code = main(["pair", "train", str(paths["train"]), "--out", str(paths["model"]),
                     "--cache-dir", str(paths["cache"]), "-q", "--max-epochs", "60",
                     "--bag-size", "2", "--threads", "1", *chosen])
        assert code == 0
        yield paths
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def predicted(env: dict[str, Path]) -> dict[str, Path]:
    out = env["root"] / "final.json"
    threads = torch.get_num_threads()
    assert main(["pair", "predict", str(env["model"]), str(env["input"]), "--out", str(out),
                 "--cache-dir", str(env["cache"]), "-q", "--threads", "1"]) == 0
    assert main(["pair", "evaluate", str(out), str(env["truth"]), "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    return {"final": out, "report": env["root"] / "final_report.json",
            "png": env["root"] / "final_report.png", "baseline": env["root"] / "final.baseline.json"}


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def input_profiles(folder: Path) -> dict[str, dict]:
    return {p.name: read_json(p / "profile.json") for p in sorted(folder.iterdir()) if p.is_dir()}


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and min(im.size) > 100


def tags_by_image(profile: dict) -> dict[str, str]:
    return {name: tag for entry in profile["imgs_tags"] for name, tag in entry.items()}


# ---- train --------------------------------------------------------------------------------


def test_model_folder(env):
    model = env["model"]
    for name in ("model.json", "vocab.json", "weights.safetensors", "training.png"):
        assert (model / name).is_file(), name
    assert not (model / "train_problems.json").exists()
    meta = read_json(model / "model.json")
    assert meta["config"]["max_epochs"] == 60 and meta["config"]["bag_size"] == 2
    assert meta["config"]["backbone"] == env["backbone"]
    assert meta["backbone"] == json.loads(json.dumps(create_backbone(env["backbone"]).identity))
    assert len(meta["members"]) == 2
    for member in meta["members"]:
        info = member["info"]
        assert 1 <= info["best_epoch"] <= info["epochs"] <= 60
        assert len(info["train_loss"]) == info["epochs"]
    assert_valid_png(model / "training.png")
    vocab = read_json(model / "vocab.json")
    assert {"黑", "白", "红", "蓝"} <= set(vocab["labels"])


# ---- predict and evaluate -----------------------------------------------------------------


def test_predictions_keep_the_input_layout(env, predicted):
    final = read_json(predicted["final"])
    inputs = input_profiles(env["input"])
    assert set(final) == set(inputs)
    for pid, profile in inputs.items():
        out = final[pid]
        assert out["optional_tags"] == profile["optional_tags"]
        assert [next(iter(e)) for e in out["imgs_tags"]] == [next(iter(e)) for e in profile["imgs_tags"]]
        assert all(len(e) == 1 for e in out["imgs_tags"])
        tags = list(tags_by_image(out).values())
        assert all(t in profile["optional_tags"] for t in tags), (pid, tags)
        assert set(tags) == set(profile["optional_tags"])  # exact mode shows every tag
    # the input was only read
    assert all(t == "" for p in input_profiles(env["input"]).values() for t in tags_by_image(p).values())


def test_accuracy_is_high(env, predicted, capsys):
    report = read_json(predicted["report"])
    assert report["images"] == sum(len(p["imgs_tags"]) for p in input_profiles(env["truth"]).values())
    assert report["products"] == 12
    assert report["accuracy"] >= MIN_ACCURACY, report["accuracy"]
    assert 0 <= report["exact_match"] <= 1
    assert report["problems"] == []
    # direct check of the same number against the truth files
    final = read_json(predicted["final"])
    truth = input_profiles(env["truth"])
    pairs = [(tags_by_image(final[pid])[name], tag) for pid, p in truth.items()
             for name, tag in tags_by_image(p).items()]
    assert sum(a == b for a, b in pairs) / len(pairs) == pytest.approx(report["accuracy"])


def test_report_png_and_baseline(env, predicted):
    assert_valid_png(predicted["png"])
    baseline = read_json(predicted["baseline"])
    inputs = input_profiles(env["input"])
    assert set(baseline) == set(inputs)
    for pid, profile in inputs.items():
        assert all(t in profile["optional_tags"] for t in tags_by_image(baseline[pid]).values())
    report = read_json(predicted["report"])
    assert list(report["baselines"]) == ["colour baseline (single-class)"]
    assert report["baselines"]["colour baseline (single-class)"]["images"] == report["images"]


# ---- a corrupt image ----------------------------------------------------------------------


def test_corrupt_image_is_skipped_and_features_come_from_the_cache(env, predicted, monkeypatch, capsys):
    data = env["root"] / "input-corrupt"
    shutil.copytree(env["input"], data)
    profiles = input_profiles(data)
    pid = next(p for p, prof in profiles.items() if len(prof["imgs_tags"]) >= 3)
    bad_name = next(iter(profiles[pid]["imgs_tags"][0]))
    bad = data / pid / bad_name
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])  # a half-written JPEG

    forward_calls = []
    original = pairing_jobs.create_backbone

    def counting_backbone(*args, **kwargs):
        backbone = original(*args, **kwargs)
        backbone.model.register_forward_hook(lambda *_: forward_calls.append(1))
        return backbone

    monkeypatch.setattr(pairing_jobs, "create_backbone", counting_backbone)
    cache_files = list(env["cache"].glob("*.sqlite"))
    assert len(cache_files) == 1, cache_files
    rows_before = count_rows(cache_files[0])
    assert rows_before >= 36 * 2  # every training and test image (at least 2 per product)

    out = env["root"] / "final2.json"
    threads = torch.get_num_threads()
    code = main(["pair", "predict", str(env["model"]), str(data), "--out", str(out),
                 "--cache-dir", str(env["cache"]), "-q", "--threads", "1"])
    torch.set_num_threads(threads)
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unassigned_images"] == 1 and summary["problems"] >= 1

    final = read_json(out)
    assert tags_by_image(final[pid])[bad_name] == ""
    for p, prof in profiles.items():
        for name, tag in tags_by_image(final[p]).items():
            if (p, name) != (pid, bad_name):
                assert tag in prof["optional_tags"], (p, name, tag)
    # the other images of the damaged product are still tagged; the rest match the first run
    first = read_json(predicted["final"])
    for p in profiles:
        if p != pid:
            assert final[p] == first[p]

    problem_files = sorted(env["root"].glob("final2*problems*.json"))
    assert problem_files == [out.with_suffix(".problems.json")]
    problems = read_json(problem_files[0])
    assert any(bad_name in (pr["where"] + pr["record"]) for pr in problems)
    assert not list(env["root"].glob("final.*problems*.json"))  # the clean run reported nothing
    # every readable image was found in the cache: the backbone never ran
    assert forward_calls == []
    assert count_rows(cache_files[0]) == rows_before


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM features").fetchone()[0])


# ---- a missing image, deeply nested JSON --------------------------------------------------


def run_cli(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return main([*argv, "-q", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_missing_images_keep_their_place_in_final_json(env, predicted, capsys):
    # README: a missing image gets "" in final_json.json; before the fix its entry vanished
    data = env["root"] / "input-missing"
    shutil.copytree(env["input"], data)
    profiles = input_profiles(data)
    pid = next(p for p, prof in profiles.items() if len(prof["imgs_tags"]) >= 3)
    gone = next(iter(profiles[pid]["imgs_tags"][1]))
    (data / pid / gone).unlink()
    empty = next(p for p in profiles if p != pid)  # a product none of whose images is left
    for entry in profiles[empty]["imgs_tags"]:
        (data / empty / next(iter(entry))).unlink()

    out = env["root"] / "final-missing.json"
    capsys.readouterr()
    assert run_cli(["pair", "predict", str(env["model"]), str(data), "--out", str(out),
                    "--cache-dir", str(env["cache"])]) == 0
    summary = json.loads(capsys.readouterr().out)
    lost = 1 + len(profiles[empty]["imgs_tags"])
    assert summary["unassigned_images"] == lost
    assert summary["images"] == sum(len(p["imgs_tags"]) for p in profiles.values())

    first = read_json(predicted["final"])
    for path in (out, pairing_jobs.baseline_path(out)):
        final = read_json(path)
        assert list(final) == list(profiles)  # every product, in input order
        for p, profile in profiles.items():  # every image, in input order
            assert [next(iter(e)) for e in final[p]["imgs_tags"]] == [
                next(iter(e)) for e in profile["imgs_tags"]]
        assert tags_by_image(final[pid])[gone] == ""
        assert set(tags_by_image(final[empty]).values()) == {""}
    final = read_json(out)
    assert all(t in profiles[pid]["optional_tags"] for n, t in tags_by_image(final[pid]).items() if n != gone)
    for p in profiles:
        if p not in (pid, empty):
            assert final[p] == first[p]
    problems = read_json(out.with_suffix(".problems.json"))
    assert len(problems) == lost
    assert any(gone in pr["record"] and 'gets ""' in pr["what"] and pr["fix"] for pr in problems)


def deep_profile(path: Path) -> None:
    path.write_text("[" * 1000 + "]" * 1000, encoding="utf-8")  # RecursionError before the fix


def test_deeply_nested_profiles_are_reported_and_skipped(env, predicted):
    # predict: the bad product is reported; every other product is predicted as before
    data = env["root"] / "input-deep"
    shutil.copytree(env["input"], data)
    bad = sorted(p.name for p in data.iterdir())[0]
    deep_profile(data / bad / "profile.json")
    out = env["root"] / "final-deep.json"
    assert run_cli(["pair", "predict", str(env["model"]), str(data), "--out", str(out),
                    "--cache-dir", str(env["cache"])]) == 0
    final, first = read_json(out), read_json(predicted["final"])
    assert final == {p: first[p] for p in first if p != bad}
    (problem,) = read_json(out.with_suffix(".problems.json"))
    assert problem["where"] == str(data / bad / "profile.json") and problem["record"] == bad
    assert "nested deeper than Python's parser allows" in problem["what"] and problem["fix"]

    # evaluate: a bad truth profile is reported in the report, the rest is scored
    truth = env["root"] / "truth-deep"
    shutil.copytree(env["truth"], truth)
    deep_profile(truth / bad / "profile.json")
    assert run_cli(["pair", "evaluate", str(predicted["final"]), str(truth),
                    "--out", str(env["root"] / "deep_report")]) == 0
    report = read_json(env["root"] / "deep_report.json")
    assert report["products"] == 11
    assert any(pr["record"] == bad and "nested deeper" in pr["what"] for pr in report["problems"])

    # train: the bad product is reported in train_problems.json, the model is written
    train = env["root"] / "train-deep"
    shutil.copytree(env["train"], train)
    bad_train = sorted(p.name for p in train.iterdir())[0]
    deep_profile(train / bad_train / "profile.json")
    model = env["root"] / "model-deep"
    chosen = [] if env["backbone"] == PairingConfig().backbone else ["--backbone", env["backbone"]]
    assert run_cli(["pair", "train", str(train), "--out", str(model), "--cache-dir", str(env["cache"]),
                    "--max-epochs", "2", "--bag-size", "1", *chosen]) == 0
    problems = read_json(model / "train_problems.json")
    assert [(pr["record"], "nested deeper" in pr["what"]) for pr in problems] == [(bad_train, True)]


def test_a_deeply_nested_combined_file_is_one_clear_error(env, tmp_path, caplog):
    """Its only product is nested 1,000 deep: that product is reported (file, product, line) and
    skipped, which leaves nothing to predict: one clear error, not a RecursionError traceback."""
    combined = tmp_path / "test_all.json"
    combined.write_text('{"1": ' + "[" * 1000 + "]" * 1000 + "}", encoding="utf-8")
    with caplog.at_level("WARNING", logger="emit"):
        code = run_cli(["pair", "predict", str(env["model"]), str(combined),
                        "--out", str(tmp_path / "f.json"), "--cache-dir", str(env["cache"])])
    assert code == 2  # an EmitError naming the file, not a traceback
    assert str(combined) in caplog.text and "nested deeper than Python's parser allows" in caplog.text
    assert "1 (line 1)" in caplog.text and "no usable products" in caplog.text
    assert not (tmp_path / "f.json").exists()
