"""What both engines share: the job's settings (:class:`ExtractJob`) and the
:class:`ShardWriter` that turns their rows into whole shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from emit.problems import EmitError
from emit.scale.extract import CACHED
from emit.scale.shards import DEFAULT_SHARD_SIZE, Identity, Partition, write_shard

DEFAULT_BATCH_SIZE = 32


@dataclass
class ExtractJob:
    """What to extract and how; the CLI's flags one to one."""

    inputs: Sequence[str | os.PathLike[str]]
    out: Path
    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    engine: str = "local"
    device: str = "auto"
    cache_dir: str | None = None
    batch_size: int | None = None  # None: 32, or on a local GPU what fits its free memory
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1  # ray: actors in the pool
    cpus_per_worker: float = 1.0  # ray: CPUs per actor (also its torch and decode threads)
    gpus_per_worker: float = 0.0  # ray: GPUs per actor
    threads: int | None = None  # local: decode threads (torch's are set by the caller)
    progress: bool = True
    # called after each shard is written (tests use it to stop a job half-way)
    on_shard: Callable[[Partition], None] | None = field(default=None, repr=False)

    def extractor_kwargs(self, *, decode_threads: int, torch_threads: int | None) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights, "device": self.device,
                "cache_dir": self.cache_dir, "decode_threads": decode_threads,
                "torch_threads": torch_threads}


class ShardWriter:
    """Collects an engine's rows per partition and writes each partition once it is whole."""

    def __init__(self, job: ExtractJob, parts: Sequence[Partition], identity: Identity, bar: tqdm) -> None:
        self.job, self.identity, self.bar = job, identity, bar
        self.parts = {p.index: p for p in parts}
        self.pending: dict[int, list[pa.Table]] = {}
        self.counts: dict[int, int] = {}
        self.rows = self.errors = self.cached = 0

    def add(self, rows: pa.Table, part: Partition | None = None) -> None:
        """Rows of ``part``, or of the partitions named by their ``part`` column."""
        self.bar.update(rows.num_rows)
        if part is not None:
            self._add(part.index, rows)
            return
        column = rows.column("part")
        for index in pc.unique(column).to_pylist():
            self._add(int(index), rows.filter(pc.equal(column, index)))

    def _add(self, index: int, rows: pa.Table) -> None:
        self.pending.setdefault(index, []).append(rows)
        self.counts[index] = self.counts.get(index, 0) + rows.num_rows
        part = self.parts[index]
        if self.counts[index] >= len(part.paths):
            table = pa.concat_tables(self.pending.pop(index))
            write_shard(self.job.out, part, table, self.identity)
            self.rows += table.num_rows
            self.errors += table.num_rows - table.column("error").null_count
            self.cached += sum(table.column(CACHED).to_pylist())
            self.parts.pop(index)
            if self.job.on_shard is not None:
                self.job.on_shard(part)

    def check_done(self) -> None:
        if self.parts:
            names = ", ".join(p.name for p in list(self.parts.values())[:3])
            raise EmitError(f"{self.job.out}: the engine finished without all rows of {names}; "
                            "nothing partial was written: rerun the job to complete them")
