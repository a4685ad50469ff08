"""The inputs of a batch job -> one sorted, de-duplicated list of image paths.

An input is an image file, a folder (read recursively for image files), or a manifest: a
``.txt`` with one path per line, or a ``.csv`` / ``.parquet`` with a ``path`` column. Relative
paths in a manifest are relative to the manifest's folder, so a manifest can travel with its
images. The list is sorted so the partitions (and so the shard files) are the same on every run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from emit.data.images import IMAGE_SUFFIXES
from emit.problems import EmitError

MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".parquet"})
PATH_COLUMN = "path"


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every image path the inputs name, absolute, sorted, each once.

    A path listed in a manifest that does not exist is kept: it becomes an error row, so the
    output says what is missing instead of silently dropping it. A missing INPUT is an error.
    """
    found: set[str] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(_folder_images(path))
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            if not path.is_file():
                raise EmitError(f"{path}: manifest not found; check the path")
            found.update(_absolute(p, path.parent) for p in read_manifest(path))
        elif path.exists():
            found.add(_absolute(str(path), Path.cwd()))
        else:
            raise EmitError(f"{path}: no such image file, folder or manifest; check the path")
    return sorted(found)


def _absolute(path: str, base: Path) -> str:
    # abspath, not resolve(): a symlinked image keeps the name the user gave it
    # absolute also when the manifest was named relative to the working directory
    return os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(path)))


def _folder_images(folder: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            # hidden files are macOS resource forks (._x.jpg) and emit's own temporaries
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.abspath(os.path.join(root, name))


def read_manifest(path: Path) -> list[str]:
    """The paths a manifest lists, as written in it (blank lines and ``#`` comments skipped)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if PATH_COLUMN not in (reader.fieldnames or []):
                    raise _no_path_column(path, reader.fieldnames or [])
                return [row[PATH_COLUMN].strip() for row in reader if (row[PATH_COLUMN] or "").strip()]
        return _parquet_paths(path)
    except UnicodeDecodeError as exc:
        raise EmitError(f"{path}: manifest is not UTF-8 text ({exc}); re-save it as UTF-8") from exc
    except OSError as exc:
        raise EmitError(f"{path}: cannot read the manifest ({exc.strerror or exc}); check its "
                        "permissions") from exc


def _parquet_paths(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if PATH_COLUMN not in schema.names:
            raise _no_path_column(path, schema.names)
        column = pq.read_table(path, columns=[PATH_COLUMN]).column(PATH_COLUMN)
    except pa.ArrowException as exc:
        raise EmitError(f"{path}: not a readable Parquet file ({exc}); re-write the manifest") from exc
    return [str(p).strip() for p in column.to_pylist() if p is not None and str(p).strip()]


def _no_path_column(path: Path, columns: list[str]) -> EmitError:
    return EmitError(f"{path}: the manifest has no {PATH_COLUMN!r} column (columns: "
                     f"{', '.join(columns) or 'none'}); name the column of image paths {PATH_COLUMN!r}")
