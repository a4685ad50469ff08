"""Folder commits, their manifest, and the clean-up of what killed writers leave behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crash_helpers import count_steps, kill_at
from emit.commit import MANIFEST_FILE, TornFolderError, folder_commit, read_manifest, verify_folder
from emit.files import (
    JOURNAL_SUFFIX,
    LEGACY_TEMP_AGE_S,
    atomic_remove,
    atomic_write_text,
    recover_folder,
    remove_stale_temps,
    temp_path,
)
from emit.problems import EmitError


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- commits


def test_a_commit_shows_nothing_until_it_ends_then_everything(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with folder_commit(folder):
        atomic_write_text(folder / "a.txt", "A")
        atomic_write_text(folder / "sub" / "b.txt", "B")
        assert not (folder / "a.txt").exists() and not (folder / "sub" / "b.txt").exists()
    manifest = (folder / MANIFEST_FILE).read_text()
    assert _files(folder) == {"a.txt": "A", "sub/b.txt": "B", MANIFEST_FILE: manifest}
    assert set(read_manifest(folder) or {}) == {"a.txt", "sub/b.txt"}
    assert _hidden(folder) == []
    assert verify_folder(folder, fix="x") is True


def test_an_exception_inside_a_commit_keeps_every_old_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with folder_commit(folder):
        atomic_write_text(folder / "a.txt", "A1")
        atomic_write_text(folder / "b.txt", "B1")
    before = _files(folder)
    with pytest.raises(RuntimeError), folder_commit(folder):
        atomic_write_text(folder / "a.txt", "A2")
        atomic_remove(folder / "b.txt")
        raise RuntimeError("the writer fails half-way")
    assert _files(folder) == before and _hidden(folder) == []


def test_removals_nesting_and_only(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with folder_commit(folder):
        atomic_write_text(folder / "keep.txt", "k")
        atomic_write_text(folder / "old.txt", "o")
    with folder_commit(folder) as outer:
        atomic_remove(folder / "old.txt")
        with folder_commit(folder / "sub") as inner:  # a save() that commits alone, inside a bigger one
            assert inner is outer
            atomic_write_text(folder / "sub" / "x.txt", "x")
        assert not (folder / "sub" / "x.txt").exists()  # still staged: the outer commit decides
    assert set(_files(folder)) == {"keep.txt", "sub/x.txt", MANIFEST_FILE}
    # the old entries are merged in, the removed one is dropped
    assert set(read_manifest(folder) or {}) == {"keep.txt", "sub/x.txt"}
    with folder_commit(tmp_path, manifest=False, only=["out.json"]):
        atomic_write_text(tmp_path / "out.json", "1")
        atomic_write_text(tmp_path / "elsewhere.txt", "2")  # not named: written at once
        assert (tmp_path / "elsewhere.txt").exists() and not (tmp_path / "out.json").exists()
    assert (tmp_path / "out.json").read_text() == "1" and not (tmp_path / MANIFEST_FILE).exists()


def test_a_journal_left_by_a_killed_commit_is_finished_by_the_next_reader(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with folder_commit(folder):
        for name in "abc":
            atomic_write_text(folder / f"{name}.txt", "old")

    def write() -> None:
        with folder_commit(folder):
            for name in "abc":
                atomic_write_text(folder / f"{name}.txt", "new")

    total = count_steps(write)  # the loop below rebuilds the old folder before each kill
    seen = set()
    for step in range(1, total + 1):
        shutil.rmtree(folder)
        with folder_commit(folder):
            for name in "abc":
                atomic_write_text(folder / f"{name}.txt", "old")
        assert kill_at(step, write)
        journals = list(folder.glob(f".*{JOURNAL_SUFFIX}"))
        verify_folder(folder, fix="x")  # a reader: completes the commit first
        contents = {(folder / f"{n}.txt").read_text() for n in "abc"}
        assert len(contents) == 1, f"step {step}: a mix {contents}"
        seen.add((bool(journals), contents.pop()))
        assert not list(folder.glob(f".*{JOURNAL_SUFFIX}"))
    assert (True, "new") in seen and (False, "old") in seen  # killed before and after the commit point


def test_a_mixed_folder_is_refused_with_the_file_and_the_fix(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, text in ((a, "one"), (b, "two")):
        with folder_commit(folder):
            atomic_write_text(folder / "weights.bin", text + "-w")
            atomic_write_text(folder / "model.json", text + "-m")
    shutil.copy(b / "weights.bin", a / "weights.bin")  # the same size: only the hash tells
    with pytest.raises(TornFolderError) as info:
        verify_folder(a, fix="train it again")
    message = str(info.value)
    assert str(a / "weights.bin") in message and "train it again" in message
    (a / "model.json").unlink()
    with pytest.raises(TornFolderError, match="is missing"):
        verify_folder(a, fix="x", skip=("weights.bin",))
    legacy = tmp_path / "legacy"  # written before manifests: loaded as before
    legacy.mkdir()
    (legacy / "model.json").write_text("{}")
    assert verify_folder(legacy, fix="x") is False


def test_an_unreadable_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(EmitError, match="unreadable manifest"):
        verify_folder(tmp_path, fix="x")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=st.dictionaries(st.sampled_from(["a", "b", "c", "d/e"]), st.text("xyz", min_size=1, max_size=3),
                           min_size=1),
       new=st.dictionaries(st.sampled_from(["a", "b", "c", "d/e"]), st.text("xyz", min_size=1, max_size=3)),
       gone=st.sets(st.sampled_from(["a", "b", "c", "d/e"])),
       step=st.integers(1, 40))
def test_any_commit_killed_at_any_step_reads_as_all_old_or_all_new(tmp_path: Path, old, new, gone,
                                                                    step) -> None:
    folder = tmp_path / f"f{os.getpid()}-{time.monotonic_ns()}"
    with folder_commit(folder):
        for name, text in old.items():
            atomic_write_text(folder / name, text)
    gone = gone - set(new)

    def write() -> None:
        with folder_commit(folder):
            for name, text in new.items():
                atomic_write_text(folder / name, text)
            for name in gone:
                atomic_remove(folder / name)

    def state() -> dict[str, str]:  # what a reader sees: not the manifest, not hidden temporaries
        return {k: v for k, v in _files(folder).items()
                if k != MANIFEST_FILE and not any(part.startswith(".") for part in k.split("/"))}

    before = state()
    after = {k: v for k, v in {**before, **new}.items() if k not in gone}
    kill_at(step, write)
    verify_folder(folder, fix="x")
    assert state() in (before, after)
    write()  # the next writer: the killed one's temporaries go
    assert state() == after and _hidden(folder) == []
    shutil.rmtree(folder)


# --------------------------------------------------------------------------- temporaries of dead writers


def test_a_dead_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "final_json.json"
    # a writer that died: its pid is gone (a child that has exited and been reaped)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True)
    dead_pid = int(child.stdout)
    dead = Path(str(temp_path(target)).replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    dead.write_text("half")
    dead.chmod(0o600)
    # a writer that is still running, and one on another host sharing the disk
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = Path(str(temp_path(target)).replace(f"-{os.getpid()}-", f"-{sleeper.pid}-"))
        live.write_text("still writing")
        other_host = tmp_path / f".{target.name}.00000000-{dead_pid}-abcd.tmp"
        other_host.write_text("another machine")
        atomic_write_text(target, "new")
        assert target.read_text() == "new"
        assert not dead.exists()
        assert live.exists() and other_host.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(tmp_path) == [live]  # its writer is gone now


def test_an_old_emits_temporary_is_removed_once_it_is_old(tmp_path: Path) -> None:
    recent = tmp_path / ".final_json.json.k2j4h1x0.tmp"  # mkstemp's name: no writer recorded
    stale = tmp_path / ".final_json.json.a8d7f6s5.tmp"
    for path in (recent, stale):
        path.write_text("x")
    past = time.time() - LEGACY_TEMP_AGE_S - 60
    os.utime(stale, (past, past))
    atomic_write_text(tmp_path / "final_json.json", "{}")
    assert recent.exists() and not stale.exists()


def test_a_killed_atomic_write_leaves_a_temporary_that_the_rerun_removes(tmp_path: Path) -> None:
    target = tmp_path / "final_json.json"
    atomic_write_text(target, "old")
    # killed after the temporary's fsync, before its rename: the leftover the issue reports
    assert kill_at(1, lambda: atomic_write_text(target, "new"))
    assert target.read_text() == "old"
    assert len(list(tmp_path.glob(".final_json.json.*.tmp"))) == 1
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _hidden(tmp_path) == []


def test_recover_folder_on_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    recover_folder(tmp_path / "nowhere")
    assert remove_stale_temps(tmp_path / "nowhere") == []


def test_a_damaged_journal_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / f".x{JOURNAL_SUFFIX}").write_text(json.dumps({"renames": [["nope.tmp", "a.txt"]]}))
    with pytest.raises(EmitError, match="rerun the command"):
        recover_folder(tmp_path)
