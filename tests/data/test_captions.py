"""Caption readers: every format, path resolution, and every bad record reported, skipped and survived.

The bad-input tests put good records around the bad one and check that the good ones are read
intact, that the bad one is skipped (or repaired as documented), and that the Problem names the
file and the line so the user can find it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.data.captions import (
    Caption,
    detect_format,
    group_by_image,
    image_indices,
    read_captions,
    read_clicks,
    read_coco,
    read_csv,
    read_flickr8k,
    read_jsonl,
    read_pascal,
    resolve_image,
)
from emit.problems import EmitError, ProblemLog


def touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")  # the readers only check that the file exists


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jl(**fields: object) -> str:
    return json.dumps(fields, ensure_ascii=False)


def only(problems: ProblemLog, line: int | str) -> str:
    """The one problem about ``line``; returns its text for further checks."""
    record = f"line {line}" if isinstance(line, int) else line
    hits = [p for p in problems if p.record == record]
    assert len(hits) == 1, problems.summary()
    return str(hits[0])


# --------------------------------------------------------------------------- JSON lines


def test_jsonl_reads_fields_and_resolves_paths(tmp_path: Path) -> None:
    data = tmp_path / "retrieval"
    touch(data / "images" / "1.jpg", tmp_path / "pairing" / "p" / "p_0.jpg", tmp_path / "abs.jpg")
    path = write_lines(data / "titles.jsonl", [
        jl(image="images/1.jpg", text="  Navy Blue Shirt ", category="Topwear"),
        "",
        jl(image="./images/1.jpg", text="men shirt", count=2),
        jl(image="../pairing/p/p_0.jpg", text="red dress", category="Dresses"),
        jl(image=str(tmp_path / "abs.jpg"), text="absolute path"),
    ])
    caps, problems = read_jsonl(path)
    assert len(problems) == 0
    assert [c.text for c in caps] == ["Navy Blue Shirt", "men shirt", "red dress", "absolute path"]
    assert [c.line for c in caps] == [1, 3, 4, 5]
    assert [c.count for c in caps] == [1.0, 2.0, 1.0, 1.0]
    assert caps[0].category == "Topwear" and caps[1].category is None
    assert caps[0].image == data / "images" / "1.jpg" and caps[0].image.is_absolute()
    assert caps[0].image_id == caps[1].image_id  # two spellings of one image group together
    assert caps[2].image == tmp_path / "pairing" / "p" / "p_0.jpg"  # '..' is allowed
    assert caps[3].image == tmp_path / "abs.jpg"
    assert caps[0].source == str(path)


def test_jsonl_bad_records_are_reported_and_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    path = write_lines(tmp_path / "c.jsonl", [
        jl(image="a.jpg", text="good one"),
        '{"image": "a.jpg", "text": "broken',
        '["a.jpg", "list"]',
        jl(text="no image"),
        jl(image="a.jpg"),
        jl(image="a.jpg", text="   "),
        jl(image="", text="empty name"),
        jl(image="a\x00.jpg", text="nul byte"),
        jl(image="a.jpg", text=7),
        jl(image="a.jpg", text="bad count", count=-1),
        jl(image="a.jpg", text="zero count", count=0),
        jl(image="a.jpg", text="text count", count="many"),
        jl(image="a.jpg", text="odd category", category=["x"]),
        jl(image="a.jpg", text="good two", category=12),
    ])
    caps, problems = read_jsonl(path)
    assert [c.text for c in caps] == ["good one", "odd category", "good two"]
    assert caps[1].category is None and caps[2].category == "12"
    assert "malformed JSON" in only(problems, 2)
    assert "not an object" in only(problems, 3)
    assert "missing field 'image'" in only(problems, 4)
    assert "missing field 'text'" in only(problems, 5)
    assert "empty" in only(problems, 6)
    assert "empty" in only(problems, 7)
    assert "NUL" in only(problems, 8)
    assert "not a string" in only(problems, 9)
    for line in (10, 11, 12):
        assert "not a positive number" in only(problems, line)
    assert "category dropped" in only(problems, 13)
    assert len(problems) == 12
    assert all(p.where == str(path) and p.fix for p in problems)


def test_not_utf8_or_empty_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(jl(image="a.jpg", text="ok").encode() + b"\n" + '{"text": "café"}'.encode("latin-1"))
    with pytest.raises(EmitError, match=r"latin1\.jsonl: not UTF-8 at line 2"):
        read_jsonl(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(EmitError, match="empty"):
        read_jsonl(empty)
    with pytest.raises(EmitError, match="cannot read"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_bom_and_crlf_and_u2028_inside_text(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    path = tmp_path / "c.jsonl"
    body = jl(image="a.jpg", text="one\u2028two") + "\r\n" + jl(image="a.jpg", text="three") + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    caps, problems = read_jsonl(path)
    assert len(problems) == 0 and [c.text for c in caps] == ["one\u2028two", "three"]


def test_missing_images_reported_once_per_image(tmp_path: Path) -> None:
    touch(tmp_path / "here.jpg")
    path = write_lines(tmp_path / "c.jsonl", [
        jl(image="here.jpg", text="kept"),
        jl(image="gone.jpg", text="first of gone"),
        jl(image="gone.jpg", text="second of gone"),
    ])
    caps, problems = read_jsonl(path)
    assert [c.text for c in caps] == ["kept"]
    text = only(problems, 2)
    assert "gone.jpg not found" in text and "2 caption(s)" in text
    caps, problems = read_jsonl(path, check_images=False)
    assert len(caps) == 3 and len(problems) == 0


def test_all_images_missing_is_an_error_that_suggests_image_root(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data" / "c.jsonl",
                       [jl(image="x.jpg", text="a"), jl(image="y.jpg", text="b")])
    with pytest.raises(EmitError, match="image_root"):
        read_jsonl(path)
    touch(tmp_path / "pics" / "x.jpg", tmp_path / "pics" / "y.jpg")
    caps, problems = read_jsonl(path, image_root=tmp_path / "pics")
    assert len(caps) == 2 and len(problems) == 0
    assert caps[0].image == tmp_path / "pics" / "x.jpg"


def test_resolve_image_rules(tmp_path: Path) -> None:
    assert resolve_image("a/../b.jpg", tmp_path) == tmp_path / "b.jpg"
    assert resolve_image("../up.jpg", tmp_path) == tmp_path.parent / "up.jpg"
    assert resolve_image("/abs/x.jpg", tmp_path) == Path(os.path.abspath("/abs/x.jpg"))
    for bad in ("", "   ", "a\x00b.jpg", None, 3):
        assert resolve_image(bad, tmp_path) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_jsonl_never_crashes_on_junk_lines(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "junk.jsonl"
        path.write_text("\n".join([jl(image="x.jpg", text="anchor"), *lines]), encoding="utf-8")
        caps, problems = read_jsonl(path, check_images=False)
        assert caps[0].text == "anchor"
        assert all(c.text == c.text.strip() and c.text for c in caps)
        assert all(p.where == str(path) for p in problems)


# --------------------------------------------------------------------------- CSV / TSV


def test_csv_and_tsv(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg", tmp_path / "b.jpg")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('\ufeffImage,Text,category\na.jpg,"red, long dress",Dresses\n'
                        'b.jpg,blue shirt,\nb.jpg,too,many,fields\nb.jpg,,Shirts\n', encoding="utf-8")
    caps, problems = read_csv(csv_path)
    assert [(c.text, c.category) for c in caps] == [("red, long dress", "Dresses"), ("blue shirt", None)]
    assert [c.line for c in caps] == [2, 3]
    assert "4 fields" in only(problems, 4)
    assert "text is empty" in only(problems, 5)
    tsv = tmp_path / "c.tsv"
    tsv.write_text("image\ttext\tcount\na.jpg\tred dress\t3\nb.jpg\tblue\tx\n", encoding="utf-8")
    caps, problems = read_csv(tsv)
    assert [(c.text, c.count) for c in caps] == [("red dress", 3.0)]
    assert "not a positive number" in only(problems, 3)


def test_csv_without_needed_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("file,caption\na.jpg,red\n", encoding="utf-8")
    with pytest.raises(EmitError, match=r"c\.csv: no 'image', 'text' column"):
        read_csv(path)


def test_csv_quoted_newline_keeps_line_numbers(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    path = tmp_path / "c.csv"
    path.write_text('image,text\na.jpg,"two\nlines"\na.jpg,\n', encoding="utf-8")
    caps, problems = read_csv(path)
    assert caps[0].text == "two\nlines" and caps[0].line == 2
    assert "empty" in only(problems, 4)


# --------------------------------------------------------------------------- Flickr8k


def flickr(tmp_path: Path) -> tuple[Path, Path]:
    touch(tmp_path / "images" / "1.jpg", tmp_path / "images" / "2.jpg", tmp_path / "images" / "3.jpg")
    tokens = write_lines(tmp_path / "Flickr8k.token.txt", [
        "1.jpg#0\tA dog runs .",
        "1.jpg#1\tA brown dog .",
        "2.jpg#0\tA child climbs .",
        "2.jpg#1 no tab here",
        "2.jpg.1#0\tThe bogus entry of the real file .",
        "3.jpg#0\t  ",
    ])
    split = write_lines(tmp_path / "Flickr_8k.trainImages.txt", ["1.jpg", "2.jpg", "", "9.jpg"])
    return tokens, split


def test_flickr8k_with_split(tmp_path: Path) -> None:
    tokens, split = flickr(tmp_path)
    caps, problems = read_flickr8k(tokens, split)
    assert [c.text for c in caps] == ["A dog runs .", "A brown dog .", "A child climbs ."]
    assert caps[0].image == tmp_path / "images" / "1.jpg"  # images/ beside the token file
    assert "no tab" in only(problems, 4)
    assert "9.jpg" in str(next(p for p in problems if p.record == "9.jpg"))
    assert len(problems) == 2  # 2.jpg.1 and 3.jpg are not in the split: not read, not reported


def test_flickr8k_without_split_and_image_root(tmp_path: Path) -> None:
    tokens, _ = flickr(tmp_path)
    caps, problems = read_flickr8k(tokens, check_images=False)
    assert len(caps) == 4 and {c.image.name for c in caps} == {"1.jpg", "2.jpg", "2.jpg.1"}
    assert "caption is empty" in only(problems, 6)
    caps, problems = read_flickr8k(tokens)
    assert "2.jpg.1 not found" in only(problems, 5)
    other = tmp_path / "other"
    touch(other / "1.jpg")
    caps, _ = read_flickr8k(tokens, image_root=other, check_images=False)
    assert caps[0].image == other / "1.jpg"


def test_flickr8k_split_from_another_data_set_is_an_error(tmp_path: Path) -> None:
    tokens, _ = flickr(tmp_path)
    split = write_lines(tmp_path / "split.txt", ["x.jpg", "y.jpg"])
    with pytest.raises(EmitError, match="none of its 2 images"):
        read_flickr8k(tokens, split)


# --------------------------------------------------------------------------- COCO, Pascal


def test_coco(tmp_path: Path) -> None:
    touch(tmp_path / "imgs" / "a.jpg", tmp_path / "imgs" / "b.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                   {"id": 1, "file_name": "dup.jpg"}, {"file_name": "noid.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 2, "caption": "a dog"},
                        {"image_id": 7, "caption": "unknown image"}, {"image_id": 2},
                        {"caption": "no image id"}, "junk", {"image_id": 1, "caption": "another cat"}],
    }
    path = tmp_path / "ann" / "captions.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    caps, problems = read_coco(path, image_root=tmp_path / "imgs")
    assert [(c.image.name, c.text, c.line) for c in caps] == [
        ("a.jpg", "a cat", 1), ("b.jpg", "a dog", 2), ("a.jpg", "another cat", 7)]
    assert "listed twice" in only(problems, "images[2]")
    assert "lacks" in only(problems, "images[3]")
    assert "not in images" in only(problems, "annotations[2]")
    assert "missing field 'caption'" in only(problems, "annotations[3]")
    assert "missing field 'image_id'" in only(problems, "annotations[4]")
    assert "not an object" in only(problems, "annotations[5]")
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(EmitError, match="not a COCO captions file"):
        read_coco(path)


def test_pascal(tmp_path: Path) -> None:
    data = {
        "2008_1.jpg": {"category": "cat", "captions": ["A cat.", "", "A black cat."]},
        "2008_2.jpg": {"category": "dog"},
        "2008_3.jpg": {"category": "dog", "captions": ["A dog."]},
    }
    path = tmp_path / "pascal.json"
    path.write_text(json.dumps(data))
    caps, problems = read_pascal(path, check_images=False)
    assert [(c.text, c.category, c.line) for c in caps] == [
        ("A cat.", "cat", 1), ("A black cat.", "cat", 3), ("A dog.", "dog", 4)]
    assert "empty" in only(problems, "2008_1.jpg captions[1]")
    assert "captions" in only(problems, "2008_2.jpg")
    path.write_text("[]")
    with pytest.raises(EmitError, match="expected an object"):
        read_pascal(path)


# --------------------------------------------------------------------------- click logs


def test_clicks_aggregate_jsonl_and_tsv(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg", tmp_path / "b.jpg")
    path = write_lines(tmp_path / "clicks.jsonl", [
        jl(query="Red Dress", image="a.jpg", count=2),
        jl(query="red  dress", image="./a.jpg"),
        jl(query="red dress", image="b.jpg", clicks=5),
        jl(query="blue shirt", image="b.jpg", count=0),
        jl(title="neither query nor text", image="a.jpg"),
    ])
    caps, problems = read_clicks(path)
    assert [(c.text, c.image.name, c.count, c.line) for c in caps] == [
        ("Red Dress", "a.jpg", 3.0, 1), ("red dress", "b.jpg", 5.0, 3)]
    assert "not a positive number" in only(problems, 4)
    assert "missing field 'query'" in only(problems, 5)
    tsv = tmp_path / "clicks.tsv"
    tsv.write_text("query\timage\tclicks\nred dress\ta.jpg\t1\nRED DRESS\ta.jpg\t4\nshirt\tb.jpg\t\n")
    caps, problems = read_clicks(tsv)
    assert [(c.text, c.count) for c in caps] == [("red dress", 5.0), ("shirt", 1.0)]
    assert len(problems) == 0


# --------------------------------------------------------------------------- dispatch, grouping


def test_read_captions_detects_each_format(tmp_path: Path) -> None:
    tokens, _ = flickr(tmp_path)
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "images/1.jpg"}],
                                                    "annotations": [{"image_id": 1, "caption": "c"}]}))
    (tmp_path / "pascal.json").write_text(json.dumps({"images/1.jpg": {"category": "x", "captions": ["p"]}}))
    write_lines(tmp_path / "t.jsonl", [jl(image="images/1.jpg", text="t")])
    write_lines(tmp_path / "q.jsonl", [jl(query="q", image="images/1.jpg")])
    (tmp_path / "t.csv").write_text("image,text\nimages/1.jpg,t\n")
    (tmp_path / "q.tsv").write_text("query\timage\nq\timages/1.jpg\n")
    expected = {"Flickr8k.token.txt": "flickr8k", "coco.json": "coco", "pascal.json": "pascal",
                "t.jsonl": "jsonl", "q.jsonl": "clicks", "t.csv": "csv", "q.tsv": "clicks"}
    for name, fmt in expected.items():
        assert detect_format(tmp_path / name) == fmt, name
        caps, _ = read_captions(tmp_path / name)
        assert caps and all(isinstance(c, Caption) for c in caps), name
    caps, _ = read_captions(tokens, split_file=tmp_path / "Flickr_8k.trainImages.txt")
    assert len(caps) == 3
    with pytest.raises(EmitError, match="unknown caption format"):
        read_captions(tmp_path / "t.jsonl", fmt="xml")
    with pytest.raises(EmitError, match="split file"):
        read_captions(tmp_path / "t.jsonl", split_file=tmp_path / "Flickr_8k.trainImages.txt")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(EmitError, match="pass fmt="):
        read_captions(tmp_path / "other.json")


def test_group_by_image_and_image_indices(tmp_path: Path) -> None:
    def cap(name: str, text: str) -> Caption:
        path = tmp_path / name
        return Caption(path, text, None, str(path), "s", 1)

    caps = [cap("a.jpg", "1"), cap("b.jpg", "2"), cap("a.jpg", "3"), cap("c.jpg", "4"), cap("b.jpg", "5")]
    paths, groups = group_by_image(caps)
    assert [p.name for p in paths] == ["a.jpg", "b.jpg", "c.jpg"]
    assert groups == [[0, 2], [1, 4], [3]]
    paths2, of = image_indices(caps)
    assert paths2 == paths and of.tolist() == [0, 1, 0, 2, 1]
    assert group_by_image([]) == ([], [])


def test_clicks_accept_text_as_the_query_field(tmp_path):
    """A query file in the caption layout ({"image", "text"}) reads as a click log."""
    from PIL import Image

    from emit.data.captions import read_clicks

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.jpg")
    (tmp_path / "q.jsonl").write_text(
        '{"image": "a.jpg", "text": "men red shirt", "category": "Topwear"}\n'
        '{"image": "a.jpg", "text": "Men  Red shirt"}\n', encoding="utf-8")
    caps, problems = read_clicks(tmp_path / "q.jsonl")
    assert not problems and len(caps) == 1 and caps[0].text == "men red shirt" and caps[0].count == 2
    (tmp_path / "q.csv").write_text("image,text\na.jpg,men red shirt\n", encoding="utf-8")
    caps, problems = read_clicks(tmp_path / "q.csv")
    assert not problems and [c.text for c in caps] == ["men red shirt"]
