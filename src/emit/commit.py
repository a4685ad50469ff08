"""Multi-file artefacts that are all old or all new: folder commits and their manifest.

A model folder is several files (weights, vocabulary, configuration). Writing each atomically
is not enough: a kill between two of them leaves new weights beside an old configuration,
and that mix may load silently. Inside ``with folder_commit(folder):`` every atomic write
into ``folder`` (:func:`emit.files.atomic_write` and its wrappers) is staged as a complete
temporary; on leaving the block a journal lists the renames, the renames happen, and the
journal is deleted. A kill before the journal leaves the old files (the staged temporaries
are removed by the next writer); a kill after it is finished by the next reader or writer
(:func:`emit.files.recover_folder`). This is the write-ahead log of a database, at the size
of a folder.

The commit also writes ``emit-manifest.json``: the sha256 and size of every file of the
artefact. :func:`verify_folder` checks it on load, so a folder mixed by other means (a file
copied in by hand, a partial copy, a commit from a version without journals) is refused with
a message that says how to recover, instead of loading silently.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from emit.files import (
    active_stager,
    atomic_remove,
    atomic_write_json,
    fsync_folder,
    journal_path,
    recover_folder,
    remove_stale_temps,
    roll_forward,
    staging,
    write_temp,
)
from emit.hashing import file_sha256
from emit.problems import EmitError, ProblemLog

MANIFEST_FILE = "emit-manifest.json"
MANIFEST_FORMAT = 1


class FolderCommit:
    """The files staged for one commit into ``folder``; see :func:`folder_commit`."""

    def __init__(self, folder: Path, label: str, manifest: bool, only: Iterable[str] | None) -> None:
        self.folder = folder
        self.label = label
        self.manifest = manifest
        self.only = None if only is None else {str(n) for n in only}
        self._root = os.path.abspath(folder)
        self.staged: dict[str, Path] = {}  # final name (relative, '/'-separated) -> temporary
        self.removed: set[str] = set()
        self.adopted: set[str] = set()
        self._cleaned: set[Path] = {folder}  # folder_commit cleans the folder itself on entry

    # ---- the files.Stager protocol ----------------------------------------------------
    def _relative(self, path: Path) -> str | None:
        full = os.path.abspath(path)
        if os.path.commonpath([full, self._root]) != self._root or full == self._root:
            return None
        return Path(os.path.relpath(full, self._root)).as_posix()

    def covers(self, path: Path) -> bool:
        rel = self._relative(path)
        return rel is not None and (self.only is None or rel in self.only)

    def stage(self, path: Path, temp: Path) -> None:
        rel = self._relative(path)
        assert rel is not None
        old = self.staged.pop(rel, None)
        if old is not None:
            old.unlink(missing_ok=True)  # written twice in one commit: the last write wins
        self.removed.discard(rel)
        self.staged[rel] = temp
        parent = Path(path).parent
        if parent not in self._cleaned:  # a killed writer's temporaries in a subfolder go too
            self._cleaned.add(parent)
            remove_stale_temps(parent)

    # ---- what a writer asks for -------------------------------------------------------
    def _name(self, path: str | os.PathLike[str]) -> str:
        rel = self._relative(Path(path))
        if rel is None:
            raise EmitError(f"{path} is not inside {self.folder}, the folder being committed")
        return rel

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Delete the file ``path`` (inside the folder) in the same commit, if it exists."""
        name = self._name(path)
        old = self.staged.pop(name, None)
        if old is not None:
            old.unlink(missing_ok=True)
        self.adopted.discard(name)
        self.removed.add(name)

    def adopt(self, path: str | os.PathLike[str]) -> None:
        """Count an existing file (written earlier, e.g. by a resumable step) as part of the artefact."""
        name = self._name(path)
        if not Path(path).is_file():
            raise EmitError(f"{path}: expected this file before committing the folder")
        self.removed.discard(name)
        self.adopted.add(name)

    # ---- commit -----------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any]:
        files = dict(read_manifest(self.folder) or {})
        for name in self.removed:
            files.pop(name, None)
        for name, temp in self.staged.items():
            files[name] = {"sha256": file_sha256(temp, remember=False), "bytes": temp.stat().st_size}
        for name in self.adopted:
            path = self.folder / name
            files[name] = {"sha256": file_sha256(path, remember=False), "bytes": path.stat().st_size}
        files.pop(MANIFEST_FILE, None)
        return {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}

    def commit(self) -> None:
        renames = [(Path(os.path.relpath(os.path.abspath(temp), self._root)).as_posix(), name)
                   for name, temp in self.staged.items()]
        if self.manifest:
            text = json.dumps(self._manifest(), ensure_ascii=False, indent=1) + "\n"
            temp = write_temp(self.folder / MANIFEST_FILE, lambda fh: fh.write(text.encode("utf-8")))
            renames.append((temp.name, MANIFEST_FILE))  # last: a reader that sees it sees the rest
        if not renames and not self.removed:
            return
        plan = json.dumps({"renames": renames, "removes": sorted(self.removed)}, ensure_ascii=False)
        journal = journal_path(self.folder, self.label)
        staged_journal = write_temp(journal, lambda fh: fh.write(plan.encode("utf-8")))
        os.replace(staged_journal, journal)  # the commit point
        fsync_folder(self.folder)
        roll_forward(self.folder, journal)

    def discard(self) -> None:
        for temp in self.staged.values():
            temp.unlink(missing_ok=True)
        self.staged.clear()


@contextlib.contextmanager
def folder_commit(folder: str | os.PathLike[str], *, label: str = "folder", manifest: bool = True,
                  only: Iterable[str] | None = None) -> Iterator[FolderCommit]:
    """Stage every atomic write into ``folder`` (or only the names in ``only``) and commit them
    together on leaving the block; an exception discards them and leaves the old files.

    Nested inside a commit that already covers ``folder``, the outer commit is used, so a
    ``save()`` that commits its own files can be part of a larger artefact.
    """
    folder = Path(folder)
    outer = active_stager(folder / MANIFEST_FILE)
    if isinstance(outer, FolderCommit):
        yield outer
        return
    folder.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    remove_stale_temps(folder)
    group = FolderCommit(folder, label, manifest, only)
    try:
        with staging(group):
            yield group
    except BaseException:
        group.discard()
        raise
    group.commit()


class TornFolderError(EmitError):
    """A folder's files are not the ones its manifest records."""


def write_problems(problems: ProblemLog, path: str | os.PathLike[str]) -> None:
    """This run's problems, or no file: a file left by an earlier run would describe that run."""
    if problems:
        atomic_write_json(path, problems.to_json())
    else:
        atomic_remove(path)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | None:
    """The files a folder's manifest lists (name -> sha256 and size), or None without one."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {data.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmitError(f"{path}: unreadable manifest ({exc}); rewrite the folder with the command "
                        "that made it") from exc
    return files


def verify_folder(folder: str | os.PathLike[str], *, fix: str, skip: Iterable[str] = ()) -> bool:
    """Refuse a folder whose files are not the ones its manifest records (a torn or mixed save).

    Finishes a half-done commit first. Returns False for a folder with no manifest (written by
    an emit from before manifests), which is loaded as before. ``fix`` says how to recover;
    files in ``skip`` are not checked (their own loader checks them, with its own fix).
    """
    folder = Path(folder)
    recover_folder(folder)
    files = read_manifest(folder)
    if files is None:
        return False
    skipped = set(skip)
    for name, record in files.items():
        path = folder / name
        if name in skipped:
            continue
        if not path.is_file():
            problem = "is missing"
        elif (path.stat().st_size != record.get("bytes")
              or file_sha256(path, remember=False) != record.get("sha256")):
            problem = "is not the file its last complete save wrote"
        else:
            continue
        raise TornFolderError(f"{path}: {problem} (see {folder / MANIFEST_FILE}): the folder is torn or "
                              f"mixes two saves, e.g. a write killed half-way or a file copied in; {fix}")
    return True
