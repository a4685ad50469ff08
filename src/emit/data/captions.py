"""Read image-text pairs: captions, titles and search queries with the image they describe.

Every reader returns ``(captions, problems)``: a list of :class:`Caption` and a
:class:`~emit.problems.ProblemLog`. A bad record (malformed JSON line, missing field, empty
text, bad count, missing image file) is reported with the file, the line or record, what is
wrong and how to fix it, and skipped. Only an unusable input raises
:class:`~emit.problems.EmitError`: a file that cannot be read or is not UTF-8, a CSV without
the needed columns, a JSON file of the wrong shape, or a file none of whose images exist.

Formats:

* JSON lines (:func:`read_jsonl`): ``{"image": "images/1.jpg", "text": "...",
  "category": "Topwear", "count": 3}``; ``category`` and ``count`` are optional.
* CSV or TSV with a header row (:func:`read_csv`): columns ``image``, ``text`` and optionally
  ``category`` and ``count``. The delimiter is a tab if the header line has one, else a comma.
  A quoted text may hold a line break; a quote that runs on over whole rows (an unclosed
  quote) is reported with the line it opened on, that line is skipped and reading resumes on
  the next one, so the rest of the file is not swallowed.
* Flickr8k / Flickr30k tokens (:func:`read_flickr8k`): ``<image>#<k>\\t<caption>`` lines,
  optionally filtered to the images of a split file such as ``Flickr_8k.trainImages.txt``.
* COCO captions (:func:`read_coco`): ``{"images": [{"id", "file_name"}],
  "annotations": [{"image_id", "caption"}]}``.
* Pascal sentences (:func:`read_pascal`): ``{image: {"category": ..., "captions": [...]}}``.
* Click logs (:func:`read_clicks`): JSON lines or CSV/TSV with ``query``, ``image`` (the clicked
  image) and optionally ``count`` or ``clicks``. Rows with the same query (compared after
  collapsing white space and case) and the same image are merged and their counts added.

Image paths. A relative image path is resolved against ``image_root`` when given, else against
the folder of the data file (Flickr8k: its ``images/`` folder if there is one). ``..`` is
allowed and so are absolute paths: ``fashion-retrieval`` legitimately points at
``../fashion-pairing/...``, and a caption file is trusted like a configuration file -- it may
name any image its user can read, and emit only ever *reads* these paths, never writes them.
Refused (reported and skipped): empty names and names containing a NUL byte. Paths are
normalised lexically and made absolute; that string is the caption's ``image_id``, so captions
of one image named in two ways (``images/1.jpg`` and ``./images/1.jpg``) or in two files group
together (:func:`group_by_image`).

Any text (image name, caption, category) holding a lone surrogate -- a ``\\ud800``-style JSON
escape without its other half, which is not Unicode and could not be written out again -- is
reported and its record skipped. JSON is parsed by :func:`emit.files.parse_json`, so a record
nested too deeply is one reported line (JSON lines) or one clear error (COCO, Pascal).

With ``check_images=True`` (the default) a missing image file is reported once, with the
number of captions it takes with it, and its captions are skipped. Use ``check_images=False``
to read the text only (the Pascal images, for example, are often not at hand).

``Caption.line`` is the 1-based line number in line-based files (JSON lines, CSV, Flickr8k
tokens) and the 1-based record number in JSON files (the annotation's position for COCO, the
running caption number for Pascal).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from emit.data.products import brief
from emit.files import JSONTextError, parse_json, read_json, read_text
from emit.problems import EmitError, ProblemLog

FORMATS = ("jsonl", "csv", "flickr8k", "coco", "pascal", "clicks")
_MISSING: Any = object()  # a field absent from the record, as opposed to null or ""
_FLICKR_LINE = re.compile(r"^[^\t]+#\d+\t")
_SURROGATE = re.compile("[\ud800-\udfff]")  # only a \\uXXXX escape in JSON can produce one
_FREE_TEXT = frozenset({"text", "query", "caption", "title"})  # CSV columns a line break may be in

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Caption:
    """One text about one image."""

    image: Path  # absolute, normalised path of the image file
    text: str  # the caption, title or query, stripped of surrounding white space
    category: str | None  # e.g. the catalogue sub-category or Pascal class; None if unknown
    image_id: str  # stable id of the image (its normalised path): group captions by it
    source: str  # the data file the caption was read from
    line: int  # 1-based line (line-based files) or record number (JSON files) in ``source``
    count: float = 1.0  # weight: clicks for click logs, else 1


# --------------------------------------------------------------------------- helpers


def resolve_image(name: Any, base: PathLike) -> Path | None:
    """Resolve an image name against ``base``; None if the name is refused (see module doc)."""
    if not isinstance(name, str):
        return None
    name = name.strip()
    if not name or "\x00" in name:
        return None
    return Path(os.path.abspath(Path(base) / name))  # abspath also normalises "a/../b"


def _require_lines(path: Path, text: str) -> str:
    if not text.strip():
        raise EmitError(f"{path}: file is empty; nothing to read")
    return text


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines. Splits on newline only: str.splitlines would also split on U+2028 etc.,
    which may legally appear inside a JSON string."""
    for n, line in enumerate(text.split("\n"), 1):
        yield n, line.rstrip("\r")


class _Collector:
    """Validates fields into captions, reporting what it refuses."""

    def __init__(self, source: Path, root: Path, problems: ProblemLog, example: str) -> None:
        self.source = source
        self.root = root
        self.problems = problems
        self.example = example  # how a good record looks, for the fix text
        self.captions: list[Caption] = []

    def report(self, record: str, what: str, fix: str | None = None) -> None:
        self.problems.add(self.source, record, what, fix or f"write the record as {self.example}")

    def add(self, record: str, line: int, image: Any, text: Any, category: Any = None,
            count: Any = _MISSING, *, text_field: str = "text", image_field: str = "image",
            count_field: str = "count") -> Caption | None:
        if image is _MISSING or image is None:
            self.report(record, f"missing field {image_field!r}; skipped")
            return None
        for name, value in ((image_field, image), (text_field, text), ("category", category)):
            found = _SURROGATE.search(value) if isinstance(value, str) else None
            if found:
                self.report(record, f"{name} holds a lone surrogate {found.group()!a}, which is "
                            "not Unicode text; skipped",
                            "fix the \\u escape: a character beyond U+FFFF needs both halves of its "
                            "surrogate pair (e.g. \\ud83d\\ude00), or write the character itself")
                return None
        path = resolve_image(image, self.root)
        if path is None:
            what = ("is not a string" if not isinstance(image, str)
                    else "contains a NUL byte" if "\x00" in image else "is empty")
            self.report(record, f"image name {brief(repr(image))} {what}; refused",
                        "give the image's file name or a path relative to the data file")
            return None
        if text is _MISSING or text is None:
            self.report(record, f"missing field {text_field!r}; skipped")
            return None
        if not isinstance(text, str):
            self.report(record, f"{text_field} is {type(text).__name__}, not a string; skipped")
            return None
        text = text.strip()
        if not text:
            self.report(record, f"{text_field} is empty; skipped",
                        f"write the {text_field} or remove the record")
            return None
        category = self._category(record, category)
        weight = self._count(record, count, count_field)
        if weight is None:
            return None
        caption = Caption(path, text, category, str(path), str(self.source), line, weight)
        self.captions.append(caption)
        return caption

    def _category(self, record: str, category: Any) -> str | None:
        if category is _MISSING or category is None:
            return None
        if isinstance(category, bool) or not isinstance(category, (str, int)):
            self.report(record, f"category {brief(repr(category))} is not a string; category dropped, "
                        "caption kept",
                        "write the category as a string")
            return None
        category = str(category).strip()
        return category or None

    def _count(self, record: str, count: Any, field: str) -> float | None:
        if count is _MISSING or count is None or (isinstance(count, str) and not count.strip()):
            return 1.0
        try:
            if isinstance(count, bool):
                raise TypeError
            value = float(count)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            self.report(record, f"{field} {brief(repr(count))} is not a positive number; skipped",
                        f"write {field} as a positive number, or drop rows without clicks")
            return None
        return value


def _root(data_file: Path, image_root: PathLike | None) -> Path:
    return Path(image_root) if image_root is not None else data_file.parent


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False instead of the OSError pathlib raises for a name too long
    for the file system (ENAMETOOLONG): such a file cannot exist."""
    try:
        return path.is_file()
    except OSError:
        return False


def _check_images(captions: list[Caption], source: Path, problems: ProblemLog) -> list[Caption]:
    """Drop captions whose image file is missing, reporting each missing image once."""
    exists: dict[str, bool] = {}
    first: dict[str, Caption] = {}
    lost: dict[str, int] = {}
    for c in captions:
        if c.image_id not in exists:
            exists[c.image_id] = _is_file(c.image)
            first[c.image_id] = c
        if not exists[c.image_id]:
            lost[c.image_id] = lost.get(c.image_id, 0) + 1
    if not lost:
        return captions
    if len(lost) == len(exists):
        example = brief(next(iter(lost)))
        raise EmitError(
            f"{source}: none of its {len(exists)} image file(s) exist (for example {example}); "
            "pass image_root= the folder that holds them, or check_images=False to read the text only"
        )
    for image_id, k in lost.items():
        c = first[image_id]
        problems.add(source, f"line {c.line}",
                     f"image file {brief(image_id)} not found; its {k} caption(s) skipped",
                     "add the image file or remove its captions")
    return [c for c in captions if exists[c.image_id]]


def _finish(col: _Collector, check_images: bool) -> tuple[list[Caption], ProblemLog]:
    captions = col.captions
    if check_images and captions:
        captions = _check_images(captions, col.source, col.problems)
    return captions, col.problems


def _jsonl_rows(path: Path, text: str, problems: ProblemLog, example: str) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(text):
        if not line.strip():
            continue
        try:
            obj = parse_json(line)
        except JSONTextError as exc:
            if exc.reason.startswith("malformed JSON"):
                problems.add(path, f"line {n}", f"malformed JSON at column {exc.column}: {exc.msg}; "
                             "line skipped", f"write one JSON object per line, such as {example}")
            else:  # nested too deep, an unreadable number: this line only
                problems.add(path, f"line {n}", f"{exc.reason}; line skipped", exc.fix)
            continue
        if not isinstance(obj, dict):
            problems.add(path, f"line {n}", f"line is a JSON {type(obj).__name__}, not an object; skipped",
                         f"write one JSON object per line, such as {example}")
            continue
        yield n, obj


def _csv_rows(path: Path, text: str, required: Sequence[str], problems: ProblemLog,
              hint: str) -> Iterator[tuple[int, dict]]:
    header_line = next((line for _, line in _lines(text) if line.strip()), "")
    if not header_line:
        raise EmitError(f"{path}: file is empty; expected a header row such as {hint}")
    delimiter = "\t" if "\t" in header_line else ","
    # Physical lines as csv counts them (\n, \r\n or \r), so a bad record can be skipped and
    # reading resumed on the line after it with a fresh reader.
    lines = re.split(r"\r\n|\r|\n", text)
    header: list[str] | None = None
    pos = 0  # 0-based index of the line the current reader started on
    while pos < len(lines):
        reader = csv.reader((lines[i] + "\n" for i in range(pos, len(lines))), delimiter=delimiter)
        end = pos  # 1-based number of the last line read
        resume: int | None = None
        try:
            for row in reader:
                start, end = end + 1, pos + reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if end > start:  # a quoted field ran over a line break
                    why = _runaway_quote(row, header, lines[start - 1:end], delimiter)
                    if why is not None:
                        if header is None:
                            raise EmitError(f"{path}: the header row has an unclosed quote (line {start}); "
                                            f"name the columns {hint}")
                        problems.add(path, f"line {start}",
                                     f"unclosed quote: a quoted field opened on line {start} runs on to "
                                     f"line {end} ({why}); line {start} skipped, reading resumes on "
                                     f"line {start + 1}",
                                     'close the quote; a quote inside a quoted field is written twice ("")')
                        resume = start
                        break
                if header is None:
                    header = [h.strip().lower() for h in row]
                    missing = [c for c in required if c not in header]
                    if missing:
                        raise EmitError(f"{path}: no {', '.join(map(repr, missing))} column; the header row "
                                        f"is {brief(repr(row))}; name the columns {hint}")
                    continue
                if len(row) != len(header):
                    problems.add(path, f"line {start}", f"row has {len(row)} fields, the header has "
                                 f"{len(header)}; skipped",
                                 "quote fields that contain the delimiter, and give every row all columns")
                    continue
                yield start, dict(zip(header, row, strict=True))
        except csv.Error as exc:
            start = end + 1  # the record that failed starts after the last one read
            if header is None:
                raise EmitError(f"{path}: unreadable header row ({exc}); name the columns {hint}") from exc
            if "field limit" in str(exc):
                what = (f"a field is longer than {csv.field_size_limit():,} characters, Python's CSV limit "
                        "(or an unclosed quote runs on)")
                fix = "shorten the field or close the quote; JSON lines have no such limit"
            else:
                what, fix = f"unreadable CSV row ({exc})", "check the quoting of this row"
            problems.add(path, f"line {start}", f"{what}; line {start} skipped, reading resumes on "
                         f"line {start + 1}", fix)
            resume = start
        if resume is None:
            return
        pos = resume


def _runaway_quote(row: list[str], header: list[str] | None, raw: list[str], delimiter: str) -> str | None:
    """Why a record spanning the lines ``raw`` is an unclosed quote rather than a quoted text
    with a line break in it; None if it is a plausible multi-line text."""
    if sum(line.count('"') for line in raw) % 2:
        return "the quote is never closed"
    if header is None:
        return "a line break inside the header"
    if len(row) != len(header):
        return f"it makes a row of {len(row)} fields, the header has {len(header)}"
    for column, cell in zip(header, row, strict=True):
        if "\n" in cell and column not in _FREE_TEXT:
            return f"column {column!r} would hold a line break"
    for k, line in enumerate(raw[1:], 2):
        if len(next(csv.reader([line], delimiter=delimiter), [])) == len(header):
            return f"its line {k} reads as a row of its own"
    return None


def _is_jsonl(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix in (".csv", ".tsv"):
        return False
    first = next((line for _, line in _lines(text) if line.strip()), "")
    return first.lstrip().startswith("{")


# --------------------------------------------------------------------------- readers

_JSONL_EXAMPLE = '{"image": "images/1.jpg", "text": "a red dress", "category": "Dresses"}'


def read_jsonl(path: PathLike, image_root: PathLike | None = None, *, check_images: bool = True,
               problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read ``{"image", "text"[, "category"][, "count"]}`` lines."""
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    text = _require_lines(path, read_text(path))
    col = _Collector(path, _root(path, image_root), problems, _JSONL_EXAMPLE)
    for n, obj in _jsonl_rows(path, text, problems, _JSONL_EXAMPLE):
        col.add(f"line {n}", n, obj.get("image", _MISSING), obj.get("text", _MISSING),
                obj.get("category", _MISSING), obj.get("count", _MISSING))
    return _finish(col, check_images)


def read_csv(path: PathLike, image_root: PathLike | None = None, *, check_images: bool = True,
             problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read a CSV/TSV file with a header row: ``image``, ``text``[, ``category``][, ``count``]."""
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    text = read_text(path)
    col = _Collector(path, _root(path, image_root), problems, "a row image,text[,category][,count]")
    for n, row in _csv_rows(path, text, ("image", "text"), problems, "image,text[,category][,count]"):
        col.add(f"line {n}", n, row["image"], row["text"], row.get("category"), row.get("count"))
    return _finish(col, check_images)


def read_flickr8k(token_file: PathLike, split_file: PathLike | None = None,
                  image_root: PathLike | None = None, *, check_images: bool = True,
                  problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read ``<image>#<k>\\t<caption>`` lines (Flickr8k.token.txt; Flickr30k uses the same form).

    With ``split_file`` (one image name a line) only the images it lists are kept; images it
    lists that have no caption are reported. The default image root is the folder ``images/``
    beside the token file if it exists, else the token file's folder.
    """
    token_file = Path(token_file)
    problems = problems if problems is not None else ProblemLog()
    if image_root is None:
        images = token_file.parent / "images"
        image_root = images if images.is_dir() else token_file.parent
    keep: list[str] | None = None
    if split_file is not None:
        split_file = Path(split_file)
        keep = list(dict.fromkeys(line.strip() for _, line in _lines(read_text(split_file)) if line.strip()))
        if not keep:
            raise EmitError(f"{split_file}: the split file lists no images; give one image name a line")
    wanted = set(keep) if keep is not None else None
    col = _Collector(token_file, Path(image_root), problems, "'<image>.jpg#<k><TAB><caption>'")
    seen: set[str] = set()
    for n, line in _lines(_require_lines(token_file, read_text(token_file))):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            col.report(f"line {n}", "no tab between '<image>#<k>' and the caption; skipped")
            continue
        name = key.rpartition("#")[0] if "#" in key else key
        name = name.strip()
        if wanted is not None and name not in wanted:
            continue
        seen.add(name)
        col.add(f"line {n}", n, name, caption, text_field="caption")
    if keep is not None:
        if not seen:
            raise EmitError(f"{split_file}: none of its {len(keep)} images appear in {token_file}; "
                            "are these files from the same data set?")
        for name in keep:
            if name not in seen:
                problems.add(split_file, name,
                             f"image is in the split but has no caption in {token_file.name}; ignored",
                             "use the token file that belongs to this split")
    return _finish(col, check_images)


def read_coco(captions_json: PathLike, image_root: PathLike | None = None, *, check_images: bool = True,
              problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read a COCO captions file (``captions_train2014.json`` and the like).

    The images of COCO are usually in another folder than the annotations: pass ``image_root``.
    """
    path = Path(captions_json)
    return _coco(read_json(path), path, image_root, check_images,
                 problems if problems is not None else ProblemLog())


def _coco(data: Any, path: Path, image_root: PathLike | None, check_images: bool,
          problems: ProblemLog) -> tuple[list[Caption], ProblemLog]:
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise EmitError(f"{path}: not a COCO captions file; expected "
                        '{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}')
    col = _Collector(path, _root(path, image_root), problems, '{"image_id": 1, "caption": "..."}')
    files: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        record = f"images[{i}]"
        image_id = image.get("id") if isinstance(image, dict) else None
        name = image.get("file_name") if isinstance(image, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not isinstance(name, str):
            col.report(record, "image entry lacks an integer or string 'id' or a string 'file_name'; skipped",
                       'write {"id": 1, "file_name": "000001.jpg"}')
        elif image_id in files:
            col.report(record, f"image id {brief(repr(image_id))} is listed twice; the first entry is kept",
                       "give every image its own id")
        else:
            files[image_id] = name
    for i, ann in enumerate(data["annotations"]):
        record = f"annotations[{i}]"
        if not isinstance(ann, dict):
            col.report(record, f"annotation is a {type(ann).__name__}, not an object; skipped")
            continue
        image_id = ann.get("image_id", _MISSING)
        if image_id is _MISSING:
            col.report(record, "missing field 'image_id'; skipped")
            continue
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id not in files:
            col.report(record, f"image_id {brief(repr(image_id))} is not in images[]; caption skipped",
                       "add the image to images[] or fix the image_id")
            continue
        col.add(record, i + 1, files[image_id], ann.get("caption", _MISSING), text_field="caption")
    return _finish(col, check_images)


def read_pascal(json_path: PathLike, image_root: PathLike | None = None, *, check_images: bool = True,
                problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read ``{image: {"category": ..., "captions": [...]}}`` (the Pascal sentence data set)."""
    path = Path(json_path)
    return _pascal(read_json(path), path, image_root, check_images,
                   problems if problems is not None else ProblemLog())


def _pascal(data: Any, path: Path, image_root: PathLike | None, check_images: bool,
            problems: ProblemLog) -> tuple[list[Caption], ProblemLog]:
    example = '{"<image>.jpg": {"category": "cat", "captions": ["a cat on a mat", ...]}}'
    if not isinstance(data, dict):
        raise EmitError(f"{path}: expected an object {example}, got {type(data).__name__}")
    col = _Collector(path, _root(path, image_root), problems, example)
    number = 0
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("captions"), list):
            col.report(name, "entry is not an object with a 'captions' list; image skipped")
            continue
        category = entry.get("category", _MISSING)
        for k, text in enumerate(entry["captions"]):
            number += 1
            col.add(f"{name} captions[{k}]", number, name, text, category, text_field="caption")
    return _finish(col, check_images)


_CLICK_EXAMPLE = '{"query": "red dress", "image": "images/1.jpg", "count": 3}'


def read_clicks(path: PathLike, image_root: PathLike | None = None, *, check_images: bool = True,
                problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read a click log: JSON lines or CSV/TSV with ``query``, ``image`` and optional ``count``/``clicks``.

    ``text`` is accepted in place of ``query``, so a query file in the caption layout
    (``{"image": ..., "text": ...}``, as in fashion-retrieval's queries.jsonl) reads as clicks.

    A row without a count is one click. Rows with the same query and image are merged into one
    caption (the first row's text and line) whose ``count`` is the sum; queries are compared
    after collapsing white space and case, so "Red  Dress" and "red dress" are one query.
    """
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    text = _require_lines(path, read_text(path))
    col = _Collector(path, _root(path, image_root), problems, _CLICK_EXAMPLE)
    if _is_jsonl(path, text):
        rows = _jsonl_rows(path, text, problems, _CLICK_EXAMPLE)
    else:
        header = next((line for _, line in _lines(text) if line.strip()), "").lower()
        query_column = "text" if ("text" in header and "query" not in header) else "query"
        rows = _csv_rows(path, text, (query_column, "image"), problems, "query,image[,count]")
    merged: dict[tuple[str, str], int] = {}
    out: list[Caption] = []
    for n, row in rows:
        count_field = "count" if "count" in row else "clicks"
        count = row.get(count_field, _MISSING)
        # a query file in the caption layout ({"image", "text"}) is a click log of one click each
        query_field = "query" if ("query" in row or "text" not in row) else "text"
        caption = col.add(f"line {n}", n, row.get("image", _MISSING), row.get(query_field, _MISSING),
                          row.get("category", _MISSING), count, text_field=query_field,
                          count_field=count_field)
        if caption is None:
            continue
        key = (" ".join(caption.text.split()).casefold(), caption.image_id)
        j = merged.get(key)
        if j is None:
            merged[key] = len(out)
            out.append(caption)
        else:
            out[j] = replace(out[j], count=out[j].count + caption.count)
    col.captions = out
    return _finish(col, check_images)


def detect_format(path: PathLike) -> str:
    """Guess a caption file's format from its extension and first record (see :data:`FORMATS`)."""
    return _detect(Path(path))[0]


def _detect(path: Path) -> tuple[str, Any]:
    """(format, parsed JSON data if the whole file had to be parsed to tell, else None)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            return "coco", data
        if isinstance(data, dict) and all(isinstance(v, dict) and "captions" in v for v in data.values()):
            return "pascal", data
        raise EmitError(f"{path}: a JSON file that is neither COCO captions ({{'images', 'annotations'}}) "
                        "nor Pascal sentences ({image: {category, captions}}); pass fmt= explicitly")
    text = read_text(path)
    first = next((line for _, line in _lines(text) if line.strip()), "")
    if not first:
        raise EmitError(f"{path}: file is empty")
    if _FLICKR_LINE.match(first):
        return "flickr8k", None
    if _is_jsonl(path, text):
        try:
            obj = parse_json(first)
        except JSONTextError:
            obj = {}  # the JSON-lines reader will report the line
        return ("clicks" if isinstance(obj, dict) and "query" in obj and "text" not in obj else "jsonl"), None
    if suffix in (".csv", ".tsv") or "," in first or "\t" in first:
        header = next(csv.reader([first], delimiter="\t" if "\t" in first else ","), [])
        columns = {h.strip().lower() for h in header}
        return ("clicks" if "query" in columns and "text" not in columns else "csv"), None
    raise EmitError(f"{path}: cannot tell the format; pass fmt= one of {', '.join(FORMATS)}")


def read_captions(path: PathLike, fmt: str = "auto", image_root: PathLike | None = None, *,
                  split_file: PathLike | None = None, check_images: bool = True,
                  problems: ProblemLog | None = None) -> tuple[list[Caption], ProblemLog]:
    """Read captions in any supported format; ``fmt="auto"`` guesses it (:func:`detect_format`)."""
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    fmt = fmt.lower()
    data = None
    if fmt == "auto":
        if not _is_file(path):
            raise EmitError(f"{path}: no such file")
        fmt, data = _detect(path)
    if fmt not in FORMATS:
        raise EmitError(f"unknown caption format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    if split_file is not None and fmt != "flickr8k":
        raise EmitError(f"{path}: a split file is only used with the flickr8k format, not {fmt}")
    kw: dict[str, Any] = {"check_images": check_images, "problems": problems}
    if fmt in ("coco", "pascal"):
        parse = _coco if fmt == "coco" else _pascal
        return parse(data if data is not None else read_json(path), path, image_root, check_images, problems)
    if fmt == "flickr8k":
        return read_flickr8k(path, split_file, image_root, **kw)
    reader = {"jsonl": read_jsonl, "csv": read_csv, "clicks": read_clicks}[fmt]
    return reader(path, image_root, **kw)


# --------------------------------------------------------------------------- grouping


def group_by_image(captions: Iterable[Caption]) -> tuple[list[Path], list[list[int]]]:
    """Distinct images in order of first appearance, and for each the indices of its captions."""
    index: dict[str, int] = {}
    paths: list[Path] = []
    groups: list[list[int]] = []
    for i, c in enumerate(captions):
        j = index.get(c.image_id)
        if j is None:
            j = index[c.image_id] = len(paths)
            paths.append(c.image)
            groups.append([])
        groups[j].append(i)
    return paths, groups


def image_indices(captions: Sequence[Caption]) -> tuple[list[Path], np.ndarray]:
    """Distinct images (as :func:`group_by_image`) and, for each caption, the index of its image."""
    paths, groups = group_by_image(captions)
    of = np.empty(len(captions), dtype=np.int64)
    for j, members in enumerate(groups):
        of[members] = j
    return paths, of
