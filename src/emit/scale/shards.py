"""The feature shards: layout, schema, identity metadata, atomic writes, and reading them back.

``OUT/part-00000.parquet``, ``part-00001.parquet``, ...: partition ``i`` holds paths
``[i * shard_size, (i + 1) * shard_size)`` of the sorted input list, its rows sorted by path,
with the columns of :data:`SCHEMA`:

* ``path`` (string): the image file, absolute;
* ``sha256`` (string): of the file's bytes; null if it could not be read;
* ``features`` (list<float32>): the backbone's vector; null when ``error`` is set;
* ``error`` (string): null when fine, else what is wrong with the image and the fix.

The Parquet schema metadata says whose features they are (:data:`META_BACKBONE_KEY` etc.), so a
tool that reads them (``emit index build --from-features``) can refuse a mix of backbones. A
shard is written to a temporary and renamed, so it is there whole or not at all; it also records
the sha256 of its partition's path list, so a rerun can tell a finished shard of the same job
from one of a run over other inputs. ``_SUCCESS.json`` is written last, with the job's summary.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emit.files import atomic_write_bytes
from emit.problems import EmitError

FORMAT = "emit-features/1"
META_FORMAT = b"emit.format"
META_BACKBONE = b"emit.backbone"  # the name given, e.g. efficientnet-lite0
META_BACKBONE_KEY = b"emit.backbone_key"  # Backbone.key: same key <=> same features
META_DIM = b"emit.dim"
META_PART = b"emit.part"  # the partition's number
META_PART_SHA256 = b"emit.part_sha256"  # sha256 of the partition's paths, one per line
SUCCESS = "_SUCCESS.json"
SHARD_GLOB = "part-*.parquet"
_SHARD_NAME = re.compile(r"^part-(\d{5,})\.parquet$")
DEFAULT_SHARD_SIZE = 1000

SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("features", pa.list_(pa.float32())),
    pa.field("error", pa.string()),
])


@dataclass(frozen=True)
class Identity:
    """Whose features a shard holds."""

    backbone: str
    key: str
    dim: int


@dataclass(frozen=True)
class Partition:
    """One shard's worth of input paths (sorted)."""

    index: int
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.paths).encode("utf-8", "surrogateescape")).hexdigest()


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def plan(paths: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE) -> list[Partition]:
    """Sorted paths -> partitions of ``shard_size`` (the last one may be smaller)."""
    if shard_size < 1:
        raise EmitError(f"--shard-size must be at least 1, got {shard_size}")
    return [Partition(i // shard_size, tuple(paths[i:i + shard_size]))
            for i in range(0, len(paths), shard_size)]


def metadata(identity: Identity, part: Partition) -> dict[bytes, bytes]:
    return {META_FORMAT: FORMAT.encode(), META_BACKBONE: identity.backbone.encode(),
            META_BACKBONE_KEY: identity.key.encode(), META_DIM: str(identity.dim).encode(),
            META_PART: str(part.index).encode(), META_PART_SHA256: part.digest.encode()}


def write_shard(out_dir: Path, part: Partition, rows: pa.Table, identity: Identity) -> Path:
    """Write ``rows`` (the partition's rows, any order, extra columns ignored) as its shard.

    Checked first: every path of the partition exactly once, and vectors of the right width, so
    a shard on disk is always a whole, correct partition.
    """
    rows = rows.select(SCHEMA.names).cast(SCHEMA).sort_by("path")
    got = rows.column("path").to_pylist()
    if got != list(part.paths):  # both sorted: equal means each path exactly once
        missing = sorted(set(part.paths) - set(got))[:3]
        raise EmitError(f"{out_dir / part.name}: the engine returned {len(got)} rows for "
                        f"{len(part.paths)} paths (missing e.g. {missing}); nothing was written, "
                        "rerun the job")
    lengths = pc.list_value_length(rows.column("features")).drop_null()
    if len(lengths) and (pc.min(lengths).as_py() != identity.dim or pc.max(lengths).as_py() != identity.dim):
        raise EmitError(f"{out_dir / part.name}: features are not all {identity.dim} wide; "
                        "the backbone changed during the run, rerun the job")
    table = rows.replace_schema_metadata(metadata(identity, part))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write_bytes(out_dir / part.name, buf.getvalue())


def read_identity(path: Path) -> tuple[Identity | None, dict[bytes, bytes], int]:
    """A shard's identity (None if it has none), its metadata and its row count."""
    meta_file = pq.read_metadata(path)
    meta = dict(meta_file.metadata or {})
    ident = None
    if META_BACKBONE_KEY in meta:
        ident = Identity(meta.get(META_BACKBONE, b"").decode(), meta[META_BACKBONE_KEY].decode(),
                         int(meta.get(META_DIM, b"0")))
    return ident, meta, meta_file.num_rows


def shard_is_done(out_dir: Path, part: Partition, identity: Identity) -> bool:
    """True if the partition's shard is on disk, readable, and of this partition and backbone."""
    path = out_dir / part.name
    if not path.is_file():
        return False
    try:
        ident, meta, rows = read_identity(path)
    except (OSError, pa.ArrowException):
        return False  # not emit's (emit's are renamed into place whole): rewrite it
    return (ident is not None and ident.key == identity.key
            and meta.get(META_PART_SHA256) == part.digest.encode() and rows == len(part.paths))


def existing_shards(out_dir: Path) -> dict[int, Path]:
    if not out_dir.is_dir():
        return {}
    found = {}
    for path in out_dir.glob(SHARD_GLOB):
        match = _SHARD_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def check_out_dir(out_dir: Path, identity: Identity, n_parts: int) -> None:
    """Refuse an output folder that holds another backbone's shards, or more shards than this
    job writes (a run over other inputs): mixing them would give a reader a wrong set of rows."""
    for index, path in sorted(existing_shards(out_dir).items()):
        try:
            ident, _, _ = read_identity(path)
        except (OSError, pa.ArrowException):
            continue  # unreadable: rewritten if it is one of ours, refused below if not
        if ident is not None and ident.key != identity.key:
            raise EmitError(f"{out_dir}: {path.name} holds features of backbone {ident.backbone} "
                            f"(key {ident.key}), not {identity.backbone} (key {identity.key}); "
                            "write to another --out folder, or delete this one to start over")
        if index >= n_parts:
            raise EmitError(f"{out_dir}: {path.name} is beyond the {n_parts} shard(s) of this job, so "
                            "the folder holds a run over other inputs (or another --shard-size); "
                            "write to another --out folder, or delete this one to start over")


def read_features(out_dir: str | os.PathLike[str]) -> tuple[pa.Table, Identity]:
    """All rows of a shard folder (columns of :data:`SCHEMA`) and their identity; refuses a
    folder without shards, or with shards of more than one backbone."""
    out = Path(out_dir)
    shards = existing_shards(out)
    if not shards:
        raise EmitError(f"{out}: no {SHARD_GLOB} feature shards; run `emit features extract --out {out}`")
    tables, identity = [], None
    for _, path in sorted(shards.items()):
        try:
            ident, _, _ = read_identity(path)
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise EmitError(f"{path}: unreadable feature shard ({exc}); rerun `emit features "
                            f"extract --out {out}` to rewrite it") from exc
        if ident is None:
            raise EmitError(f"{path}: not an emit feature shard (no {META_BACKBONE_KEY.decode()} "
                            "metadata); remove it from the folder")
        if identity is not None and ident.key != identity.key:
            raise EmitError(f"{path}: features of backbone key {ident.key}, but other shards in {out} "
                            f"have {identity.key}; re-extract into an empty folder")
        identity = ident
        tables.append(table.select(SCHEMA.names).cast(SCHEMA))
    assert identity is not None
    return pa.concat_tables(tables), identity
