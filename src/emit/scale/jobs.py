"""``emit features extract`` as a library call: plan the shards, skip those a previous run
finished, compute the rest with an engine, and summarise.

Both engines run :class:`~emit.scale.extract.ExtractBatch` on the same partitions and hand
whole partitions to :func:`~emit.scale.shards.write_shard`, so they write the same files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from emit.devices import default_batch_size, resolve_device
from emit.files import atomic_write_json, remove_stale_temps
from emit.problems import EmitError
from emit.scale.inputs import expand_inputs
from emit.scale.shards import SUCCESS, Identity, Partition, check_out_dir, plan, shard_is_done
from emit.scale.writer import DEFAULT_BATCH_SIZE, ExtractJob, ShardWriter

log = logging.getLogger("emit")
ENGINES = ("local", "ray")
__all__ = ["ENGINES", "ExtractJob", "extract_to_shards"]


def extract_to_shards(job: ExtractJob) -> dict[str, Any]:
    """Run ``job``; returns the summary that is also written to ``OUT/_SUCCESS.json``."""
    if job.engine not in ENGINES:
        raise EmitError(f"--engine {job.engine!r}: use one of {', '.join(ENGINES)}")
    if job.engine == "ray":
        from emit.scale.ray_engine import check_device, require_ray

        require_ray()  # before any work: a missing extra is said at once
        check_device(job)
    else:
        resolve_device(job.device)  # this machine's device: an absent one is said at once
    paths = expand_inputs(job.inputs)
    if not paths:
        raise EmitError(f"no image files in {', '.join(map(str, job.inputs))}; give image files, "
                        "folders of images or manifests (.txt, .csv or .parquet with a 'path' column)")
    job.out = Path(job.out)
    parts = plan(paths, job.shard_size)
    start = time.perf_counter()
    local = None
    if job.engine == "local":
        from emit.scale.extract import ExtractBatch

        local = ExtractBatch(**job.extractor_kwargs(decode_threads=job.threads or os.cpu_count() or 1,
                                                    torch_threads=None))
        identity = local.identity
        job.batch_size = job.batch_size or default_batch_size(local.device, DEFAULT_BATCH_SIZE,
                                                              local.backbone.image_size)
    else:
        identity = _identity(job.backbone, job.weights)
        job.batch_size = job.batch_size or DEFAULT_BATCH_SIZE  # chosen here, not where actors run
    check_out_dir(job.out, identity, len(parts))
    job.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(job.out)  # temporaries of a killed run
    (job.out / SUCCESS).unlink(missing_ok=True)  # the folder is not complete until the end
    todo = [p for p in parts if not shard_is_done(job.out, p, identity)]
    skipped = len(parts) - len(todo)
    if skipped:
        log.info("%s: %d of %d shards already written; computing the other %d", job.out, skipped,
                 len(parts), len(todo))
    bar = tqdm(total=len(paths), initial=len(paths) - sum(len(p.paths) for p in todo), unit="img",
               desc=f"features {job.backbone} ({job.engine})", disable=not job.progress)
    writer = ShardWriter(job, todo, identity, bar)
    compute_start = time.perf_counter()
    try:
        if local is not None:
            _run_local(local, todo, job.batch_size, writer)
        elif todo:
            from emit.scale.ray_engine import run_ray

            run_ray(job, todo, writer)
        writer.check_done()
    finally:
        bar.close()
        if local is not None:
            local.close()
    seconds = time.perf_counter() - compute_start
    summary = {
        "out": str(job.out), "engine": job.engine, "workers": job.workers if job.engine == "ray" else 1,
        "device": (str(local.device) if local is not None
                   else "cpu" if not job.gpus_per_worker and job.device == "auto" else job.device),
        "backbone": identity.backbone,
        "backbone_key": identity.key, "dim": identity.dim, "rows": len(paths),
        "errors": _count_errors(job.out, parts), "shards": len(parts), "shards_written": len(todo),
        "shards_skipped": skipped, "rows_computed": writer.rows, "errors_computed": writer.errors,
        "cached": writer.cached, "seconds": round(seconds, 3),
        "images_per_s": round(writer.rows / seconds, 2) if seconds > 0 and writer.rows else None,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_json(job.out / SUCCESS, summary)
    return summary


def _identity(backbone: str, weights: str | None) -> Identity:
    from emit.vision.backbones import create_backbone

    made = create_backbone(backbone, weights)
    return Identity(backbone, made.key, made.dim)


def _run_local(extract: Any, parts: Sequence[Partition], batch_size: int, writer: ShardWriter) -> None:
    for part in parts:
        for i in range(0, len(part.paths), batch_size):
            writer.add(extract(pa.table({"path": list(part.paths[i:i + batch_size])})), part)


def _count_errors(out: Path, parts: Sequence[Partition]) -> int:
    """Error rows over every shard of the job, those of earlier runs included."""
    total = 0
    for part in parts:
        column = pq.read_table(out / part.name, columns=["error"]).column("error")
        total += len(column) - column.null_count
    return total
