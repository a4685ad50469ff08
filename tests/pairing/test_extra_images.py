"""Extra labelled catalogue images for ``emit pair train --extra``: what the reader makes of
JSON lines and product folders, what it reports and skips, and what training does with them
(more labels and heads, but a confidence calibrated on the products being paired only)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from emit.cli import main
from emit.config import PairingConfig
from emit.data.extra_images import read_extra_images
from emit.data.products import Product, read_products, write_final_json
from emit.data.synthetic import make_products
from emit.pairing.jobs import TRAIN_PROBLEMS
from emit.pairing.model import MODEL_FILE, VOCAB_FILE, PairingModel, head_inputs
from emit.pairing.pipeline import ProductFeatures, calibrate, train_pairing
from emit.problems import EmitError, ProblemLog
from emit.split import in_validation

GOOD = {"image": "a.jpg", "tag": "黑色衬衫"}


def _image(path: Path, rgb: tuple[int, int, int] = (20, 20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)
    return path


def _jsonl(path: Path, lines: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def _read(path: Path) -> tuple[list[Product], ProblemLog]:
    problems = ProblemLog(echo=False)
    return read_extra_images(path, problems), problems


# ---- JSON lines ---------------------------------------------------------------------------


def test_lines_of_a_group_become_one_product_with_its_distinct_tags_in_order(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "photos/d.jpg", "e.jpg"):
        _image(tmp_path / "cat" / name)
    outside = _image(tmp_path / "elsewhere" / "f.jpg")
    source = _jsonl(tmp_path / "cat" / "images.jsonl", [
        {"image": "a.jpg", "tag": "白色衬衫", "group": "brandA"},
        {"image": "photos/d.jpg", "tag": "红色长裤"},  # no group: a product of its own
        {"image": "b.jpg", "tag": "黑色衬衫", "group": "brandA"},
        {"image": "c.jpg", "tag": " 白色衬衫 ", "group": "brandA"},  # the same tag, spaces stripped
        {"image": str(outside), "tag": "蓝色长裤", "group": "brandB"},  # an absolute path
        {"image": "e.jpg", "tag": "黑色长裤", "group": "brandB"},
    ])
    products, problems = _read(source)
    assert not problems.items
    by_id = {p.product_id: p for p in products}
    assert len(products) == 3
    brand_a = next(p for pid, p in by_id.items() if "brandA" in pid)
    assert brand_a.optional_tags == ["白色衬衫", "黑色衬衫"]  # distinct, in order of appearance
    assert brand_a.tags == ["白色衬衫", "黑色衬衫", "白色衬衫"]
    assert [Path(brand_a.image_path(n)) for n in brand_a.images] == [
        (tmp_path / "cat" / n).resolve() for n in ("a.jpg", "b.jpg", "c.jpg")]
    brand_b = next(p for pid, p in by_id.items() if "brandB" in pid)
    assert brand_b.optional_tags == ["蓝色长裤", "黑色长裤"]
    assert [Path(brand_b.image_path(n)) for n in brand_b.images] == [
        outside.resolve(), (tmp_path / "cat" / "e.jpg").resolve()]
    (single,) = [p for p in products if p not in (brand_a, brand_b)]
    assert single.optional_tags == ["红色长裤"] and single.tags == ["红色长裤"]
    assert Path(single.image_path(single.images[0])) == (tmp_path / "cat" / "photos" / "d.jpg").resolve()
    assert all(p.labelled and Path(p.image_path(n)).is_file() for p in products for n in p.images)


def test_lines_without_a_group_are_one_product_each(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    source = _jsonl(tmp_path / "x.ndjson", [GOOD, {"image": "a.jpg", "tag": "黑色衬衫"}])
    products, _ = _read(source)
    assert len(products) == 2 and len({p.product_id for p in products}) == 2
    assert all(p.optional_tags == ["黑色衬衫"] and len(p.images) == 1 for p in products)


def test_every_bad_line_is_reported_with_its_file_and_line_and_skipped(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()  # a folder, not an image file
    source = _jsonl(tmp_path / "images.jsonl", [
        GOOD,                                              # 1
        "{not json",                                       # 2
        '["a.jpg", "黑色衬衫"]',                            # 3 JSON, but not an object
        "",                                                # 4 a blank line: nothing to report
        {"tag": "黑色衬衫"},                                # 5 no image
        {"image": "a.jpg"},                                # 6 no tag
        {"image": "a.jpg", "tag": "   "},                  # 7 a blank tag
        {"image": 7, "tag": "黑色衬衫"},                    # 8 an image that is not a string
        {"image": "a.jpg", "tag": ["黑色衬衫"]},            # 9 a tag that is not a string
        {"image": "", "tag": "黑色衬衫"},                   # 10 an empty image
        {"image": "gone.jpg", "tag": "黑色衬衫"},           # 11 no such file
        {"image": "sub", "tag": "黑色衬衫"},                # 12 a folder
        "null",                                            # 13
        {"image": "a.jpg", "tag": "白色衬衫", "group": "g"},  # 14 good
    ])
    products, problems = _read(source)
    assert sorted(tag for p in products for tag in p.tags) == ["白色衬衫", "黑色衬衫"]
    reported = {p.record.split()[1]: p for p in problems}
    assert sorted(reported, key=int) == ["2", "3", "5", "6", "7", "8", "9", "10", "11", "12", "13"]
    for number, problem in reported.items():
        assert problem.where == str(source)
        assert problem.record.startswith(f"line {number}")
        assert "skipped" in problem.what and problem.fix
    assert "malformed JSON" in reported["2"].what and "not a JSON object" in reported["3"].what
    assert "image file not found" in reported["11"].what and "gone.jpg" in reported["11"].record
    assert "relative to the JSON-lines file" in reported["11"].fix


def test_a_missing_path_is_an_error_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmitError) as err:
        read_extra_images(tmp_path / "nope.jsonl", ProblemLog(echo=False))
    message = str(err.value)
    assert "--extra" in message and "nope.jsonl" in message and "no such file" in message
    assert "JSON-lines" in message and '"image"' in message and '"tag"' in message


@pytest.mark.parametrize("lines", [["{bad", {"image": "gone.jpg", "tag": "黑色"}], [""]],
                         ids=["only-bad-lines", "blank"])
def test_nothing_usable_is_an_error_after_the_lines_are_reported(tmp_path: Path, lines: list) -> None:
    source = _jsonl(tmp_path / "images.jsonl", lines)
    problems = ProblemLog(echo=False)
    with pytest.raises(EmitError, match="no labelled image could be used"):
        read_extra_images(source, problems)
    assert len(problems) == sum(1 for line in lines if line)


@pytest.mark.parametrize("encoding", ["gbk", "utf-16"])
def test_a_non_utf8_lines_file_is_an_error_naming_it(tmp_path: Path, encoding: str) -> None:
    source = tmp_path / "images.jsonl"
    source.write_bytes((json.dumps(GOOD, ensure_ascii=False) + "\n").encode(encoding))
    with pytest.raises(EmitError, match="not UTF-8") as err:
        read_extra_images(source, ProblemLog(echo=False))
    assert str(source) in str(err.value)


# Lines that would stop a careless reader with a traceback (RecursionError, ValueError, OSError,
# UnicodeEncodeError): each must be one reported line, as in every other reader of emit:
# ``emit.files.parse_json`` and the products reader's ``_is_file`` handle these there.
NASTY = {
    "nested-too-deep": "[" * 100_000 + "]" * 100_000,
    "huge-number": '{"image": "a.jpg", "tag": "黑色", "n": ' + "9" * 5000 + "}",
    "name-too-long": json.dumps({"image": "x" * 300 + ".jpg", "tag": "黑色"}),
    "nul-in-image": json.dumps({"image": "a\x00.jpg", "tag": "黑色"}),
    "lone-surrogate-image": '{"image": "\\ud800.jpg", "tag": "黑色"}',
}


@pytest.mark.parametrize("line", list(NASTY.values()), ids=list(NASTY))
def test_a_malicious_line_is_one_reported_line_not_a_crash(tmp_path: Path, line: str) -> None:
    _image(tmp_path / "a.jpg")
    source = _jsonl(tmp_path / "images.jsonl", [line, GOOD])
    products, problems = _read(source)
    assert [p.tags for p in products] == [["黑色衬衫"]]
    assert [p.record.split()[:2] for p in problems] == [["line", "1"]]


# ---- product folders and combined files ---------------------------------------------------


def test_product_folders_and_a_combined_file_are_read_as_training_data(tmp_path: Path) -> None:
    root = make_products(tmp_path / "catalogue", 3, seed=4, size=16)
    folders, problems = _read(root)
    assert not problems.items
    want, _ = read_products(root, problems=ProblemLog(echo=False))
    assert [(p.product_id, p.optional_tags, p.tags) for p in folders] == [
        (p.product_id, p.optional_tags, p.tags) for p in want]
    combined = write_final_json(root / "train_all.json", want, {p.product_id: p.tags for p in want})
    from_file, _ = _read(combined)
    assert [(p.product_id, p.tags) for p in from_file] == [(p.product_id, p.tags) for p in want]
    assert all(Path(p.image_path(n)).is_file() for p in from_file for n in p.images)


def test_product_folders_without_tags_are_not_extra_training_data(tmp_path: Path) -> None:
    root = make_products(tmp_path / "unlabelled", 2, seed=4, size=16, with_truth=False)
    with pytest.raises(EmitError, match="no labelled image"):
        read_extra_images(root, ProblemLog(echo=False))


# ---- training with --extra ----------------------------------------------------------------

QUICK = ["-q", "--threads", "1", "--max-epochs", "3", "--bag-size", "2", "--min-count", "1",
         "--hidden", "16", "--val-fraction", "0.5"]
SHIRT = "衬衫"  # a garment word: in the extra tags only, never in the generated products' tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("extra")
    train = make_products(root / "train", 10, seed=1, size=32)
    catalogue = make_products(root / "catalogue", 4, seed=5, size=32)
    lines: list[object] = []
    for folder in sorted(p for p in catalogue.iterdir() if p.is_dir()):
        profile = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
        for item in profile["imgs_tags"]:
            ((name, tag),) = item.items()
            lines.append({"image": f"catalogue/{folder.name}/{name}", "tag": tag + SHIRT,
                          "group": folder.name})
    lines.append({"image": "catalogue/none.jpg", "tag": "黑色" + SHIRT})  # reported, skipped
    jsonl = _jsonl(root / "extra.jsonl", lines)
    more = make_products(root / "more", 2, seed=6, size=32)  # a second --extra: product folders
    return {"root": root, "train": train, "jsonl": jsonl, "more": more, "lines": len(lines) - 1,
            "groups": len({line["group"] for line in lines if isinstance(line, dict) and "group" in line})}


def _train(out: Path, data: dict, *extra: str) -> dict:
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["pair", "train", str(data["train"]), "--out", str(out), "--cache-dir",
                     str(data["root"] / "cache"), *QUICK, *extra])
    assert code == 0
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def models(trained: dict) -> dict:
    root = trained["root"]
    plain = _train(root / "plain", trained)
    with_extra = _train(root / "with-extra", trained, "--extra", str(trained["jsonl"]),
                        "--extra", str(trained["more"]))
    return {"plain": (plain, root / "plain"), "extra": (with_extra, root / "with-extra")}


def test_train_with_extra_records_the_sources_and_counts_them(trained: dict, models: dict) -> None:
    summary, folder = models["extra"]
    more_images = sum(len(json.loads((p / "profile.json").read_text(encoding="utf-8"))["imgs_tags"])
                      for p in trained["more"].iterdir() if p.is_dir())
    assert summary["products"] == 10  # the primary products only
    assert summary["extra_products"] == trained["groups"] + 2
    assert summary["extra_images"] == trained["lines"] + more_images
    meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    assert meta["extra"] == [
        {"path": str(trained["jsonl"].resolve()), "products": trained["groups"], "images": trained["lines"]},
        {"path": str(trained["more"].resolve()), "products": 2, "images": more_images}]
    assert PairingModel.load(folder).extra_sources == meta["extra"]
    # the bad line was reported in the model's problems, naming the file and the line
    problems = json.loads((folder / TRAIN_PROBLEMS).read_text(encoding="utf-8"))
    assert [(p["where"], p["record"].split()[:2]) for p in problems] == [
        (str(trained["jsonl"]), ["line", str(trained["lines"] + 1)])]


def test_train_without_extra_has_no_extra_counts(models: dict) -> None:
    summary, folder = models["plain"]
    assert "extra_products" not in summary and "extra_images" not in summary
    meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    assert meta["extra"] == [] and not (folder / TRAIN_PROBLEMS).exists()


def test_a_label_only_the_extra_tags_have_joins_the_vocabulary(models: dict) -> None:
    with_extra = json.loads((models["extra"][1] / VOCAB_FILE).read_text(encoding="utf-8"))["labels"]
    plain = json.loads((models["plain"][1] / VOCAB_FILE).read_text(encoding="utf-8"))["labels"]
    assert SHIRT in with_extra and SHIRT not in plain
    assert set(plain) <= set(with_extra)
    assert models["extra"][0]["labels"] == len(with_extra) > models["plain"][0]["labels"]


def test_calibration_is_fitted_on_the_primary_products_only(trained: dict, models: dict) -> None:
    plain = PairingModel.load(models["plain"][1])
    with_extra = PairingModel.load(models["extra"][1])
    assert plain.calibration is not None and with_extra.calibration is not None
    assert plain.calibration.products > 0
    # the test means something only if some extra product was held out by some member
    extra_ids = [p.product_id for source in (trained["jsonl"], trained["more"])
                 for p in read_extra_images(source, ProblemLog(echo=False))]
    assert any(in_validation(pid, 0.5, member.seed) for pid in extra_ids for member in with_extra.members)
    assert with_extra.calibration.products == plain.calibration.products


# ---- calibrate(among=...) on hand-made features -------------------------------------------

COLOURS = ["黑色", "白色", "红色", "蓝色"]
DIM = 8
STAND_IN = SimpleNamespace(identity={"name": "stand-in"}, dim=DIM, name="stand-in",
                           segments=[("stand-in", 0, DIM)])


def _features(n: int, prefix: str) -> ProductFeatures:
    rng = np.random.default_rng(len(prefix))
    protos = np.random.default_rng(0).normal(0, 1, (len(COLOURS), DIM)).astype(np.float32) * 2
    products, feats, groups, rows = [], [], [], []
    for k in range(n):
        chosen = rng.permutation(len(COLOURS))[:2]
        tags = [COLOURS[c] for c in chosen]
        product_rows = []
        for s in (0, 1, 0):
            product_rows.append(len(feats))
            feats.append(protos[chosen[s]] + rng.normal(0, 0.3, DIM).astype(np.float32))
            groups.append(k)
        rows.append(product_rows)
        products.append(Product(f"{prefix}{k}", tags, [f"{k}_{i}.jpg" for i in range(3)],
                                [tags[s] for s in (0, 1, 0)]))
    return ProductFeatures(products, np.stack(feats), np.asarray(groups), rows)


def _primary_and_extra() -> tuple[ProductFeatures, ProductFeatures, ProductFeatures]:
    """12 paired products, 12 extra ones, and the features of both as train_pairing takes them."""
    primary, extra = _features(12, "p"), _features(12, "extra:")
    both = ProductFeatures(primary.products + extra.products,
                           np.concatenate([primary.features, extra.features]),
                           np.concatenate([primary.groups, extra.groups + len(primary.products)]),
                           primary.rows + [[r + len(primary.features) for r in rows] for rows in extra.rows])
    return primary, extra, both


def test_calibrate_among_counts_only_the_products_named() -> None:
    primary, extra, both = _primary_and_extra()
    config = PairingConfig(min_count=1, hidden=8, max_epochs=3, patience=2, bag_size=2, val_fraction=0.5,
                           calibration_folds=0)  # the members' own hold-outs
    model = train_pairing(primary.products, config, backbone=STAND_IN, features=both,  # type: ignore[arg-type]
                          extra=extra.products, progress=False)
    inputs = head_inputs(config, both.features, both.groups)
    ids = {p.product_id for p in primary.products}
    held = sum(in_validation(pid, 0.5, m.seed) for pid in ids for m in model.members)
    everyone = calibrate(model, both, inputs)
    assert model.calibration is not None
    assert model.calibration == calibrate(model, both, inputs, among=ids)
    assert model.calibration.products == held > 0
    assert everyone.products > held  # the extra products would have counted


def test_crossfit_calibration_holds_out_each_paired_product_once_and_no_extra() -> None:
    primary, extra, both = _primary_and_extra()
    config = PairingConfig(min_count=1, hidden=8, max_epochs=3, patience=2, bag_size=2, calibration_folds=3)
    model = train_pairing(primary.products, config, backbone=STAND_IN, features=both,  # type: ignore[arg-type]
                          extra=extra.products, progress=False)
    assert model.calibration is not None and model.calibration.products == len(primary.products)
    assert model.calibration.slope >= 0
