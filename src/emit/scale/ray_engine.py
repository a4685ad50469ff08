"""The Ray engine: the job's partitions as one Ray Dataset, mapped by
:class:`~emit.scale.extract.ExtractBatch` on a fixed pool of actors.

Each actor loads the backbone once (``map_batches`` with a callable class and
``compute=ActorPoolStrategy(size=workers)``), with ``num_gpus`` per actor when asked. Rows come
back to the driver as they are done, tagged with their partition; the driver writes a shard as
soon as its partition is whole (:class:`~emit.scale.jobs.ShardWriter`), so a killed job keeps
every shard it wrote. Ray is imported only here: without it, ``--engine ray`` says what to install.

Ray joins the cluster at ``RAY_ADDRESS`` (``ray start --head`` on a laptop, or a cluster's
head), or starts one on this machine; a job run inside an already initialised Ray uses that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from emit.problems import EmitError
from emit.scale.extract import ExtractBatch
from emit.scale.shards import Partition

if TYPE_CHECKING:
    from emit.scale.writer import ExtractJob, ShardWriter

log = logging.getLogger("emit")
INSTALL_HINT = "pip install 'emit[scale]'"


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise EmitError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT} "
                        "(or use --engine local)")


def check_device(job: ExtractJob) -> None:
    """Ray gives an actor a GPU only when asked for one: say so before starting anything."""
    device = str(job.device).strip().lower()
    if device.startswith("cuda") and not job.gpus_per_worker:
        raise EmitError(f"--device {job.device} with --engine ray needs --gpus-per-worker (e.g. 1): "
                        "Ray hides the GPUs from an actor that asked for none")
    if device.startswith("cuda:"):
        raise EmitError(f"--device {job.device}: with --engine ray, Ray chooses each actor's GPU; "
                        "use --device cuda or auto")


def check_resources(cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Refuse an actor that no node of the cluster can hold (say --gpus-per-worker 1 on a cluster
    without GPUs), which Ray would otherwise wait for without end. An autoscaling cluster that
    adds such nodes on demand opts out with EMIT_RAY_WAIT_FOR_RESOURCES=1."""
    import ray

    if os.environ.get("EMIT_RAY_WAIT_FOR_RESOURCES") == "1":
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, need, flag in (("GPU", gpus_per_worker, "--gpus-per-worker"),
                             ("CPU", cpus_per_worker, "--cpus-per-worker")):
        most = max((float(r.get(name, 0)) for r in nodes), default=0.0)
        if need and most < need:
            raise EmitError(f"{flag} {need:g}: no node of the Ray cluster has {need:g} {name}(s) (the "
                            f"largest has {most:g}), so the job would wait for ever; lower {flag}, add such "
                            "nodes, or set EMIT_RAY_WAIT_FOR_RESOURCES=1 for a cluster that adds them "
                            "on demand")


@contextlib.contextmanager
def ray_session(progress: bool, cpus_per_worker: float, gpus_per_worker: float) -> Iterator[Any]:
    """Ray for one emit job (yields the ``ray`` module): the cluster at RAY_ADDRESS, or one
    started here and shut down afterwards; actors no node can hold refused; Ray Data's own bars
    and plan lines off (emit counts its rows); an actor's EmitError raised as emit's message."""
    require_ray()
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=progress, logging_level=logging.WARNING)
    try:
        check_resources(cpus_per_worker, gpus_per_worker)
        if not log.isEnabledFor(logging.DEBUG):  # Ray Data's plan and timing lines, unless -v
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, EmitError):  # an actor's clear message, not Ray's traceback
            raise EmitError(f"a Ray worker stopped the job: {exc.cause}") from exc
        raise
    finally:
        if started:
            ray.shutdown()


def actor_options(cpus_per_worker: float, gpus_per_worker: float) -> dict[str, Any]:
    """An actor's resources for ``map_batches``: GPUs only when asked for."""
    options: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if gpus_per_worker:
        options["num_gpus"] = gpus_per_worker
    return options


def actor_device(device: str, gpus_per_worker: float) -> str:
    """The device an actor runs on: 'auto' means the CPU for an actor given no GPU, which must
    not take one that it happens to see."""
    return "cpu" if not gpus_per_worker and str(device).strip().lower() == "auto" else str(device)


def run_ray(job: ExtractJob, parts: Sequence[Partition], writer: ShardWriter) -> None:
    with ray_session(job.progress, job.cpus_per_worker, job.gpus_per_worker) as ray:
        items = [{"path": p, "part": part.index} for part in parts for p in part.paths]
        threads = max(1, int(job.cpus_per_worker))
        kwargs = job.extractor_kwargs(decode_threads=threads, torch_threads=threads)
        kwargs["device"] = actor_device(job.device, job.gpus_per_worker)
        # ~8 blocks an actor: the pool stays busy to the end, without a task per batch
        blocks = max(1, min(-(-len(items) // job.batch_size), 8 * job.workers))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            ExtractBatch,
            fn_constructor_kwargs=kwargs,
            batch_size=job.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.workers), udf_modifying_row_count=False,
            **actor_options(job.cpus_per_worker, job.gpus_per_worker),
        )
        for rows in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(rows)
