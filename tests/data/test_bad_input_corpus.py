"""A bad-input corpus for every reader, generated here (nothing is shipped as files).

Every case writes a small data set in one format with a bad record between good ones (a good
record after the bad one catches a reader that swallows the rest of the file), reads it, and
checks one of four outcomes:

* ``Skip``: the bad record is reported -- the problem names the file, the record and a fix --
  and every good record still comes through, in order;
* ``SkipImage``: (products) the product stays, without the one bad image;
* ``Accept``: odd but valid; the bad record comes through beside the good ones, nothing crashes;
* ``Refuse``: the whole file is unusable: one :class:`EmitError` naming the file and the fix.

The classes: deep nesting, huge fields, odd encodings (UTF-16 with a BOM, Latin-1, NUL bytes,
lone surrogates escaped in JSON), unclosed quotes, empty files, wrong types, long names and
symbolic links into and out of the folder. docs/bad-input.md tabulates the outcomes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from emit.data.captions import (
    read_captions,
    read_clicks,
    read_coco,
    read_csv,
    read_flickr8k,
    read_jsonl,
    read_pascal,
)
from emit.data.products import PROFILE, read_products
from emit.files import MAX_JSON_DEPTH
from emit.problems import EmitError, ProblemLog

DEEP = 1000  # brackets: past Python's parser (RecursionError before the fix)
PARSEABLE_DEEP = MAX_JSON_DEPTH + 50  # parses, but walking it recursively later is not safe
HUGE = 3_000_000  # characters: a multi-megabyte field
LONG_OK = "n" * 246 + ".jpg"  # 250 bytes: a file name the file system accepts
LONG_BAD = "n" * 296 + ".jpg"  # 300 bytes: over the 255-byte limit of a name part
MAX_MESSAGE = 2000  # a problem quotes the bad value, shortened, never megabytes of it


@dataclass(frozen=True)
class Skip:
    record: str  # Problem.record (its first word for products)
    fragment: str  # in the problem's text


@dataclass(frozen=True)
class SkipImage:
    image: str
    fragment: str


@dataclass(frozen=True)
class Accept:
    check: Callable[[str], bool] | None = None  # on the bad record's text (captions) or tag


@dataclass(frozen=True)
class Refuse:
    fragment: str


Expect = Skip | SkipImage | Accept | Refuse


def deep(n: int) -> str:
    return "[" * n + "]" * n


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # caption readers only check that the file exists


def check_messages(problems: ProblemLog, path: Path) -> None:
    for p in problems:
        assert p.fix, p
        assert len(str(p)) < MAX_MESSAGE + len(str(path)), str(p)[:300]
        str(p).encode("utf-8")  # printable and writable to a problems file: no lone surrogate


# --------------------------------------------------------------------------- caption files

GOOD = ["good zero", "good one", "good two"]
IMAGES = ["g0.jpg", "g1.jpg", "g2.jpg"]


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # as written: a Latin-1 case must stay Latin-1


def _jsonl(fields: dict) -> str:
    return dumps(fields)


# per format: the header line (or None), how a good record is written, the reader
LINE_FORMATS: dict[str, tuple[str | None, Callable[[int], str], Callable[..., tuple]]] = {
    "jsonl": (None, lambda i: _jsonl({"image": IMAGES[i], "text": GOOD[i]}), read_jsonl),
    "csv": ("image,text,category", lambda i: f"{IMAGES[i]},{GOOD[i]},Tops", read_csv),
    "flickr8k": (None, lambda i: f"{IMAGES[i]}#0\t{GOOD[i]}", read_flickr8k),
    "clicks-jsonl": (None, lambda i: _jsonl({"query": GOOD[i], "image": IMAGES[i], "count": 2}), read_clicks),
    "clicks-csv": ("query,image,count", lambda i: f"{GOOD[i]},{IMAGES[i]},2", read_clicks),
}
SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "flickr8k": ".token.txt", "clicks-jsonl": ".jsonl",
          "clicks-csv": ".csv", "coco": ".json", "pascal": ".json"}


def bad_line(fmt: str, image: str = "g9.jpg", text: str = "bad one", raw_text: str | None = None) -> str:
    """A record in ``fmt`` whose text is ``text`` (or the raw JSON ``raw_text``)."""
    if fmt == "jsonl":
        return f'{{"image": {dumps(image)}, "text": {raw_text or dumps(text)}}}'
    if fmt == "clicks-jsonl":
        return f'{{"query": {raw_text or dumps(text)}, "image": {dumps(image)}}}'
    if fmt == "csv":
        return f"{image},{text},Tops"
    if fmt == "clicks-csv":
        return f"{text},{image},1"
    return f"{image}#0\t{text}"


def write_line_file(tmp: Path, fmt: str, bad: str | bytes | None) -> tuple[Path, int]:
    """good 0, the bad line, good 1, good 2; returns the file and the bad line's number."""
    header, good, _ = LINE_FORMATS[fmt]
    head = [header] if header else []
    lines = [*head, good(0)]
    bad_no = len(lines) + 1
    raw = ("\n".join(lines) + "\n").encode()
    raw += bad if isinstance(bad, bytes) else (bad + "\n").encode() if bad is not None else b""
    raw += ("\n".join([good(1), good(2)]) + "\n").encode()
    path = tmp / f"data{SUFFIX[fmt]}"
    path.write_bytes(raw)
    return path, bad_no


def caption_files(tmp: Path) -> None:
    for name in [*IMAGES, "g9.jpg"]:
        touch(tmp / name)


ReadResult = tuple[list, ProblemLog]


def line_cases() -> list:
    """(format, case id, writer(tmp, fmt) -> (path, bad line), expectation(bad line))."""
    cases = []

    def add(fmts: str, cid: str, make: Callable[[Path, str], tuple[Path, int]],
            expect: Callable[[int], Expect]) -> None:
        for fmt in fmts.split():
            cases.append(pytest.param(fmt, make, expect, id=f"{fmt}-{cid}"))

    def line(build: Callable[[str], str | bytes]) -> Callable[[Path, str], tuple[Path, int]]:
        return lambda tmp, fmt: write_line_file(tmp, fmt, build(fmt))

    json_fmts, plain_fmts = "jsonl clicks-jsonl", "csv clicks-csv flickr8k"
    csv_fmts = "csv clicks-csv"
    # deep nesting
    add(json_fmts, "deep-nesting", line(lambda f: bad_line(f, raw_text=deep(DEEP))),
        lambda n: Skip(f"line {n}", "nested deeper than Python's parser allows"))
    add(json_fmts, "deep-but-parseable", line(lambda f: bad_line(f, raw_text=deep(PARSEABLE_DEEP))),
        lambda n: Skip(f"line {n}", "nested deeper"))
    add(plain_fmts, "brackets-are-text", line(lambda f: bad_line(f, text=deep(DEEP))),
        lambda n: Accept(lambda t: t == deep(DEEP)))
    add(json_fmts, "huge-number", line(lambda f: bad_line(f, raw_text="1" * 5000)),
        lambda n: Skip(f"line {n}", "digits"))
    # huge fields
    add(f"{json_fmts} flickr8k", "huge-text", line(lambda f: bad_line(f, text="x" * HUGE)),
        lambda n: Accept(lambda t: len(t) == HUGE))
    add(csv_fmts, "huge-text", line(lambda f: bad_line(f, text="x" * HUGE)),
        lambda n: Skip(f"line {n}", "longer than 131,072 characters"))
    add(f"{json_fmts} flickr8k", "huge-image-name", line(lambda f: bad_line(f, image="i" * HUGE)),
        lambda n: Skip(f"line {n}", "not found"))
    add(csv_fmts, "huge-image-name", line(lambda f: bad_line(f, image="i" * HUGE)),
        lambda n: Skip(f"line {n}", "longer than 131,072 characters"))
    # odd encodings
    add(f"{json_fmts} {plain_fmts}", "utf16-bom",
        lambda tmp, fmt: _rewrite(write_line_file(tmp, fmt, None), "utf-16"),
        lambda n: Refuse("UTF-16"))
    add(f"{json_fmts} {plain_fmts}", "latin1",
        line(lambda f: bad_line(f, text="café").encode("latin-1") + b"\n"),
        lambda n: Refuse(f"not UTF-8 at line {n}"))
    add(json_fmts, "nul-byte", line(lambda f: bad_line(f, text="bad\x00one").replace("\\u0000", "\x00")),
        lambda n: Skip(f"line {n}", "malformed JSON"))
    add(plain_fmts, "nul-byte", line(lambda f: bad_line(f, text="bad\x00one")),
        lambda n: Accept(lambda t: t == "bad\x00one"))
    add(f"{json_fmts} {plain_fmts}", "nul-in-image-name", line(lambda f: bad_line(f, image="g9\x00.jpg")),
        lambda n: Skip(f"line {n}", "NUL"))
    add(json_fmts, "lone-surrogate", line(lambda f: bad_line(f, raw_text='"bad \\ud800 one"')),
        lambda n: Skip(f"line {n}", "lone surrogate"))
    add(json_fmts, "surrogate-pair", line(lambda f: bad_line(f, raw_text='"bad \\ud83d\\ude00 one"')),
        lambda n: Accept(lambda t: t == "bad \U0001f600 one"))
    add(plain_fmts, "escape-is-text", line(lambda f: bad_line(f, text="bad \\ud800 one")),
        lambda n: Accept(lambda t: t == "bad \\ud800 one"))
    # unclosed quotes
    add(json_fmts, "unclosed-quote", line(lambda f: bad_line(f, raw_text='"bad one')),
        lambda n: Skip(f"line {n}", "malformed JSON"))
    add(csv_fmts, "unclosed-quote", line(lambda f: bad_line(f, text='"bad one')),
        lambda n: Skip(f"line {n}", f"unclosed quote: a quoted field opened on line {n}"))
    add("csv", "unclosed-quote-in-image", line(lambda f: '"g9.jpg,bad one,Tops'),
        lambda n: Skip(f"line {n}", "unclosed quote"))
    add("flickr8k", "quote-is-text", line(lambda f: bad_line(f, text='"bad one')),
        lambda n: Accept(lambda t: t == '"bad one'))
    # wrong types
    add(json_fmts, "text-is-a-number", line(lambda f: bad_line(f, raw_text="42")),
        lambda n: Skip(f"line {n}", "not a string"))
    add(json_fmts, "line-is-a-list", line(lambda f: '["g9.jpg", "bad one"]'),
        lambda n: Skip(f"line {n}", "not an object"))
    add("clicks-jsonl", "count-is-a-list",
        line(lambda f: '{"query": "bad", "image": "g9.jpg", "count": [1]}'),
        lambda n: Skip(f"line {n}", "not a positive number"))
    add("clicks-csv", "count-is-text", line(lambda f: "bad one,g9.jpg,many"),
        lambda n: Skip(f"line {n}", "not a positive number"))
    add("flickr8k", "no-tab", line(lambda f: "g9.jpg#0 bad one"),
        lambda n: Skip(f"line {n}", "no tab"))
    # long names
    add(f"{json_fmts} {plain_fmts}", "long-name-ok", _long_name(LONG_OK),
        lambda n: Accept(lambda t: t == "bad one"))
    add(f"{json_fmts} {plain_fmts}", "long-name-too-long", _long_name(LONG_BAD),
        lambda n: Skip(f"line {n}", "not found"))
    # symbolic links (the CLI follows them: the user chose them)
    add(f"{json_fmts} {plain_fmts}", "image-symlink-out", _image_link(outside=True),
        lambda n: Accept(lambda t: t == "bad one"))
    add(f"{json_fmts} {plain_fmts}", "image-symlink-dangling", _image_link(outside=False),
        lambda n: Skip(f"line {n}", "not found"))
    return cases


def _rewrite(made: tuple[Path, int], encoding: str) -> tuple[Path, int]:
    path, n = made
    path.write_bytes(path.read_text("utf-8").encode(encoding))
    return path, n


def _long_name(name: str) -> Callable[[Path, str], tuple[Path, int]]:
    def make(tmp: Path, fmt: str) -> tuple[Path, int]:
        if len(name.encode()) <= 255:
            touch(tmp / name)
        else:
            with pytest.raises(OSError):  # the premise: such a name cannot exist
                touch(tmp / name)
        return write_line_file(tmp, fmt, bad_line(fmt, image=name))
    return make


def _image_link(*, outside: bool) -> Callable[[Path, str], tuple[Path, int]]:
    def make(tmp: Path, fmt: str) -> tuple[Path, int]:
        target = tmp.parent / f"{tmp.name}-outside" / "real.jpg"
        if outside:
            touch(target)
        (tmp / "link.jpg").symlink_to(target)
        return write_line_file(tmp, fmt, bad_line(fmt, image="link.jpg"))
    return make


def read_any(fmt: str, path: Path, reader: Callable[..., ReadResult]) -> ReadResult:
    return reader(path, problems=ProblemLog(echo=False))


def check_captions(path: Path, result: ReadResult, expect: Expect) -> None:
    caps, problems = result
    texts = [c.text for c in caps]
    check_messages(problems, path)
    if isinstance(expect, Accept):
        assert len(texts) == 4, problems.summary()
        assert texts[0] == GOOD[0] and texts[2:] == GOOD[1:]
        assert expect.check is None or expect.check(texts[1]), texts[1][:100]
        return
    assert isinstance(expect, Skip)
    assert texts == GOOD, problems.summary()  # every good record, the one after the bad included
    hits = [p for p in problems if p.record == expect.record and expect.fragment in p.what]
    assert hits, f"no problem {expect} in:\n{problems.summary()}"
    assert all(p.where == str(path) for p in hits)


@pytest.mark.parametrize(("fmt", "make", "expect"), line_cases())
def test_line_based_caption_files(tmp_path: Path, fmt: str, make, expect) -> None:
    caption_files(tmp_path)
    path, n = make(tmp_path, fmt)
    expected = expect(n)
    reader = LINE_FORMATS[fmt][2]
    if isinstance(expected, Refuse):
        with pytest.raises(EmitError) as info:
            read_any(fmt, path, reader)
        assert str(path) in str(info.value) and expected.fragment in str(info.value)
        assert "re-save the file as UTF-8" in str(info.value)
        return
    check_captions(path, read_any(fmt, path, reader), expected)


@pytest.mark.parametrize("fmt", list(LINE_FORMATS))
def test_empty_caption_files_are_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty{SUFFIX[fmt]}"
    for content in (b"", b"\n\n"):
        path.write_bytes(content)
        with pytest.raises(EmitError, match="empty") as info:
            LINE_FORMATS[fmt][2](path)
        assert str(path) in str(info.value)


def test_a_deep_first_line_is_reported_by_format_detection(tmp_path: Path) -> None:
    caption_files(tmp_path)
    path = tmp_path / "first.jsonl"
    path.write_text(bad_line("jsonl", raw_text=deep(DEEP)) + "\n" + _jsonl({"image": "g0.jpg", "text": "ok"}))
    caps, problems = read_captions(path, problems=ProblemLog(echo=False))
    assert [c.text for c in caps] == ["ok"]
    assert "nested deeper" in next(p.what for p in problems if p.record == "line 1")


def test_caption_file_reached_through_a_symlink(tmp_path: Path) -> None:
    caption_files(tmp_path)
    real, _ = write_line_file(tmp_path, "jsonl", None)
    link = tmp_path.parent / f"{tmp_path.name}-link.jsonl"
    link.symlink_to(real)
    # relative image paths resolve against the link's folder: here another folder, so the
    # images are missing and the message says how to point at them
    with pytest.raises(EmitError, match="image_root"):
        read_jsonl(link)
    caps, _ = read_jsonl(link, image_root=tmp_path)
    assert [c.text for c in caps] == GOOD
    dangling = tmp_path / "gone.jsonl"
    dangling.symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(EmitError, match="cannot read"):
        read_jsonl(dangling)


# --------------------------------------------------------------------------- CSV recovery


def test_unclosed_quote_is_found_and_the_rest_of_the_file_read(tmp_path: Path) -> None:
    # the case: 41 rows in, 2 captions out, nothing reported
    rows = [f"img{i}.jpg,caption {i}" for i in range(41)]
    rows[1] = 'img1.jpg,"caption 1'
    for i in range(41):
        touch(tmp_path / f"img{i}.jpg")
    path = tmp_path / "c.csv"
    path.write_text("image,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    caps, problems = read_csv(path, problems=ProblemLog(echo=False))
    assert [c.text for c in caps] == [f"caption {i}" for i in range(41) if i != 1]
    assert [c.line for c in caps] == [i + 2 for i in range(41) if i != 1]
    (problem,) = problems
    assert problem.record == "line 3" and "opened on line 3" in problem.what
    assert "resumes on line 4" in problem.what
    assert "never closed" in problem.what and problem.fix


def test_a_stray_quote_later_on_does_not_hide_the_rows_between(tmp_path: Path) -> None:
    # the unclosed quote on line 3 is "closed" by the quote on line 5: lines 4-5 would be lost
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        touch(tmp_path / name)
    path = tmp_path / "c.csv"
    path.write_text('image,text\na.jpg,fine\nb.jpg,"broken\nc.jpg,lost one\nd.jpg,"quoted, fine"\n'
                    'a.jpg,last\n', encoding="utf-8")
    caps, problems = read_csv(path, problems=ProblemLog(echo=False))
    assert [(c.text, c.line) for c in caps] == [("fine", 2), ("lost one", 4), ("quoted, fine", 5),
                                                ("last", 6)]
    assert [p.record for p in problems] == ["line 3"]


def test_a_quoted_caption_may_hold_a_line_break(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    path = tmp_path / "c.csv"
    path.write_text('image,text,category\na.jpg,"two\nlines",Tops\na.jpg,"three\nmore\nlines",Tops\n'
                    'a.jpg,after,Tops\n', encoding="utf-8")
    caps, problems = read_csv(path, problems=ProblemLog(echo=False))
    assert [(c.text, c.line) for c in caps] == [("two\nlines", 2), ("three\nmore\nlines", 4), ("after", 7)]
    assert len(problems) == 0, problems.summary()


def test_old_mac_line_endings_still_read(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    path = tmp_path / "c.csv"
    path.write_bytes(b"image,text\ra.jpg,one\ra.jpg,two\r")
    caps, problems = read_csv(path, problems=ProblemLog(echo=False))
    assert [(c.text, c.line) for c in caps] == [("one", 2), ("two", 3)]
    assert len(problems) == 0


# --------------------------------------------------------------------------- COCO and Pascal


def coco_data(bad_caption: str = '"bad one"', bad_image: str = '"g9.jpg"') -> str:
    """COCO captions; the bad record is annotations[1], its image images[3]. Raw JSON pieces."""
    images = [f'{{"id": {i}, "file_name": "{name}"}}' for i, name in enumerate(IMAGES)]
    images.append(f'{{"id": 9, "file_name": {bad_image}}}')
    anns = [f'{{"image_id": {i}, "caption": "{text}"}}' for i, text in enumerate(GOOD)]
    anns.insert(1, f'{{"image_id": 9, "caption": {bad_caption}}}')
    return f'{{"images": [{", ".join(images)}], "annotations": [{", ".join(anns)}]}}'


def pascal_data(bad_caption: str = '"bad one"', bad_entry: str | None = None) -> str:
    """Pascal sentences; the bad record is the entry of g9.jpg, between g0 and g1."""
    entry = bad_entry or f'{{"category": "cat", "captions": [{bad_caption}]}}'
    parts = [f'"{IMAGES[0]}": {{"category": "cat", "captions": ["{GOOD[0]}"]}}', f'"g9.jpg": {entry}']
    parts += [f'"{name}": {{"category": "cat", "captions": ["{text}"]}}'
              for name, text in zip(IMAGES[1:], GOOD[1:], strict=True)]
    return "{" + ", ".join(parts) + "}"


JSON_READERS = {"coco": read_coco, "pascal": read_pascal}
COCO_RECORD, PASCAL_RECORD = "annotations[1]", "g9.jpg captions[0]"


def json_cases() -> list:
    cases = []

    def add(fmt: str, cid: str, content: str | bytes, expect: Expect) -> None:
        cases.append(pytest.param(fmt, content, expect, id=f"{fmt}-{cid}"))

    for fmt, data, record in (("coco", coco_data, COCO_RECORD), ("pascal", pascal_data, PASCAL_RECORD)):
        add(fmt, "deep-nesting", data(bad_caption=deep(DEEP)), Refuse("nested deeper than Python's parser"))
        add(fmt, "deep-but-parseable", data(bad_caption=deep(PARSEABLE_DEEP)), Refuse("nested deeper"))
        add(fmt, "huge-number", data(bad_caption="1" * 5000), Refuse("digits"))
        add(fmt, "huge-caption", data(bad_caption=json.dumps("x" * HUGE)), Accept(lambda t: len(t) == HUGE))
        add(fmt, "utf16-bom", data().encode("utf-16"), Refuse("UTF-16"))
        add(fmt, "latin1", data(bad_caption='"café"').encode("latin-1"), Refuse("not UTF-8"))
        add(fmt, "raw-nul-byte", data(bad_caption='"bad\x00one"'), Refuse("malformed JSON"))
        add(fmt, "lone-surrogate", data(bad_caption='"bad \\ud800 one"'), Skip(record, "lone surrogate"))
        add(fmt, "unclosed-quote", data(bad_caption='"bad one'), Refuse("malformed JSON"))
        add(fmt, "empty", b"", Refuse("empty"))
        add(fmt, "caption-is-a-number", data(bad_caption="42"), Skip(record, "not a string"))
        add(fmt, "caption-is-null", data(bad_caption="null"), Skip(record, "missing field 'caption'"))
    add("coco", "nul-in-file-name", coco_data(bad_image='"g9\\u0000.jpg"'), Skip(COCO_RECORD, "NUL"))
    # a missing image is reported at its first caption's record number (Caption.line)
    add("coco", "huge-file-name", coco_data(bad_image=json.dumps("i" * HUGE)), Skip("line 2", "not found"))
    add("coco", "long-file-name", coco_data(bad_image=json.dumps(LONG_BAD)), Skip("line 2", "not found"))
    add("coco", "image-id-is-a-list", coco_data().replace('"id": 9', '"id": [9]'), Skip("images[3]", "'id'"))
    add("coco", "images-not-a-list", '{"images": {}, "annotations": []}', Refuse("not a COCO captions file"))
    add("pascal", "entry-is-a-list", pascal_data(bad_entry='["bad one"]'), Skip("g9.jpg", "'captions' list"))
    add("pascal", "top-level-list", "[]", Refuse("expected an object"))
    return cases


@pytest.mark.parametrize(("fmt", "content", "expect"), json_cases())
def test_json_caption_files(tmp_path: Path, fmt: str, content: str | bytes, expect: Expect) -> None:
    caption_files(tmp_path)
    path = tmp_path / f"captions{SUFFIX[fmt]}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    for read in (lambda: JSON_READERS[fmt](path, problems=ProblemLog(echo=False)),
                 lambda: read_captions(path, fmt, problems=ProblemLog(echo=False))):
        if isinstance(expect, Refuse):
            with pytest.raises(EmitError) as info:
                read()
            assert str(path) in str(info.value) and expect.fragment in str(info.value)
            continue
        check_captions(path, read(), expect)


# --------------------------------------------------------------------------- products

TAGS = ["black", "white"]
GOOD_PRODUCTS = {pid: {"optional_tags": TAGS,
                       "imgs_tags": [{f"{pid}_0.jpg": "black"}, {f"{pid}_1.jpg": "white"}]}
                 for pid in ("100", "101")}
BAD_PID = "200"
BAD_IMAGES = ["200_0.jpg", "200_1.jpg"]


def profile_200(tag0: str = '"black"', extra: str = "", name1: str = '"200_1.jpg"',
                tags: str = '["black", "white"]') -> str:
    """Product 200's profile as raw JSON text, with pieces replaced by the case."""
    return (f'{{"optional_tags": {tags}{extra}, "imgs_tags": [{{"200_0.jpg": {tag0}}}, '
            f'{{{name1}: "white"}}]}}')


@dataclass(frozen=True)
class ProductCase:
    profile: str | bytes  # product 200's profile (raw JSON text, or bytes as stored)
    folder: Expect  # outcome in the folder layout
    combined: Expect  # outcome in the combined layout
    encoding: str = "utf-8"  # how the profile (folder) or the whole file (combined) is stored
    setup: Callable[[Path, Path], None] | None = None  # (data root, tmp) -> extra files/links


def _link_folder_out(root: Path, tmp: Path) -> None:
    outside = tmp / "outside" / BAD_PID
    outside.parent.mkdir()
    (root / BAD_PID).rename(outside)
    (root / BAD_PID).symlink_to(outside, target_is_directory=True)


def _link_image_out(root: Path, tmp: Path) -> None:
    target = tmp / "outside.jpg"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(target)
    (root / BAD_PID / "200_1.jpg").unlink()
    (root / BAD_PID / "200_1.jpg").symlink_to(target)


def _dangling_image(root: Path, tmp: Path) -> None:
    (root / BAD_PID / "200_1.jpg").unlink()
    (root / BAD_PID / "200_1.jpg").symlink_to(tmp / "nowhere.jpg")


def _loop_folder(root: Path, tmp: Path) -> None:
    (root / "300").symlink_to(root, target_is_directory=True)  # a folder that contains itself


def _long_image(root: Path, tmp: Path) -> None:
    _image(root / BAD_PID / LONG_OK)


def _not_utf8_folder(root: Path, tmp: Path) -> None:
    os.mkdir(os.fsencode(root) + b"/caf\xe9")  # a Latin-1 name: not UTF-8
    (Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9")) / PROFILE).write_text(
        json.dumps(GOOD_PRODUCTS["100"]), "utf-8")


PRODUCT_CASES: dict[str, ProductCase] = {
    # In a combined file too, one unusable product is skipped and its neighbours kept (issue 11).
    "deep-nesting": ProductCase(deep(DEEP), Skip(BAD_PID, "nested deeper than Python's parser allows"),
                                Skip(BAD_PID, "nested deeper than Python's parser allows")),
    "deep-in-a-tag": ProductCase(profile_200(tag0=deep(PARSEABLE_DEEP)), Skip(BAD_PID, "nested deeper"),
                                 Skip(BAD_PID, "nested deeper")),
    "deep-extra-key": ProductCase(profile_200(extra=f', "notes": {deep(PARSEABLE_DEEP)}'),
                                  Skip(BAD_PID, "nested deeper"), Skip(BAD_PID, "nested deeper")),
    "huge-number": ProductCase(profile_200(extra=', "n": ' + "9" * 5000), Skip(BAD_PID, "digits"),
                               Skip(BAD_PID, "digits")),
    "huge-tag": ProductCase(profile_200(tag0=json.dumps("b" * HUGE), tags=json.dumps(["b" * HUGE, "white"])),
                            Accept(lambda t: len(t) == HUGE), Accept(lambda t: len(t) == HUGE)),
    "huge-tag-not-listed": ProductCase(profile_200(tag0=json.dumps("b" * HUGE)),
                                       SkipImage("200_0.jpg", "not one of optional_tags"),
                                       SkipImage("200_0.jpg", "not one of optional_tags")),
    "utf16-bom": ProductCase(profile_200(), Skip(BAD_PID, "UTF-16"), Refuse("UTF-16"), encoding="utf-16"),
    "latin1": ProductCase(profile_200(extra=', "note": "café"'), Skip(BAD_PID, "not UTF-8"),
                          Refuse("not UTF-8"), encoding="latin-1"),
    "raw-nul-byte": ProductCase(profile_200(tag0='"bl\x00ack"'), Skip(BAD_PID, "malformed JSON"),
                                Skip(BAD_PID, "malformed JSON")),
    "nul-in-image-name": ProductCase(profile_200(name1='"200_1\\u0000.jpg"'),
                                     SkipImage("200_1\x00.jpg", "refused"),
                                     SkipImage("200_1\x00.jpg", "refused")),
    "lone-surrogate-tag": ProductCase(profile_200(tag0='"bl\\udc00ack"', tags='["bl\\udc00ack", "white"]'),
                                      Skip(BAD_PID, "lone surrogate"), Skip(BAD_PID, "lone surrogate")),
    "lone-surrogate-key": ProductCase(profile_200(extra=', "n\\ud800": 1'), Skip(BAD_PID, "lone surrogate"),
                                      Skip(BAD_PID, "lone surrogate")),
    "unclosed-quote": ProductCase(profile_200(tag0='"black'), Skip(BAD_PID, "malformed JSON"),
                                  Refuse("malformed JSON")),
    "empty": ProductCase(b"", Skip(BAD_PID, "empty"), Refuse("empty")),
    "profile-is-a-list": ProductCase("[]", Skip(BAD_PID, "not an object"), Skip(BAD_PID, "not an object")),
    "tags-are-a-string": ProductCase(profile_200(tags='"black"'), Skip(BAD_PID, "optional_tags"),
                                     Skip(BAD_PID, "optional_tags")),
    "tag-is-an-object": ProductCase(profile_200(tag0='{"a": 1}'), SkipImage("200_0.jpg", "not a string"),
                                    SkipImage("200_0.jpg", "not a string")),
    "long-name-ok": ProductCase(profile_200(name1=json.dumps(LONG_OK)), Accept(), Accept(),
                                setup=_long_image),
    "long-name-too-long": ProductCase(profile_200(name1=json.dumps(LONG_BAD)),
                                      SkipImage(LONG_BAD, "not found"), SkipImage(LONG_BAD, "not found")),
    "folder-symlink-out": ProductCase(profile_200(), Accept(), Accept(), setup=_link_folder_out),
    "image-symlink-out": ProductCase(profile_200(), Accept(), Accept(), setup=_link_image_out),
    "image-symlink-dangling": ProductCase(profile_200(), SkipImage("200_1.jpg", "not found"),
                                          SkipImage("200_1.jpg", "not found"), setup=_dangling_image),
    "folder-symlink-loop": ProductCase(profile_200(), Accept(), Accept(), setup=_loop_folder),
}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (180, 20, 20)).save(path)


def build_products(tmp: Path, layout: str, case: ProductCase) -> tuple[Path, Path, str]:
    """Products 100, 200 (the bad one), 101 with their images; (path to read, root, 200's file)."""
    root = tmp / "data"
    for pid in ("100", BAD_PID, "101"):
        for name in (BAD_IMAGES if pid == BAD_PID else [f"{pid}_0.jpg", f"{pid}_1.jpg"]):
            _image(root / pid / name)
    raw = case.profile if isinstance(case.profile, bytes) else case.profile.encode(case.encoding)
    if layout == "folder":
        for pid, profile in GOOD_PRODUCTS.items():
            (root / pid / PROFILE).write_text(json.dumps(profile), "utf-8")
        (root / BAD_PID / PROFILE).write_bytes(raw)
        path, where = root, str(root / BAD_PID / PROFILE)
    else:
        good = {pid: json.dumps(p) for pid, p in GOOD_PRODUCTS.items()}
        bad = case.profile.decode("utf-8") if isinstance(case.profile, bytes) else case.profile
        text = f'{{"100": {good["100"]}, "{BAD_PID}": {bad}, "101": {good["101"]}}}'
        if not case.profile:
            text = ""  # an empty combined file
        path = root / "test_all.json"
        path.write_bytes(text.encode(case.encoding))
        where = str(path)
    if case.setup is not None:
        case.setup(root, tmp)
    return path, root, where


@pytest.mark.parametrize("layout", ["folder", "combined"])
@pytest.mark.parametrize("case_id", list(PRODUCT_CASES))
def test_product_readers(tmp_path: Path, layout: str, case_id: str) -> None:
    case = PRODUCT_CASES[case_id]
    expect = case.folder if layout == "folder" else case.combined
    path, _, where = build_products(tmp_path, layout, case)
    if isinstance(expect, Refuse):
        with pytest.raises(EmitError) as info:
            read_products(path, problems=ProblemLog(echo=False))
        assert str(path) in str(info.value) and expect.fragment in str(info.value)
        return
    products, problems = read_products(path, problems=ProblemLog(echo=False))
    check_messages(problems, path)
    by_id = {p.product_id: p for p in products}
    for pid, profile in GOOD_PRODUCTS.items():  # the good products come through intact
        assert by_id[pid].images == [next(iter(e)) for e in profile["imgs_tags"]], problems.summary()
        assert by_id[pid].tags == ["black", "white"]
    if isinstance(expect, Accept):
        assert BAD_PID in by_id, problems.summary()
        assert expect.check is None or expect.check(by_id[BAD_PID].tags[0])
        assert not [p for p in problems if p.record.split()[0] == BAD_PID], problems.summary()
        return
    if isinstance(expect, Skip):
        assert BAD_PID not in by_id
        hits = [p for p in problems if p.record.split()[0] == expect.record and expect.fragment in p.what]
    else:
        assert expect.image not in by_id[BAD_PID].images and len(by_id[BAD_PID].images) == 1
        hits = [p for p in problems if p.record.startswith(f"{BAD_PID} image") and expect.fragment in p.what]
    assert hits, f"no problem {expect} in:\n{problems.summary()}"
    assert all(p.where == where for p in hits)


def test_product_folder_name_that_is_not_utf8(tmp_path: Path) -> None:
    path, root, _ = build_products(tmp_path, "folder", ProductCase(profile_200(), Accept(), Accept()))
    _not_utf8_folder(root, tmp_path)
    products, problems = read_products(path, problems=ProblemLog(echo=False))
    assert sorted(p.product_id for p in products) == ["100", "101", BAD_PID]
    (problem,) = problems
    assert "not valid UTF-8" in problem.what and problem.record == "'caf\\udce9'" and problem.fix
    str(problem).encode("utf-8")  # the report itself can be written out


def test_a_product_file_over_the_name_limit_cannot_be_made(tmp_path: Path) -> None:
    # the premise of the long-name cases: 255 bytes per name part, whatever the characters
    with pytest.raises(OSError):
        (tmp_path / ("黑" * 86)).mkdir()  # 258 bytes in UTF-8
    (tmp_path / ("黑" * 85)).mkdir()  # 255 bytes


# --------------------------------------------------------------------------- predictions (pair evaluate)


def test_bad_predictions_are_scored_as_wrong_and_the_report_is_written(tmp_path: Path) -> None:
    from emit.data.products import Product
    from emit.pairing.report import evaluate_pairing, format_report, write_report

    truth = {"1": Product("1", ["a", "b"], ["1_0.jpg", "1_1.jpg", "1_2.jpg"], ["a", "b", "a"]),
             "2": Product("2", ["a", "b"], ["2_0.jpg", "2_1.jpg"], ["b", "a"])}
    pred = tmp_path / "final_json.json"
    huge = "b" * HUGE
    pred.write_text('{"1": {"optional_tags": ["a", "b"], "imgs_tags": [{"1_0.jpg": "a\\ud800"}, '
                    f'{{"1_1.jpg": "{huge}"}}, {{"1_2.jpg": "a"}}]}}, '
                    '"2": {"optional_tags": ["a", "b"], "imgs_tags": [{"2_0.jpg": "b"}, {"2_1.jpg": "a"}]}, '
                    '"x\\udc00": {}}', encoding="utf-8")
    problems = ProblemLog(echo=False)
    report = evaluate_pairing(pred, truth, problems=problems)
    assert report["images"] == 5 and report["correct"] == 3  # the two bad tags count as wrong
    check_messages(problems, pred)
    by_record = {p.record: p.what for p in problems}
    assert "lone surrogate" in by_record["1 image 1_0.jpg"]
    assert "not one of optional_tags" in by_record["1 image 1_1.jpg"]
    assert "not in the truth" in by_record["1 product(s)"]
    json_path, png_path = write_report(report, tmp_path / "report")  # before: UnicodeEncodeError
    assert json.loads(json_path.read_text("utf-8"))["correct"] == 3
    assert png_path.read_bytes().startswith(b"\x89PNG")  # before: a raster overflow on the huge label
    assert len(format_report(report)) < MAX_MESSAGE


def test_a_deeply_nested_predictions_file_is_one_clear_error(tmp_path: Path) -> None:
    from emit.data.products import Product
    from emit.pairing.report import evaluate_pairing

    pred = tmp_path / "final_json.json"
    pred.write_text('{"1": ' + deep(DEEP) + "}", encoding="utf-8")
    with pytest.raises(EmitError, match="nested deeper than Python's parser allows") as info:
        evaluate_pairing(pred, {"1": Product("1", ["a"], ["1_0.jpg"], ["a"])})
    assert str(pred) in str(info.value)


# --------------------------------------------------------------------------- the parser's limit


def test_what_the_json_parser_accepts_can_be_walked_and_written_again() -> None:
    # the depth limit is what makes this true: deeper data parses, then a serializer (pydantic's
    # caps depth near 255) or a recursive walk in a deep call stack fails on it
    from typing import Any

    from pydantic import TypeAdapter

    from emit.files import JSONTextError, parse_json

    text = '{"notes": ' + deep(MAX_JSON_DEPTH - 1) + "}"
    data = parse_json(text)
    assert json.loads(json.dumps(data, indent=1)) == data and repr(data)
    adapter = TypeAdapter(dict[str, Any])
    assert json.loads(adapter.dump_json(adapter.validate_python(data))) == data
    for too_deep in ('{"notes": ' + deep(MAX_JSON_DEPTH) + "}", deep(300), deep(DEEP), deep(100_000)):
        with pytest.raises(JSONTextError, match="nested deeper") as info:
            parse_json(too_deep, "f.json")
        assert str(info.value).startswith("f.json: ") and info.value.fix


def test_a_data_path_with_a_name_too_long_is_a_clear_error(tmp_path: Path) -> None:
    # pathlib raises ENAMETOOLONG from is_file(); the readers say "no such file" instead
    too_long = tmp_path / LONG_BAD
    with pytest.raises(EmitError, match="no such file") as info:
        read_products(too_long)
    assert str(too_long) in str(info.value)
    with pytest.raises(EmitError, match="no such file"):
        read_captions(too_long)
    with pytest.raises(EmitError, match="cannot read file"):
        read_jsonl(too_long)
