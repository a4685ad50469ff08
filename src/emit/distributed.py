"""Data-parallel training under ``torchrun``: the process group, rank helpers and the gathers.

``torchrun --nproc_per_node N -m emit ...`` starts N copies of a command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`process_group`
joins them (gloo on the CPU, NCCL on CUDA) for the length of a training job; without those
variables, or with ``WORLD_SIZE=1``, it does nothing, and every helper here is then the
single-process identity, so a plain run stays byte-for-byte what it was.

Contrastive losses must see the global batch, or their negatives get easier as processes are
added. The pattern is open_clip's ``gather_features`` + ``local_loss``: every rank gathers every
rank's embeddings, computes the loss of *its own* rows against all gathered columns, and
backpropagates. :func:`gather_with_grad` is the gather whose backward pass sums, over ranks, the
gradient each rank's loss sends to a slice, and hands every rank the part for its own rows; after
that, summing the parameter gradients over ranks (:func:`all_reduce_gradients`) gives exactly the
gradient of one process on the concatenated batch. Constants (cached image features, ids,
weights) only need :func:`gather_constant`, and token lists :func:`gather_objects`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from emit.problems import EmitError

log = logging.getLogger("emit")

# What torchrun (and any launcher of torch.distributed's env:// rendezvous) sets.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

def timeout() -> datetime.timedelta:
    """How long a rank waits at a collective (e.g. for rank 0's save): ``EMIT_DIST_TIMEOUT_MINUTES``,
    default 30 (gloo's own default)."""
    value = os.environ.get("EMIT_DIST_TIMEOUT_MINUTES", "30")
    try:
        minutes = float(value)
    except ValueError as exc:
        raise EmitError(f"EMIT_DIST_TIMEOUT_MINUTES={value!r} is not a number of minutes") from exc
    if minutes <= 0:
        raise EmitError(f"EMIT_DIST_TIMEOUT_MINUTES={value!r} must be positive")
    return datetime.timedelta(minutes=minutes)


def launched_world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError as exc:
        raise EmitError(f"WORLD_SIZE={value!r} is not a number; launch with torchrun, or unset it") from exc


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return launched_world_size() > 1


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the rank that writes files and shows progress (rank 0, or the only process)."""
    return rank() == 0


def backend_for(device: str | torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors (the backends that support them)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[bool]:
    """Join the launcher's process group for the body, and leave it afterwards.

    Yields whether training is distributed. Does nothing (yields False) without a launcher; a
    group that is already up (a test, or an outer job) is used as it is and left up.
    """
    if dist.is_available() and dist.is_initialized():
        yield active()
        return
    if not launched():
        yield False
        return
    if not dist.is_available():
        raise EmitError("this PyTorch was built without torch.distributed; run without torchrun")
    missing = [v for v in LAUNCH_VARIABLES if not os.environ.get(v)]
    if missing:
        raise EmitError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; "
                        "start the command with `torchrun --nproc_per_node N -m emit ...`")
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise EmitError("NCCL needs a CUDA GPU and none is visible; train on the CPU (gloo) instead")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout())
    _share_cores()
    log.info("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def _share_cores() -> None:
    """At most this process's share of the node's cores for torch's threads: N processes that
    each took every core would slow each other down (torchrun only sets OMP_NUM_THREADS)."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    share = max(1, (os.cpu_count() or 1) // max(per_node, 1))
    if torch.get_num_threads() > share:
        torch.set_num_threads(share)


def barrier() -> None:
    """Wait for every rank (e.g. for rank 0's checkpoint); nothing without a group."""
    if active():
        dist.barrier()


def shard(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """Rank ``rank_``'s contiguous share of a global batch of ``n`` rows, ``n`` a multiple of ``world``.

    Contiguous rather than strided (as DistributedSampler's), so the gathered batch is the global
    batch in its original order: mining's ties and the loss's sums fall as in one process.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if n % w:
        raise ValueError(f"a global batch of {n} does not split over {w} ranks")
    size = n // w
    return slice(r * size, (r + 1) * size)


# reduce_scatter_single is the newer name (PyTorch 2.14); reduce_scatter_tensor before it.
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of every rank's loss."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Rank s's loss sends grad[r-slice] to rank r's rows; their sum is d(total loss)/d(rows of r).
        # A reduce-scatter hands each rank just that sum: half an all-reduce's traffic.
        grad = grad.contiguous()
        if _REDUCE_SCATTER is None:  # an old PyTorch: all-reduce, and keep this rank's slice
            total = grad.clone()
            dist.all_reduce(total)
            start = dist.get_rank() * ctx.rows
            return total[start:start + ctx.rows]
        mine = grad.new_empty((ctx.rows, *grad.shape[1:]))
        _REDUCE_SCATTER(mine, grad)
        return mine


def _check_shapes(x: torch.Tensor) -> None:
    # gloo and NCCL need equal shapes; a mismatch would hang or fail deep inside them.
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        found = ", ".join(str(tuple(s.tolist())) for s in shapes)
        raise EmitError(f"the ranks' batches differ in shape ({found}); every rank must get the same "
                        "batch shape: this is a bug in emit's sharding, please report it")


def gather_with_grad(x: torch.Tensor, *, check: bool = False) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 (rank order), with gradients flowing back to
    each rank's own rows summed over all ranks' losses; ``x`` itself without a group."""
    if not active():
        return x
    if check:
        _check_shapes(x)
    out: torch.Tensor = _GatherWithGrad.apply(x)
    return out


def gather_constant(x: torch.Tensor, *, check: bool = False) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0, without gradients (ids, weights, cached
    features); ``x`` itself without a group."""
    if not active():
        return x
    if check:
        _check_shapes(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list of picklable items, concatenated in rank order (e.g. token lists)."""
    if not active():
        return items
    lists: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(lists, items)
    return [x for part in lists for x in part]


def all_sum(value: float) -> float:
    """``value`` summed over ranks."""
    if not active():
        return value
    on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    t = torch.tensor([value], dtype=torch.float64,
                     device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a validation score only rank 0 computes)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def same_everywhere(what: str, value: str, fix: str) -> None:
    """An error on every rank unless all ranks hold the same ``value`` (a hash, a fingerprint)."""
    if not active():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise EmitError(f"the {dist.get_world_size()} processes disagree on {what}; {fix}")


def digest(obj: Any) -> str:
    """A short hash of ``obj``'s repr, to compare large things across ranks cheaply."""
    return hashlib.sha256(repr(obj).encode("utf-8")).hexdigest()


def broadcast_parameters(modules: Iterable[torch.nn.Module | None], src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's modules (so all start equal)."""
    if not active():
        return
    for module in modules:
        if module is None:
            continue
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], *, same_graph: bool = False) -> None:
    """Sum every parameter's gradient over ranks, in place (nothing without a group).

    A parameter without a gradient on some rank (an empty local batch) joins with zeros; one
    without a gradient on every rank keeps none, so the optimiser skips it as one process would.
    ``same_graph``: every rank ran the same graph, so the same parameters have gradients, and
    the exchange that finds out is skipped.
    """
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    if same_graph:
        used = [p for p in params if p.grad is not None]
    else:
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=params[0].device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        used = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    # One flat all-reduce per dtype rather than one per tensor: far fewer round trips.
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in used:
        by_dtype.setdefault(p.grad.dtype, []).append(p)  # type: ignore[union-attr]
    for group in by_dtype.values():
        grads = [p.grad for p in group]
        flat = torch.cat([g.reshape(-1) for g in grads])  # type: ignore[union-attr]
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()  # type: ignore[union-attr]
            g.copy_(flat[offset:offset + n].view_as(g))  # type: ignore[union-attr]
            offset += n


def optimiser_params(optimiser: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter an optimiser steps (a learnable temperature the caller added included)."""
    return [p for group in optimiser.param_groups for p in group["params"]]


def rank_seed(base: int) -> int:
    """A seed for this rank's own randomness (dropout, augmentation): ``base`` on rank 0, so a
    single process keeps its seeds; distinct on the other ranks, so their masks differ."""
    r = rank()
    return base if r == 0 else (base + 1_000_000_007 * r) % (2**63 - 1)
