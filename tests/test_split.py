"""Deterministic product-level split, and ``emit split`` with materialised folders."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.cli import main
from emit.split import in_validation, split_ids

IDS = [f"{600000000000 + 37 * k}" for k in range(2000)]


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()  # main() sets the thread count for the process
    yield
    torch.set_num_threads(before)


def test_split_is_deterministic():
    assert split_ids(IDS, 0.2) == split_ids(list(IDS), 0.2)
    assert [in_validation(i, 0.2) for i in IDS] == [in_validation(i, 0.2) for i in IDS]


def test_split_is_a_partition_in_input_order():
    train, val = split_ids(IDS, 0.3, seed=4)
    assert sorted(train + val) == sorted(IDS)
    assert not set(train) & set(val)
    order = {pid: k for k, pid in enumerate(IDS)}
    assert [order[i] for i in train] == sorted(order[i] for i in train)
    assert [order[i] for i in val] == sorted(order[i] for i in val)


def test_split_does_not_depend_on_input_order():
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    train_a, val_a = split_ids(IDS, 0.2, seed=1)
    train_b, val_b = split_ids(shuffled, 0.2, seed=1)
    assert set(train_a) == set(train_b) and set(val_a) == set(val_b)


def test_adding_products_never_moves_existing_ones():
    old = IDS[:500]
    train_old, val_old = split_ids(old, 0.2)
    train_new, val_new = split_ids(IDS + [f"new-{k}" for k in range(300)], 0.2)
    assert set(train_old) <= set(train_new)
    assert set(val_old) <= set(val_new)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_fraction_is_roughly_respected(fraction):
    _, val = split_ids(IDS, fraction)
    # binomial sd is at most sqrt(0.25 / 2000) ~ 0.011; the hash is fixed, so this is exact
    assert abs(len(val) / len(IDS) - fraction) < 0.04


def test_seed_changes_the_split_and_zero_fraction_keeps_everything():
    assert split_ids(IDS, 0.2, seed=0)[1] != split_ids(IDS, 0.2, seed=1)[1]
    assert split_ids(IDS, 0.0) == (IDS, [])
    with pytest.raises(ValueError):
        split_ids(IDS, 1.0)
    with pytest.raises(ValueError):
        split_ids(IDS, -0.1)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20), st.floats(0, 0.99), st.floats(0, 0.99), st.integers(0, 5))
def test_larger_fraction_only_adds_to_validation(pid, f1, f2, seed):
    low, high = sorted((f1, f2))
    if in_validation(pid, low, seed):
        assert in_validation(pid, high, seed)


# ---- emit split ----------------------------------------------------------------------------


def make_data(root: Path, n: int = 15) -> Path:
    """Product folders with a profile and two tiny image files each."""
    for k in range(n):
        folder = root / f"{700000 + k}"
        folder.mkdir(parents=True)
        names = [f"{folder.name}_{i}.jpg" for i in range(2)]
        for name in names:
            (folder / name).write_bytes(b"fake image " + name.encode())
        profile = {"optional_tags": ["黑色", "白色"], "imgs_tags": [{names[0]: "黑色"}, {names[1]: "白色"}]}
        (folder / "profile.json").write_text(json.dumps(profile, ensure_ascii=False), encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st_ = p.lstat()
            out[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns, p.read_bytes())
    return out


def test_cli_split_writes_json(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out = tmp_path / "split.json"
    assert main(["split", str(data), "--out", str(out), "--val-fraction", "0.3", "--seed", "2",
                 "--threads", "1"]) == 0
    written = json.loads(out.read_text(encoding="utf-8"))
    ids = sorted(p.name for p in data.iterdir())
    assert (written["train"], written["val"]) == split_ids(ids, 0.3, 2)
    assert written["val_fraction"] == 0.3 and written["seed"] == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == len(written["train"]) and summary["val"] == len(written["val"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_split_materialises_symlinks_without_touching_the_data(tmp_path):
    data = make_data(tmp_path / "data")
    before = snapshot(data)
    into = tmp_path / "parts"
    out = tmp_path / "split.json"
    argv = ["split", str(data), "--out", str(out), "--val-fraction", "0.4", "--materialise", "symlink",
            "--into", str(into), "--threads", "1"]
    assert main(argv) == 0
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["train"] and written["val"]
    for part in ("train", "val"):
        entries = sorted(p.name for p in (into / part).iterdir())
        assert entries == sorted(written[part])
        for pid in entries:
            link = into / part / pid
            assert link.is_symlink()
            assert link.resolve() == (data / pid).resolve()
            assert sorted(p.name for p in link.iterdir()) == sorted(p.name for p in (data / pid).iterdir())
    assert snapshot(data) == before, "the original folders must be untouched"
    # rerunning is harmless (resumable) and still leaves the data alone
    assert main(argv) == 0
    assert snapshot(data) == before
    assert sorted(p.name for p in (into / "train").iterdir()) == sorted(written["train"])


def test_cli_split_copy_makes_real_folders(tmp_path):
    data = make_data(tmp_path / "data", n=6)
    before = snapshot(data)
    into = tmp_path / "parts"
    assert main(["split", str(data), "--out", str(tmp_path / "s.json"), "--val-fraction", "0.5",
                 "--materialise", "copy", "--into", str(into), "--threads", "1"]) == 0
    copied = [p for part in ("train", "val") for p in (into / part).iterdir()]
    assert len(copied) == 6
    for p in copied:
        assert p.is_dir() and not p.is_symlink()
        contents = {k: v[2] for k, v in snapshot(p).items()}
        assert contents == {k: v[2] for k, v in snapshot(data / p.name).items()}
    assert snapshot(data) == before


def test_cli_split_materialise_needs_into(tmp_path, caplog):
    data = make_data(tmp_path / "data", n=3)
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["split", str(data), "--out", str(tmp_path / "s.json"), "--materialise", "symlink",
                     "--threads", "1"])
    assert code == 2
    assert "--into" in caplog.text


def test_cli_split_missing_data(tmp_path, caplog):
    missing = tmp_path / "nowhere"
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["split", str(missing), "--out", str(tmp_path / "s.json"), "--threads", "1"])
    assert code == 2
    assert str(missing) in caplog.text
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("fraction", ["1", "1.5", "-0.2"])
def test_cli_split_bad_fraction_is_a_clean_error(tmp_path, caplog, fraction):
    data = make_data(tmp_path / "data", n=2)
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["split", str(data), "--out", str(tmp_path / "s.json"), "--val-fraction", fraction,
                     "--threads", "1"])
    assert code == 2
    assert "fraction" in caplog.text


def test_cli_split_move_only_when_asked(tmp_path):
    from emit.cli import main
    from emit.data.synthetic import make_products

    data = make_products(tmp_path / "data", 6, seed=2, size=32)
    ids = sorted(p.name for p in data.iterdir())
    assert main(["split", str(data), "--out", str(tmp_path / "s.json"), "--val-fraction", "0.5",
                 "--materialise", "move", "--into", str(tmp_path / "parts"), "-q"]) == 0
    moved = sorted(p.name for part in ("train", "val") for p in (tmp_path / "parts" / part).iterdir())
    assert moved == ids and not any(data.iterdir())
    assert not any(p.is_symlink() for p in (tmp_path / "parts").rglob("*"))
