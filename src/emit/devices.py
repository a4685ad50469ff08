"""Where models run: ``--device auto|cpu|cuda|cuda:N|mps``, resolved once, checked clearly.

``auto`` takes CUDA when PyTorch sees a GPU, then Apple's MPS, else the CPU. Asking for a
device that is not there is an :class:`~emit.problems.EmitError` that says what was found and
what to do, never a traceback from deep inside PyTorch.

On CUDA the backbone's forward pass runs under autocast (bf16 where the GPU supports it, else
fp16), batches are copied from pinned memory without blocking, and the feature vectors come
back as float32, so a GPU run and a CPU run write the same kind of cache entry. The feature
cache is keyed by the backbone's identity, not the device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from emit.problems import EmitError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` for ``name``; refuses one that is not there with a message."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise EmitError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = ("this PyTorch was built without CUDA" if not built
                   else f"PyTorch (CUDA {built}) finds no GPU: check the driver with nvidia-smi "
                        "and CUDA_VISIBLE_DEVICES")
            raise EmitError(f"--device {name} asked for a GPU, but {why}; use --device cpu or auto")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise EmitError(f"--device {name}: there are {count} GPU(s), numbered 0 to {count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise EmitError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto")
        return device
    raise EmitError(f"--device {name!r}: emit runs on cpu, cuda or mps")


def local_device(name: str | torch.device | None = "auto") -> torch.device:
    """:func:`resolve_device`, except that a bare ``cuda`` under torchrun means this process's
    GPU (``LOCAL_RANK``), so N ranks on one node take N GPUs instead of all sharing the first."""
    device = resolve_device(name)
    local = os.environ.get("LOCAL_RANK")
    explicit = isinstance(name, str) and ":" in name
    if device.type == "cuda" and local is not None and not explicit:
        index = int(local)
        if index >= torch.cuda.device_count():
            raise EmitError(f"torchrun started local rank {index}, but this node has "
                            f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node up to that")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision for a backbone's forward pass on ``device``: bf16 on a CUDA GPU that
    supports it, else fp16; None (full precision) on the CPU and MPS, where results stay as they
    always were."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference_context(device: torch.device, autocast: bool = True) -> Iterator[None]:
    """``torch.inference_mode``, plus autocast on CUDA when ``autocast``."""
    dtype = autocast_dtype(device) if autocast else None
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU batch to ``device``: pinned and non-blocking for CUDA, a no-op for the CPU."""
    if device.type == "cpu":
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def default_batch_size(device: torch.device, cpu_batch: int, image_size: int = 224) -> int:
    """A batch size that fits: the CPU's as given; on CUDA scaled to the free memory (about
    40 MiB of activations per 224-px image under autocast for the backbones emit ships, with
    half the free memory kept back), between ``cpu_batch`` and 512."""
    if device.type != "cuda":
        return cpu_batch
    free, _total = torch.cuda.mem_get_info(device)
    per_image = 40 * 2**20 * (image_size / 224) ** 2
    return int(max(cpu_batch, min(512, (free / 2) // per_image)))


def describe(device: torch.device) -> dict[str, Any]:
    """What ran where, for a run's record: the device and, on CUDA, the GPU's name."""
    out: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        dtype = autocast_dtype(device)
        out["autocast"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    return out
