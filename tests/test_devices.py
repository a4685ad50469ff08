"""Device choice: ``auto`` takes what is there, an absent device is a clear error, and the CPU
path is untouched (no autocast, no copies)."""

from __future__ import annotations

import pytest
import torch

from emit.cli import main
from emit.devices import autocast_dtype, default_batch_size, inference_context, resolve_device, to_device
from emit.problems import EmitError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_auto_is_cuda_when_present_else_the_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_a_clear_error(name: str) -> None:
    with pytest.raises(EmitError, match=f"--device {name} asked for a GPU.*use --device cpu or auto"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x", ""])
def test_a_name_that_is_no_device_is_refused(name: str) -> None:
    if name == "":
        assert resolve_device(name) == resolve_device("auto")  # empty: the default
        return
    with pytest.raises(EmitError, match=r"not a device|emit runs on"):
        resolve_device(name)


def test_the_cpu_path_is_full_precision_and_copies_nothing() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    x = torch.randn(3, 4)
    assert to_device(x, cpu) is x
    assert default_batch_size(cpu, 32) == 32
    with inference_context(cpu):
        y = torch.nn.Linear(4, 2)(x)
    assert y.dtype == torch.float32 and torch.is_inference(y)


@no_gpu
def test_cli_commands_refuse_an_absent_gpu_without_a_traceback(tmp_path, caplog) -> None:
    with caplog.at_level("ERROR", logger="emit"):
        code = main(["features", "extract", "--device", "cuda", "--out", str(tmp_path / "f"), str(tmp_path)])
    assert code == 2 and "asked for a GPU" in caplog.text
