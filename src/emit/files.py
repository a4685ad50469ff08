"""Atomic writes and careful JSON reads.

Every output is written to a temporary file in the destination folder and then
renamed into place, so a killed run leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from emit.problems import EmitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_safetensors(path: str | os.PathLike[str], tensors: dict[str, Any]) -> Path:
    """Write torch tensors as safetensors, atomically like every other output."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> Path:
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return atomic_write_text(path, text + "\n")


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file (a BOM is tolerated); a clear :class:`EmitError` names the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EmitError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8-sig")  # tolerate a BOM, as written by some Windows tools
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1  # say where, like the JSON error below
        raise EmitError(
            f"{path}: not UTF-8 at line {line} (byte {exc.start}: "
            f"{raw[exc.start:exc.start + 4]!r}); re-save the file as UTF-8"
        ) from exc


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a UTF-8 JSON file, turning decoding errors into an :class:`EmitError` that says where."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EmitError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
            "fix the file (a JSON validator shows the exact spot)"
        ) from exc
