"""read_products: both layouts, and every bad input reported, skipped and survived.

Each bad-input test builds a data set with one good product ("100") beside the bad one
("200") and checks three things: the good product is read intact (the run goes on), the
bad record is skipped or repaired as documented, and the Problem names the file and the
product so the user can find it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from emit.data.products import (
    PROFILE,
    Product,
    read_products,
    read_truth,
    safe_image_name,
    write_final_json,
)
from emit.problems import EmitError, Problem, ProblemLog

LAYOUTS = ("folder", "combined")
COMBINED = "train_all.json"
GOOD_PID = "100"
GOOD = {
    "optional_tags": ["黑色", "白色【加绒】"],
    "imgs_tags": [{"100_0.jpg": "黑色"}, {"100_1.jpg": "白色【加绒】"}],
}

Where = Callable[[str], str]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (180, 20, 20)).save(path)


def _names(profile: Any) -> list[str]:
    return [name for entry in profile.get("imgs_tags", []) for name in entry]


def build(
    tmp_path: Path,
    layout: str,
    profiles: dict[str, Any],
    images: dict[str, list[str]] | None = None,
) -> tuple[Path, Where]:
    """Write ``profiles`` in ``layout`` with their images; return (path to read, pid -> file).

    Images listed in ``images[pid]`` are created (default: every name in the profile);
    for both layouts they live in ``<root>/<pid>/``.
    """
    root = tmp_path / "data"
    root.mkdir()
    for pid, profile in profiles.items():
        folder = root / pid
        folder.mkdir()
        for name in (images or {}).get(pid, _names(profile)):
            _image(folder / name)
        if layout == "folder":
            (folder / PROFILE).write_text(json.dumps(profile, ensure_ascii=False), "utf-8")
    if layout == "combined":
        path = root / COMBINED
        path.write_text(json.dumps(profiles, ensure_ascii=False), "utf-8")
        return path, lambda pid: str(path)
    return root, lambda pid: str(root / pid / PROFILE)


def assert_good_product_read(products: list[Product]) -> Product:
    by_id = {p.product_id: p for p in products}
    assert GOOD_PID in by_id, "the good product must survive the bad one"
    good = by_id[GOOD_PID]
    assert good.images == ["100_0.jpg", "100_1.jpg"]
    assert good.tags == ["黑色", "白色【加绒】"]
    return good


def find_problem(problems: ProblemLog, where: str, pid: str, *fragments: str) -> Problem:
    """The one problem from ``where`` about product ``pid`` whose text has ``fragments``."""
    hits = [
        p for p in problems
        if p.where == where and p.record.split()[0] == pid
        and all(f in f"{p.record} {p.what}" for f in fragments)
    ]
    assert hits, f"no problem at {where} for {pid} with {fragments}; got:\n{problems.summary()}"
    assert all(p.fix for p in hits)  # every problem says how to fix it
    return hits[0]


# --------------------------------------------------------------------------- good input


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_both_layouts(tmp_path: Path, layout: str) -> None:
    other = {"optional_tags": ["红色"], "imgs_tags": [{"300_0.jpg": "红色"}], "title": "T恤"}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "300": other})
    products, problems = read_products(path)
    assert len(problems) == 0, problems.summary()
    assert [p.product_id for p in products] == [GOOD_PID, "300"]
    good = assert_good_product_read(products)
    assert good.optional_tags == ["黑色", "白色【加绒】"]
    assert good.folder == tmp_path / "data" / GOOD_PID
    assert good.image_path("100_0.jpg").is_file()
    assert good.source == where(GOOD_PID)
    assert good.labelled
    assert products[1].extra == {"title": "T恤"}  # unknown keys kept for the round trip


def test_combined_form_with_separate_image_root(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _image(images / GOOD_PID / "100_0.jpg")
    _image(images / GOOD_PID / "100_1.jpg")
    path = tmp_path / "meta" / COMBINED
    path.parent.mkdir()
    path.write_text(json.dumps({GOOD_PID: GOOD}, ensure_ascii=False), "utf-8")
    products, problems = read_products(path, image_root=images)
    assert len(problems) == 0, problems.summary()
    assert assert_good_product_read(products).folder == images / GOOD_PID


def test_prediction_data_with_empty_tags_reads_as_unknown(tmp_path: Path) -> None:
    to_predict = {"optional_tags": ["黑色", "白色"],
                  "imgs_tags": [{"200_0.jpg": ""}, {"200_1.jpg": ""}]}
    path, _ = build(tmp_path, "folder", {GOOD_PID: GOOD, "200": to_predict})
    products, problems = read_products(path)
    assert len(problems) == 0, problems.summary()
    assert_good_product_read(products)
    bare = products[1]
    assert bare.tags == [None, None]
    assert not bare.labelled
    assert bare.images == ["200_0.jpg", "200_1.jpg"]


def test_require_images_false_reads_tag_only_files(tmp_path: Path) -> None:
    # like taobao-tags/test_all.json: profiles, no image files anywhere
    path = tmp_path / "test_all.json"
    path.write_text(json.dumps({GOOD_PID: GOOD, "200": GOOD}, ensure_ascii=False), "utf-8")
    products, problems = read_products(path, require_images=False)
    assert len(problems) == 0, problems.summary()
    assert [p.product_id for p in products] == [GOOD_PID, "200"]
    assert_good_product_read(products)

    # with images required the same file reports every missing image and keeps nothing
    products, problems = read_products(path)
    assert products == []
    find_problem(problems, str(path), GOOD_PID, "100_1.jpg", "not found")
    find_problem(problems, str(path), "200", "none of its images exist")


def test_read_truth_keys_by_product_id(tmp_path: Path) -> None:
    path, _ = build(tmp_path, "combined", {GOOD_PID: GOOD})
    truth = read_truth(path)
    assert list(truth) == [GOOD_PID]
    assert truth[GOOD_PID].tags == ["黑色", "白色【加绒】"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_image_file_is_skipped(tmp_path: Path, layout: str) -> None:
    bad = {"optional_tags": ["黑色", "白色"],
           "imgs_tags": [{"200_0.jpg": "黑色"}, {"200_1.jpg": "白色"}]}
    gone = {"optional_tags": ["黑色"], "imgs_tags": [{"201_0.jpg": "黑色"}]}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": bad, "201": gone},
                        images={"200": ["200_0.jpg"], "201": []})
    products, problems = read_products(path)
    assert_good_product_read(products)
    by_id = {p.product_id: p for p in products}
    assert by_id["200"].images == ["200_0.jpg"] and by_id["200"].tags == ["黑色"]
    assert "201" not in by_id  # no image left at all: product skipped
    find_problem(problems, where("200"), "200", "200_1.jpg", "not found")
    find_problem(problems, where("201"), "201", "none of its images exist")


TO_PREDICT = {"optional_tags": ["黑色", "白色"],
              "imgs_tags": [{"200_0.jpg": ""}, {"200_1.jpg": ""}, {"200_2.jpg": ""}]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_image_in_data_to_predict_stays_in_order(tmp_path: Path, layout: str) -> None:
    # README: a missing image gets "" in final_json.json; it must not vanish from imgs_tags
    gone = {"optional_tags": ["黑色"], "imgs_tags": [{"201_0.jpg": ""}]}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": TO_PREDICT, "201": gone},
                        images={"200": ["200_0.jpg", "200_2.jpg"], "201": []})
    products, problems = read_products(path)
    assert_good_product_read(products)  # labelled: nothing missing, nothing marked
    by_id = {p.product_id: p for p in products}
    assert by_id["200"].images == ["200_0.jpg", "200_1.jpg", "200_2.jpg"]
    assert by_id["200"].missing == {"200_1.jpg"} and by_id[GOOD_PID].missing == set()
    assert by_id["201"].images == ["201_0.jpg"] and by_id["201"].missing == {"201_0.jpg"}
    find_problem(problems, where("200"), "200", "200_1.jpg", "not found", 'gets ""')
    find_problem(problems, where("201"), "201", "201_0.jpg", "not found", 'gets ""')

    out = tmp_path / "final_json.json"
    write_final_json(out, products, {"200": ["黑色", None, "白色"], "201": [None]})
    final = json.loads(out.read_text("utf-8"))
    assert list(final) == [GOOD_PID, "200", "201"]
    assert final["200"]["imgs_tags"] == [{"200_0.jpg": "黑色"}, {"200_1.jpg": ""}, {"200_2.jpg": "白色"}]
    assert final["201"]["imgs_tags"] == [{"201_0.jpg": ""}]


def test_keep_missing_overrides_the_default(tmp_path: Path) -> None:
    labelled = {"optional_tags": ["黑色", "白色"],
                "imgs_tags": [{"300_0.jpg": "黑色"}, {"300_1.jpg": "白色"}]}
    path, _ = build(tmp_path, "folder", {"200": TO_PREDICT, "300": labelled},
                    images={"200": ["200_0.jpg"], "300": ["300_0.jpg"]})
    kept, _ = read_products(path, keep_missing=True)
    assert [(p.images, p.missing) for p in kept] == [
        (["200_0.jpg", "200_1.jpg", "200_2.jpg"], {"200_1.jpg", "200_2.jpg"}),
        (["300_0.jpg", "300_1.jpg"], {"300_1.jpg"})]
    dropped, problems = read_products(path, keep_missing=False)
    assert [(p.images, p.missing) for p in dropped] == [(["200_0.jpg"], set()), (["300_0.jpg"], set())]
    assert all("image skipped" in p.what for p in problems)


def test_data_to_predict_without_any_image_is_an_error(tmp_path: Path) -> None:
    # every image missing is a wrong image root, not a set of bad records: say so once
    path = tmp_path / "test_all.json"
    path.write_text(json.dumps({"200": TO_PREDICT}), "utf-8")
    with pytest.raises(EmitError, match=r"test_all\.json: none of the 3 listed image files exist"
                       r".*--image-root"):
        read_products(path)


def test_unreadable_image_is_not_the_readers_business(tmp_path: Path) -> None:
    # Decoding (and reporting undecodable files) belongs to emit.data.images; the reader
    # only checks that the file exists, so a corrupt JPEG passes here unreported.
    bad = {"optional_tags": ["黑色"], "imgs_tags": [{"200_0.jpg": "黑色"}]}
    path, _ = build(tmp_path, "folder", {GOOD_PID: GOOD, "200": bad}, images={"200": []})
    (path / "200" / "200_0.jpg").write_bytes(b"not a jpeg")
    products, problems = read_products(path)
    assert len(problems) == 0
    assert [p.product_id for p in products] == [GOOD_PID, "200"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tag_not_in_optional_tags_skips_the_image(tmp_path: Path, layout: str) -> None:
    bad = {"optional_tags": ["黑色", "白色"],
           "imgs_tags": [{"200_0.jpg": "黑色"}, {"200_1.jpg": "红色"}, {"200_2.jpg": "白色"}]}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": bad})
    products, problems = read_products(path)
    assert_good_product_read(products)
    kept = products[1]
    assert kept.images == ["200_0.jpg", "200_2.jpg"] and kept.tags == ["黑色", "白色"]
    problem = find_problem(problems, where("200"), "200", "200_1.jpg", "'红色'", "not one of")
    assert "optional_tags" in problem.fix


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tags", [[], None, [""], [" ", 3]], ids=["empty", "missing", "blank",
                                                                  "not-strings"])
def test_empty_optional_tags_skips_the_product(tmp_path: Path, layout: str, tags: Any) -> None:
    bad: dict[str, Any] = {"imgs_tags": [{"200_0.jpg": ""}]}
    if tags is not None:
        bad["optional_tags"] = tags
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": bad})
    products, problems = read_products(path)
    assert_good_product_read(products)
    assert [p.product_id for p in products] == [GOOD_PID]
    find_problem(problems, where("200"), "200", "skipped")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_duplicate_optional_tags_are_dropped(tmp_path: Path, layout: str) -> None:
    bad = {"optional_tags": ["黑色", "白色", "黑色"],
           "imgs_tags": [{"200_0.jpg": "黑色"}, {"200_1.jpg": "白色"}]}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": bad})
    products, problems = read_products(path)
    assert_good_product_read(products)
    kept = products[1]
    assert kept.optional_tags == ["黑色", "白色"]  # first occurrence kept, order preserved
    assert kept.tags == ["黑色", "白色"]
    find_problem(problems, where("200"), "200", "'黑色'", "listed twice")


def test_non_utf8_profile_is_reported_with_file_and_product(tmp_path: Path) -> None:
    path, where = build(tmp_path, "folder", {GOOD_PID: GOOD, "200": GOOD})
    text = json.dumps({"optional_tags": ["黑色"], "imgs_tags": [{"200_0.jpg": "黑色"}]},
                      ensure_ascii=False, indent=1)
    Path(where("200")).write_bytes(text.encode("gbk"))  # a Chinese-locale Windows editor
    products, problems = read_products(path)
    assert [p.product_id for p in products] == [GOOD_PID]
    assert_good_product_read(products)
    find_problem(problems, where("200"), "200", "not UTF-8", "line 3")


def test_malformed_profile_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path, where = build(tmp_path, "folder", {GOOD_PID: GOOD, "200": GOOD})
    Path(where("200")).write_text('{"optional_tags": ["黑色"],\n "imgs_tags": [\n', "utf-8")
    products, problems = read_products(path)
    assert [p.product_id for p in products] == [GOOD_PID]
    assert_good_product_read(products)
    find_problem(problems, where("200"), "200", "malformed JSON", "line 3")


@pytest.mark.parametrize("content", [b'{"100": {', "{}".encode("utf-16"),
                                     '{"100": "黑色"'.encode("gbk")])
def test_unusable_combined_file_raises_naming_it(tmp_path: Path, content: bytes) -> None:
    # one combined file is the whole input: nothing else to go on with, so EmitError
    path = tmp_path / COMBINED
    path.write_bytes(content)
    with pytest.raises(EmitError, match=COMBINED):
        read_products(path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["../x.jpg", "/etc/passwd", "a/b.jpg", "..\\x.jpg", "..",
                                  "C:x.jpg", "C:\\x.jpg", ".. "])
def test_image_names_leaving_the_folder_are_refused(tmp_path: Path, layout: str,
                                                     name: str) -> None:
    bad = {"optional_tags": ["黑色"], "imgs_tags": [{"200_0.jpg": "黑色"}, {name: "黑色"}]}
    path, where = build(tmp_path, layout, {GOOD_PID: GOOD, "200": bad},
                        images={"200": ["200_0.jpg"]})
    _image(tmp_path / "data" / "x.jpg")  # the target exists: refusal is not "not found"
    _image(tmp_path / "data" / "200" / "a" / "b.jpg")
    products, problems = read_products(path)
    assert_good_product_read(products)
    assert products[1].images == ["200_0.jpg"]
    problem = find_problem(problems, where("200"), "200", repr(name), "refused")
    assert "image" in problem.record
    assert not any("not found" in p.what for p in problems)


def test_product_id_leaving_the_image_root_is_refused(tmp_path: Path) -> None:
    # in the combined form the product id becomes a folder name under the image root
    _image(tmp_path / "secret" / "s.jpg")
    root = tmp_path / "data"
    _image(root / GOOD_PID / "100_0.jpg")
    _image(root / GOOD_PID / "100_1.jpg")
    evil = {"optional_tags": ["黑色"], "imgs_tags": [{"s.jpg": "黑色"}]}
    path = root / COMBINED
    path.write_text(json.dumps({GOOD_PID: GOOD, "../secret": evil}, ensure_ascii=False), "utf-8")
    products, problems = read_products(path)
    assert [p.product_id for p in products] == [GOOD_PID]
    find_problem(problems, str(path), "../secret", "refused")


def test_folder_without_profile_and_unusable_roots(tmp_path: Path) -> None:
    path, _ = build(tmp_path, "folder", {GOOD_PID: GOOD})
    (path / "notes").mkdir()
    products, problems = read_products(path)
    assert_good_product_read(products)
    find_problem(problems, str(path / "notes"), "notes", PROFILE)

    (tmp_path / "empty").mkdir()
    with pytest.raises(EmitError, match="no product folders"):
        read_products(tmp_path / "empty")
    with pytest.raises(EmitError, match="no such file"):
        read_products(tmp_path / "nowhere")
    listed = tmp_path / "list.json"
    listed.write_text("[]", "utf-8")
    with pytest.raises(EmitError, match="expected an object"):
        read_products(listed)


# --------------------------------------------------------------------------- writing


def test_write_final_json_round_trip_is_atomic(tmp_path: Path) -> None:
    extra = {**GOOD, "imgs_tags": [{"200_0.jpg": ""}, {"200_1.jpg": ""}], "note": {"k": 1}}
    root, _ = build(tmp_path, "folder", {GOOD_PID: GOOD, "200": extra})
    products, problems = read_products(root)
    assert len(problems) == 0, problems.summary()
    predictions: dict[str, list[str | None]] = {"200": ["白色【加绒】", None]}

    out = tmp_path / "out" / "final_json.json"
    out.parent.mkdir()
    out.write_text("old", "utf-8")  # an older result is replaced, not appended to
    assert write_final_json(out, products, predictions) == out
    assert sorted(os.listdir(out.parent)) == ["final_json.json"]  # no temp file left

    raw = json.loads(out.read_text("utf-8"))
    assert raw["200"]["imgs_tags"] == [{"200_0.jpg": "白色【加绒】"}, {"200_1.jpg": ""}]
    assert raw["200"]["note"] == {"k": 1}  # unknown keys survive

    again, problems = read_products(out, image_root=root)  # images still in the data root
    assert len(problems) == 0, problems.summary()
    by_id = {p.product_id: p for p in again}
    assert by_id[GOOD_PID].tags == ["黑色", "白色【加绒】"]  # not predicted: own tags kept
    assert by_id["200"].tags == ["白色【加绒】", None]
    assert by_id["200"].images == ["200_0.jpg", "200_1.jpg"]
    assert by_id["200"].optional_tags == products[1].optional_tags


def test_write_final_json_failure_keeps_the_old_file(tmp_path: Path) -> None:
    root, _ = build(tmp_path, "folder", {GOOD_PID: GOOD})
    products, _ = read_products(root)
    out = tmp_path / "final_json.json"
    out.write_text('{"old": 1}', "utf-8")
    with pytest.raises(ValueError):  # one tag for two images: refused before writing
        write_final_json(out, products, {GOOD_PID: ["黑色"]})
    assert out.read_text("utf-8") == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "final_json.json"]


# --------------------------------------------------------------------------- safe names

NAMES = st.one_of(
    st.text(alphabet=st.sampled_from(list("./\\:a C\x00 ")), max_size=8),
    st.text(max_size=10),
    st.sampled_from(["..", ".", "../x", "..\\x", "/x", "\\x", "C:", "C:x", "c:\\x", "//s/x",
                     "\\\\s\\x", "x/..", "... ", "x.jpg", "a..b.jpg", "..x.jpg"]),
)


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_safe_image_name_never_leaves_the_folder(name: str) -> None:
    if not safe_image_name(name):
        return
    # POSIX: the resolved path is a direct child of the folder
    folder = Path("/srv/data/600755931529")
    resolved = Path(os.path.normpath(folder / name))
    assert resolved.parent == folder, name
    # Windows: same join rules, drive letters included, and Windows drops trailing dots
    # and spaces, so the name must not collapse to "" / "." / ".."
    wfolder = PureWindowsPath("D:\\data\\600755931529")
    joined = wfolder / name
    assert joined.parent == wfolder and joined.drive == "D:", name
    assert joined.name.rstrip(". ") not in ("", ".", ".."), name


@pytest.mark.parametrize("name", ["600755931529_0.jpg", "黑色.jpg", "a b.png", "..x.jpg",
                                  "x..jpg"])
def test_safe_image_name_accepts_plain_names(name: str) -> None:
    assert safe_image_name(name)
