"""``emit pair train`` under torchrun: data-parallel only with --tune-full-model; refused otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from emit.config import PairingConfig
from emit.pairing.jobs import train_job
from emit.problems import EmitError


def test_pair_train_without_fine_tuning_is_refused_under_torchrun(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Launched as one of two ranks, plain pairing would run twice and race on one model folder:
    it stops before reading anything, saying what to do."""
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(EmitError, match="only with --tune-full-model"):
        train_job(tmp_path / "no-data", tmp_path / "m", PairingConfig())
    assert not (tmp_path / "m").exists()


def test_an_absent_gpu_is_refused_before_any_work(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EmitError, match="--device cuda asked for a GPU"):
        train_job(tmp_path / "no-data", tmp_path / "m", PairingConfig(), device="cuda")
    assert not (tmp_path / "m").exists()
