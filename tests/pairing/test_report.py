"""Pairing report: alignment by image name, problems counted as wrong, baselines, output."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from emit import plots
from emit.data.products import Product, read_truth, write_final_json
from emit.pairing import report as report_mod
from emit.pairing.report import evaluate_pairing, format_report, write_report
from emit.plots import plot_pairing_report as render_png
from emit.problems import EmitError, ProblemLog


def _truth() -> dict[str, Product]:
    return {
        "1": Product("1", ["黑色", "白色"], ["1_0.jpg", "1_1.jpg"], ["黑色", "白色"]),
        "2": Product("2", ["红色", "蓝色", "绿色"], ["2_0.jpg", "2_1.jpg", "2_2.jpg"],
                     ["红色", "蓝色", "绿色"]),
        "3": Product("3", ["黑色", "灰色"], ["3_0.jpg", "3_1.jpg"], ["黑色", "灰色"]),
        "4": Product("4", ["黑色"], ["4_0.jpg"], [None]),  # to predict: not scored
    }


def _profile(product: Product, tags: dict[str, str]) -> dict[str, Any]:
    return {"optional_tags": list(product.optional_tags),
            "imgs_tags": [{name: tag} for name, tag in tags.items()]}


def _pred() -> dict[str, Any]:
    t = _truth()
    return {
        # all right, listed in another order: alignment is by image name
        "1": _profile(t["1"], {"1_1.jpg": "白色", "1_0.jpg": "黑色"}),
        # 2_1 wrong, 2_2 predicts a tag the product does not have
        "2": _profile(t["2"], {"2_0.jpg": "红色", "2_1.jpg": "红色", "2_2.jpg": "紫色"}),
        # 3_1 missing, an image the truth does not have
        "3": _profile(t["3"], {"3_0.jpg": "黑色", "3_9.jpg": "灰色"}),
        "4": _profile(t["4"], {"4_0.jpg": "黑色"}),
        "99": _profile(t["1"], {"1_0.jpg": "黑色"}),  # not in the truth
    }


def _quiet() -> ProblemLog:
    return ProblemLog(echo=False)


def _problem(report: dict[str, Any], where: str, record: str, fragment: str) -> dict[str, str]:
    hits = [p for p in report["problems"]
            if p["where"] == where and p["record"] == record and fragment in p["what"]]
    assert hits, f"no problem {where}/{record}/{fragment}: {report['problems']}"
    return hits[0]


def test_evaluate_scores_and_reports_every_mismatch() -> None:
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet())
    # 7 known images: 1_0 1_1 2_0 3_0 right; 2_1 2_2 3_1 wrong
    assert (rep["images"], rep["correct"]) == (7, 4)
    assert rep["accuracy"] == pytest.approx(4 / 7)
    assert (rep["products"], rep["exact"]) == (3, 1)
    assert rep["exact_match"] == pytest.approx(1 / 3)
    assert rep["unlabelled_products"] == 1 and rep["truth_products"] == 4
    assert rep["per_size"][2] == {"accuracy": 0.75, "exact_match": 0.5, "images": 4,
                                  "products": 2}
    assert rep["per_size"][3]["accuracy"] == pytest.approx(1 / 3)
    assert rep["missing_products"] == []
    # the off-list tag is kept as predicted, so the confusion is visible
    assert rep["confused_pairs"] == [["绿色", "紫色", 1], ["蓝色", "红色", 1]]

    _problem(rep, "predictions", "2 image 2_2.jpg", "'紫色' is not one of optional_tags")
    _problem(rep, "predictions", "3 image 3_1.jpg", "missing from the predictions")
    _problem(rep, "predictions", "3", "not in the truth: ['3_9.jpg']")
    _problem(rep, "predictions", "1 product(s)", "99")
    assert len(rep["problems"]) == 4
    assert rep["baselines"] == {}
    assert rep["versions"]["emit"]


def test_missing_products_and_bad_entries_count_as_wrong() -> None:
    t = _truth()
    pred: dict[str, Any] = {
        "1": {"optional_tags": ["黑色", "白色"],
              "imgs_tags": [{"1_0.jpg": ""}, {"1_1.jpg": 3}, "junk", {"1_0.jpg": "黑色"}]},
        "2": "not a profile",
    }
    rep = evaluate_pairing(pred, t, problems=_quiet())
    assert rep["correct"] == 0 and rep["images"] == 7
    assert rep["missing_products"] == ["3"]
    _problem(rep, "predictions", "3", "product missing")
    _problem(rep, "predictions", "1 image 1_0.jpg", "no tag predicted")
    _problem(rep, "predictions", "1 image 1_1.jpg", "not a string")
    _problem(rep, "predictions", "1 imgs_tags[2]", "not a one-key object")
    _problem(rep, "predictions", "1 image 1_0.jpg", "listed twice")  # first one is used
    _problem(rep, "predictions", "2", "neither a profile")


def test_aligned_tag_lists_are_accepted() -> None:
    # the {pid: [tag per image]} form that write_final_json takes
    pred = {"1": ["黑色", "白色"], "2": ["红色", "蓝色"], "3": ["黑色", "灰色"]}
    rep = evaluate_pairing(pred, _truth(), problems=_quiet())
    assert (rep["correct"], rep["images"]) == (4, 7)
    _problem(rep, "predictions", "2", "2 predicted tags for 3 images")


def test_optional_tags_that_differ_from_the_truth_are_flagged() -> None:
    t = _truth()
    pred = {pid: {"optional_tags": ["别的"], "imgs_tags": [{n: x} for n, x in
                                                          zip(p.images, p.tags, strict=True)]}
            for pid, p in t.items()}
    rep = evaluate_pairing(pred, t, problems=_quiet())
    assert rep["accuracy"] == 1.0  # scored against the truth's own tags
    _problem(rep, "predictions", "1", "optional_tags differ")


def test_baselines_side_by_side() -> None:
    t = _truth()
    colour = {"1": ["黑色", "黑色"], "2": ["红色", "红色", "红色"]}  # one class per product
    rep = evaluate_pairing(_pred(), t, {"colour-baseline": colour}, name="EMIT",
                           problems=_quiet())
    base = rep["baselines"]["colour-baseline"]
    assert (base["correct"], base["images"]) == (2, 7)
    assert base["accuracy"] == pytest.approx(2 / 7)
    assert base["exact_match"] == 0.0
    assert base["missing_products"] == ["3"]
    assert base["per_size"][3]["accuracy"] == pytest.approx(1 / 3)
    _problem(rep, "baseline colour-baseline", "3", "product missing")
    text = format_report(rep)
    assert "EMIT" in text and "colour-baseline" in text
    assert " 57.1%" in text and " 28.6%" in text


def test_end_to_end_from_files(tmp_path: Path) -> None:
    # truth folder with real (tiny) images, predictions written by write_final_json
    root = tmp_path / "val"
    for pid, p in _truth().items():
        if p.labelled:
            (root / pid).mkdir(parents=True)
            for name in p.images:
                Image.new("RGB", (8, 8), (0, 90, 200)).save(root / pid / name)
            profile = p.to_profile()
            (root / pid / "profile.json").write_text(json.dumps(profile, ensure_ascii=False),
                                                     "utf-8")
    truth = read_truth(root)
    assert sorted(truth) == ["1", "2", "3"]
    pred_path = write_final_json(tmp_path / "final_json.json", truth.values(),
                                 {"2": ["红色", "红色", "绿色"]})
    rep = evaluate_pairing(pred_path, truth, problems=_quiet())
    assert (rep["correct"], rep["images"]) == (6, 7)
    assert rep["predictions"] == str(pred_path)
    assert rep["problems"] == []
    # truth given as a path goes through read_truth
    assert evaluate_pairing(pred_path, root, problems=_quiet())["correct"] == 6


def test_unusable_inputs_raise(tmp_path: Path) -> None:
    only_unknown = {"4": _truth()["4"]}
    with pytest.raises(EmitError, match="no known tags"):
        evaluate_pairing({}, only_unknown, problems=_quiet())
    bad = tmp_path / "final_json.json"
    bad.write_text('{"1": {\n', "utf-8")
    with pytest.raises(EmitError, match=r"final_json\.json"):
        evaluate_pairing(bad, _truth(), problems=_quiet())
    listed = tmp_path / "list.json"
    listed.write_text("[]", "utf-8")
    with pytest.raises(EmitError, match="expected an object"):
        evaluate_pairing(listed, _truth(), problems=_quiet())


# --------------------------------------------------------------------------- output


def _report() -> dict[str, Any]:
    colour = {"1": ["黑色", "黑色"], "2": ["红色", "红色", "红色"]}
    return evaluate_pairing(_pred(), _truth(), {"colour-baseline": colour}, problems=_quiet())


def _glyph_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Glyph" in str(w.message)]


@pytest.mark.parametrize(("target", "stem"), [
    ("out", "out/pairing_report"),  # an existing folder
    ("new/", "new/pairing_report"),  # a folder to create, marked by the slash
    ("runs/val.v2", "runs/val.v2"),  # a prefix; its dot is not an extension
    ("runs/val.json", "runs/val"),
])
def test_report_paths_from_folder_or_prefix(tmp_path: Path, target: str, stem: str) -> None:
    (tmp_path / "out").mkdir()
    json_path, png_path = report_mod._out_paths(f"{tmp_path}/{target}")
    assert json_path == tmp_path / f"{stem}.json"
    assert png_path == tmp_path / f"{stem}.png"


def test_write_report_json_and_png(tmp_path: Path) -> None:
    rep = _report()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        json_path, png_path = write_report(rep, f"{tmp_path}/report/")
    assert _glyph_warnings(caught) == []  # suppressed whether or not a CJK font exists
    assert (json_path.name, png_path.name) == ("pairing_report.json", "pairing_report.png")
    assert sorted(p.name for p in json_path.parent.iterdir()) == [
        "pairing_report.json", "pairing_report.png"]  # no temp files left behind
    saved = json.loads(json_path.read_text("utf-8"))
    assert saved == json.loads(json.dumps(rep))
    assert "紫色" in json_path.read_text("utf-8")  # tags stay readable UTF-8
    with Image.open(png_path) as img:
        assert img.format == "PNG" and img.size[0] > 500 and img.size[1] > 400


@pytest.mark.parametrize("font", [None, "DejaVu Sans"], ids=["no-cjk-font", "font-found"])
def test_png_renders_with_and_without_a_cjk_font(monkeypatch: pytest.MonkeyPatch,
                                                  font: str | None) -> None:
    # both branches, whatever this machine has installed (None: the graceful fallback)
    monkeypatch.setattr(plots, "cjk_font", lambda: font)
    rep = _report()
    rep["confused_pairs"] = [["黑色", "白色【加绒】", 3]] * 40  # long, many labels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = render_png(rep)
    assert data.startswith(b"\x89PNG")
    assert _glyph_warnings(caught) == []


def test_png_renders_empty_and_reloaded_reports() -> None:
    rep = json.loads(json.dumps(_report()))  # per_size keys are strings after JSON
    assert render_png(rep).startswith(b"\x89PNG")
    empty = {**rep, "confused_pairs": [], "per_size": {}, "baselines": {}}
    assert render_png(empty).startswith(b"\x89PNG")


def test_cjk_font_is_a_known_font_or_none() -> None:
    from matplotlib import font_manager

    font = plots.cjk_font()
    assert font is None or font in {f.name for f in font_manager.fontManager.ttflist}


def test_format_report_summary() -> None:
    rep = evaluate_pairing({"1": _pred()["1"]}, _truth(), problems=_quiet())
    text = format_report(rep)
    assert text.splitlines()[0].startswith("Pairing: 3 products, 7 images scored")
    assert "method" in text and "Acc  28.6%" in text and "EM  33.3%" in text
    assert "by size: 2: 50.0% (n=2)  3: 0.0% (n=1)" in text
    assert "missing products: 2 (e.g. 2, 3)" in text
    assert "problems: 2" in text
    # the same text from the JSON the report was saved as
    assert format_report(json.loads(json.dumps(rep))) == text
    full = format_report(_report())
    assert "top confusions: 绿色 -> 紫色 x1; 蓝色 -> 红色 x1" in full


# --------------------------------------------------------------------------- confidence

# ranked 1 (0.95, right), 3 (0.6, 1 of 2 right), 2 (0.4, 1 of 3 right); 4 is unscored and 99
# is not in the truth: both ignored
CONFIDENCE = {"1": 0.95, "2": 0.4, "3": 0.6, "4": 0.99, "99": 1.0}


def test_confidence_coverage_calibration_and_risk() -> None:
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=CONFIDENCE)
    conf = rep["confidence"]
    assert conf["source"] == "confidence" and conf["products_without_confidence"] == 0
    cov = {row["coverage"]: row for row in conf["coverage"]}
    assert sorted(cov) == [0.5, 0.7, 0.9, 1.0]
    # 50 %: ceil(1.5) = 2 products, 1 and 3: 3 of 4 images right, 1 of 2 products
    assert cov[0.5] == {"coverage": 0.5, "products": 2, "images": 4, "accuracy": 0.75,
                        "exact_match": 0.5, "min_confidence": 0.6}
    # 70 %: ceil(2.1) = 3 products, all of them: the overall scores
    for level in (0.7, 0.9, 1.0):
        assert cov[level]["products"] == 3 and cov[level]["images"] == 7
        assert cov[level]["accuracy"] == pytest.approx(4 / 7) == rep["accuracy"]
        assert cov[level]["exact_match"] == pytest.approx(1 / 3)
        assert cov[level]["min_confidence"] == 0.4
    cal = conf["calibration"]
    # one product per bin: gaps |1 - 0.95|, |0 - 0.4|, |0 - 0.6|
    assert cal["ece"] == pytest.approx((0.05 + 0.4 + 0.6) / 3)
    assert cal["mce"] == pytest.approx(0.6)
    assert cal["brier"] == pytest.approx((0.05**2 + 0.4**2 + 0.6**2) / 3)
    rc = conf["risk_coverage"]
    assert rc["risk"] == pytest.approx([0.0, 1 / 2, 2 / 3])
    assert rc["image_risk"] == pytest.approx([0.0, 1 / 4, 3 / 7])
    assert rc["aurc"] == pytest.approx(7 / 18)
    assert len(rep["problems"]) == 4  # the predictions' own, as without confidences
    assert "confidence" not in evaluate_pairing(_pred(), _truth(), problems=_quiet())


def test_confidence_from_the_file_beside_the_predictions(tmp_path: Path) -> None:
    pred = tmp_path / "final_json.json"
    path = report_mod.confidence_path(pred)
    assert path == tmp_path / "final_json.confidence.json"
    assert report_mod.confidence_path("runs/v2.final.json").name == "v2.final.confidence.json"
    path.write_text(json.dumps(CONFIDENCE), "utf-8")
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=path)
    assert rep["confidence"]["source"] == str(path)
    by_mapping = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=CONFIDENCE)
    assert rep["confidence"]["coverage"] == by_mapping["confidence"]["coverage"]
    assert evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=str(path)
                            )["confidence"]["calibration"] == by_mapping["confidence"]["calibration"]


def test_bad_and_missing_confidences_are_reported_and_ranked_last(tmp_path: Path) -> None:
    path = tmp_path / "final_json.confidence.json"
    # JSON allows NaN; true is no probability either; 4 is unscored but still checked
    path.write_text('{"1": "high", "2": NaN, "3": 1.5, "4": true}', "utf-8")
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=path)
    where = str(path)
    _problem(rep, where, "1", "confidence high is not a number in [0, 1]; skipped")
    _problem(rep, where, "2", "confidence nan is not")
    _problem(rep, where, "3", "confidence 1.5 is not")
    _problem(rep, where, "4", "confidence True is not")
    missing = _problem(rep, where, "3 product(s)", "no confidence (e.g. 1, 2, 3)")
    assert "confidence 0" in missing["what"] and missing["fix"]
    assert len(rep["problems"]) == 4 + 5
    conf = rep["confidence"]
    assert conf["products_without_confidence"] == 3
    # all at confidence 0: ranked by id, so 50 % keeps 1 and 2: 3 of 5 images, 1 of 2 products
    half = conf["coverage"][0]
    assert (half["products"], half["images"], half["accuracy"], half["exact_match"],
            half["min_confidence"]) == (2, 5, 0.6, 0.5, 0.0)
    assert conf["calibration"]["bins"] == [{"lo": 0.0, "hi": 0.1, "count": 3,
                                            "mean_confidence": 0.0, "accuracy": pytest.approx(1 / 3)}]


def test_confidence_file_that_is_not_an_object_raises(tmp_path: Path) -> None:
    path = tmp_path / "final_json.confidence.json"
    path.write_text("[0.5, 0.9]", "utf-8")
    with pytest.raises(EmitError, match=r"final_json\.confidence\.json: expected an object"):
        evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=path)
    path.write_text('{"1": ', "utf-8")
    with pytest.raises(EmitError, match=r"final_json\.confidence\.json"):
        evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=path)


def test_format_report_shows_coverage_and_calibration() -> None:
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=CONFIDENCE)
    text = format_report(rep)
    lines = text.splitlines()
    assert "  most confident  50%: 2 products  Acc  75.0%  EM  50.0%  (confidence >= 0.60)" in lines
    assert "  most confident  70%: 3 products  Acc  57.1%  EM  33.3%  (confidence >= 0.40)" in lines
    assert "  most confident 100%: 3 products  Acc  57.1%  EM  33.3%  (confidence >= 0.40)" in lines
    # ECE (0.05 + 0.4 + 0.6) / 3, Brier 0.5225 / 3, AURC 7 / 18
    assert "  calibration: ECE 0.350, Brier 0.174, AURC 0.389" in lines
    assert format_report(json.loads(json.dumps(rep))) == text
    assert "most confident" not in format_report(_report())


def test_png_with_a_risk_coverage_panel(tmp_path: Path) -> None:
    rep = evaluate_pairing(_pred(), _truth(), problems=_quiet(), confidence=CONFIDENCE)
    data = render_png(json.loads(json.dumps(rep)))
    assert data.startswith(b"\x89PNG")
    plain = render_png(_report())
    assert plain.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as wide, Image.open(io.BytesIO(plain)) as narrow:
        assert narrow.size == (1200, 900)  # as before: no extra panel without confidences
        assert wide.size == (1800, 900)  # one more column for the curve
    # a confidence section with nothing scored still renders
    empty = {**rep, "confidence": {**rep["confidence"], "risk_coverage": {
        "coverage": [], "risk": [], "image_risk": [], "aurc": None}}}
    assert render_png(empty).startswith(b"\x89PNG")
    json_path, png_path = write_report(rep, tmp_path / "val")
    assert json.loads(json_path.read_text("utf-8"))["confidence"]["coverage"][0]["products"] == 2
    assert png_path.read_bytes() == data
