"""Atomic writes keep the old file on failure; read_json errors say which file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from emit.problems import EmitError


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


class Boom(RuntimeError):
    pass


def test_atomic_write_keeps_old_file_when_writer_raises_midway(tmp_path: Path) -> None:
    target = tmp_path / "final_json.json"
    target.write_text('{"old": true}\n', encoding="utf-8")

    def half_then_fail(fh: IO[bytes]) -> None:
        fh.write(b'{"new": ')  # half a document reaches the temp file ...
        fh.flush()
        raise Boom("killed midway")  # ... then the writer dies

    with pytest.raises(Boom):
        atomic_write(target, half_then_fail)
    assert target.read_text(encoding="utf-8") == '{"old": true}\n'
    assert _siblings(target) == ["final_json.json"]  # the temp file is gone too


def test_atomic_write_failure_on_new_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"

    def fail(fh: IO[bytes]) -> None:
        fh.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, fail)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_also_survives_keyboard_interrupt(tmp_path: Path) -> None:
    # BaseException (Ctrl-C) must not leave a temp file or a half file either
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def interrupted(fh: IO[bytes]) -> None:
        fh.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text(encoding="utf-8") == "old"
    assert _siblings(target) == ["out.txt"]


def test_atomic_writes_replace_content_and_create_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.json"
    atomic_write_json(target, {"tag": "黑色", "n": 1})
    atomic_write_json(target, {"tag": "白色【加绒】", "n": 2})
    raw = target.read_bytes()
    assert "白色【加绒】".encode() in raw  # written as UTF-8 text, not \\u escapes
    assert read_json(target) == {"tag": "白色【加绒】", "n": 2}
    assert _siblings(target) == ["report.json"]
    assert atomic_write_bytes(tmp_path / "x.bin", b"\x00\x01").read_bytes() == b"\x00\x01"


def test_read_json_malformed_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text('{\n "optional_tags": ["黑色",\n  "白色" "红色"]\n}\n', encoding="utf-8")
    with pytest.raises(EmitError) as info:
        read_json(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3" in msg  # the missing comma is on line 3
    assert "malformed JSON" in msg


def test_read_json_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    text = '{\n "optional_tags": ["黑色"],\n "imgs_tags": []\n}\n'
    path.write_bytes(text.encode("gbk"))  # as saved by a Chinese-locale Windows editor
    with pytest.raises(EmitError) as info:
        read_json(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "not UTF-8" in msg
    assert "line 2" in msg  # the first GBK byte is on line 2
    assert "re-save the file as UTF-8" in msg  # and it says how to fix it


def test_read_json_accepts_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "黑色"}, ensure_ascii=False).encode())
    assert read_json(path) == {"a": "黑色"}


def test_read_json_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(EmitError, match=r"nope\.json"):
        read_json(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6), st.sampled_from([None, 1]))
def test_object_members_split_any_json_object_back_into_its_members(obj: dict, indent: int | None) -> None:
    """Members found by scanning brackets and strings parse back to the object's own values,
    whatever the strings hold (quotes, escapes, brackets, commas) and however it is laid out."""
    from emit.files import json_object_members

    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    members = json_object_members(text)
    assert members is not None
    assert {json.loads(k): json.loads(v) for k, v, _ in members} == obj
    lines = text.split("\n")
    for key, _, line in members:  # each member's value starts on the line it names
        assert key in lines[line - 1] or lines[line - 1].strip().startswith(key)


def test_object_members_refuse_what_is_not_one_object() -> None:
    from emit.files import json_object_members

    for text in ["[1]", '{"a": 1', '{"a": 1} x', '{"a" 1}', '{"a": "open}', "", '{"a": 1,}', "{1: 2}"]:
        assert json_object_members(text) is None, text
    deep = "[" * 5000 + "]" * 5000  # far past the recursion limit: the scan itself never recurses
    assert [(k, len(v), n) for k, v, n in json_object_members('{"a": 1,\n"b": ' + deep + "}")] == [
        ('"a"', 1, 1), ('"b"', 10000, 2)]
