"""Atomic writes and careful JSON reads.

Every output is written to a temporary file in the destination folder and then
renamed into place, so a killed run leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import glob
import hashlib
import io
import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from emit.problems import EmitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- temporaries -------------------------------------------------------------------------
# A temporary is named ``.<final name>.<host>-<pid>-<random>.tmp``: the host and pid say who
# writes it, so the next writer into the folder can remove the leftovers of a writer that was
# killed (its process is gone) without touching those of one that is still writing.
TEMP_SUFFIX = ".tmp"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_TAG = re.compile(r"\.([0-9a-f]{8})-(\d+)-[0-9a-z_]+\.tmp$")
# Temporaries written by emit before the pid was in the name: removed once this old.
LEGACY_TEMP_AGE_S = 3600.0


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that records this process as its writer."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _is_dead_writers(temp: Path, now: float) -> bool:
    match = _TEMP_TAG.search(temp.name)
    if match is None:  # an older emit's temporary (mkstemp: no writer recorded)
        try:
            return now - temp.lstat().st_mtime > LEGACY_TEMP_AGE_S
        except OSError:
            return False
    host, pid = match.group(1), int(match.group(2))
    return host == _HOST and pid != os.getpid() and not pid_alive(pid)


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder`` (of ``name`` only, if given).

    Temporaries of live writers, and of writers on other hosts (a shared disk), are kept.
    Pending folder commits are completed first (:func:`recover_folder`): their staged files
    are temporaries too, and belong to a commit that must still happen.
    """
    recover_folder(folder)
    pattern = f".{glob.escape(name)}.*{TEMP_SUFFIX}" if name else f".*{TEMP_SUFFIX}"
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return removed
    for temp in candidates:
        if temp.is_file() and not temp.is_symlink() and _is_dead_writers(temp, now):
            try:
                temp.unlink()
                removed.append(temp)
            except OSError:
                pass  # not ours to remove (permissions): harmless, it is hidden
    return removed


# ---- commit journals ---------------------------------------------------------------------
# A multi-file commit (emit.commit) stages every file as a temporary, then writes a journal
# ``.<label>.emit-commit.json`` listing the renames, then renames, then deletes the journal.
# A kill after the journal is written is completed by the next writer or reader of the folder.
JOURNAL_SUFFIX = ".emit-commit.json"


def journal_path(folder: Path, label: str) -> Path:
    return folder / f".{label}{JOURNAL_SUFFIX}"


def roll_forward(folder: Path, journal: Path) -> None:
    """Finish the renames and removals a journal lists (idempotent), then drop the journal."""
    try:
        plan = json.loads(journal.read_text(encoding="utf-8"))
        renames = [(str(a), str(b)) for a, b in plan["renames"]]
        removes = [str(r) for r in plan.get("removes", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmitError(f"{journal}: unreadable commit journal ({exc}); the folder {folder} may be "
                        "torn: rerun the command that wrote it") from exc
    touched: set[Path] = set()
    for staged, final in renames:
        src, dst = folder / staged, folder / final
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if not dst.exists():  # neither staged nor final: the journal cannot be finished
                raise EmitError(f"{folder}: a commit lost {staged} before renaming it to {final}; "
                                "rerun the command that wrote the folder") from None
        touched.add(dst.parent)
    for name in removes:
        gone = folder / name
        gone.unlink(missing_ok=True)
        if gone.parent != folder:
            with contextlib.suppress(OSError):
                gone.parent.rmdir()  # a subfolder the commit emptied (e.g. an old text index)
        touched.add(gone.parent if gone.parent.exists() else folder)
    for parent in touched:
        fsync_folder(parent)
    journal.unlink(missing_ok=True)
    fsync_folder(folder)


def recover_folder(folder: Path) -> None:
    """Complete every commit that a killed writer left half-done in ``folder``."""
    try:
        journals = sorted(folder.glob(f".*{JOURNAL_SUFFIX}"))
    except OSError:
        return
    for journal in journals:
        if os.access(folder, os.W_OK):
            roll_forward(folder, journal)


# ---- staging: a folder commit can take over the writes into its folder --------------------
class Stager(Protocol):
    def covers(self, path: Path) -> bool: ...
    def stage(self, path: Path, temp: Path) -> None: ...
    def remove(self, path: str | os.PathLike[str]) -> None: ...


_STAGERS: contextvars.ContextVar[tuple[Stager, ...]] = contextvars.ContextVar("emit_stagers", default=())


@contextlib.contextmanager
def staging(stager: Stager) -> Iterator[None]:
    """While active, atomic writes into ``stager``'s folder are staged, not renamed into place."""
    token = _STAGERS.set((*_STAGERS.get(), stager))
    try:
        yield
    finally:
        _STAGERS.reset(token)


def active_stager(path: Path) -> Stager | None:
    for stager in reversed(_STAGERS.get()):
        if stager.covers(path):
            return stager
    return None


def fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a complete, fsynced temporary beside ``path`` and return its name."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # outputs should read like any file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync, then rename it over ``path``.

    Inside a folder commit (:func:`emit.commit.folder_commit`) covering ``path``, the temporary
    is handed to the commit instead, which renames all its files together.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stager = active_stager(path)
    if stager is None:
        remove_stale_temps(path.parent, path.name)
    tmp = write_temp(path, write)
    if stager is not None:
        stager.stage(path, tmp)
        return path
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_remove(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` now, or as part of the folder commit that covers it."""
    path = Path(path)
    stager = active_stager(path)
    if stager is not None:
        stager.remove(path)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_safetensors(path: str | os.PathLike[str], tensors: dict[str, Any]) -> Path:
    """Write torch tensors as safetensors, atomically like every other output."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> Path:
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return atomic_write_text(path, text + "\n")


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file (a BOM is tolerated); a clear :class:`EmitError` names the file."""
    path = path if isinstance(path, Path) else Path(path)  # a within() path keeps its root
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EmitError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except MemoryError as exc:
        raise EmitError(f"{path}: too large to read into memory; split the file") from exc
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 (or UTF-32 LE) byte-order mark
        raise EmitError(f"{path}: not UTF-8 but UTF-16 (it starts with a UTF-16 byte-order mark); "
                        "re-save the file as UTF-8")
    try:
        return raw.decode("utf-8-sig")  # tolerate a BOM, as written by some Windows tools
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1  # say where, like the JSON error below
        raise EmitError(
            f"{path}: not UTF-8 at line {line} (byte {exc.start}: "
            f"{raw[exc.start:exc.start + 4]!r}); re-save the file as UTF-8"
        ) from exc


# Deeper than any emit format nests (COCO: 3 levels) and far below Python's recursion limit
# (1000 frames), so whatever parse_json returns can still be printed, compared and written back.
MAX_JSON_DEPTH = 100


class JSONTextError(EmitError):
    """JSON text that cannot be used. ``reason`` and ``fix`` name no file, so a reader of JSON
    lines can report one line and go on; ``str()`` is the whole message, naming ``where``."""

    def __init__(self, where: str, reason: str, fix: str, *, msg: str = "", line: int = 1,
                 column: int = 1) -> None:
        self.where, self.reason, self.fix = where, reason, fix
        self.msg = msg or reason  # the decoder's own short message, for a syntax error
        self.line, self.column = line, column
        super().__init__(f"{where}: {reason}; {fix}" if where else f"{reason}; {fix}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable although __init__ takes more than args
        return (type(self), (self.where, self.reason, self.fix), self.__dict__)


def _too_deep(where: str) -> JSONTextError:
    return JSONTextError(where, "JSON nested deeper than Python's parser allows safely (more than "
                         f"{MAX_JSON_DEPTH} levels of [ or {{)",
                         "no emit format nests more than a few levels: check that the file is the "
                         "right one and was exported whole, or remove the deeply nested value")


def _nested_deeper(obj: Any, limit: int) -> bool:
    """True if ``obj`` nests lists/objects more than ``limit`` levels; level by level, not
    recursively, so the check itself cannot overflow the stack."""
    level = [obj] if isinstance(obj, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, (dict, list))]
    return False


def parse_json(text: str, where: str | os.PathLike[str] = "") -> Any:
    """Parse JSON text from a user's file. Every reader uses this, never ``json.loads``: any
    failure is a :class:`JSONTextError` (an :class:`EmitError`), never a RecursionError or a
    bare ValueError that would abort the whole run."""
    where = str(where)
    if not text.strip():
        raise JSONTextError(where, "empty: no JSON value", "write the data, or remove the file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONTextError(where, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                            "fix the file (a JSON validator shows the exact spot)", msg=exc.msg,
                            line=exc.lineno, column=exc.colno) from exc
    except RecursionError as exc:
        raise _too_deep(where) from exc
    except MemoryError as exc:
        raise JSONTextError(where, f"JSON too large to parse in memory ({len(text):,} characters)",
                            "split the file into smaller ones") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JSONTextError(where, f"unreadable JSON value ({str(exc).split(';')[0]})",
                            "write numbers with fewer digits, or as strings") from exc
    if _nested_deeper(data, MAX_JSON_DEPTH):
        raise _too_deep(where)
    return data


_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)  # after an opening quote, to its close
_STRUCTURE = re.compile(r'["\[\]{},]')  # what a member's value can end or nest at
_SPACE = re.compile(r"[ \t\r\n]*")


def json_object_members(text: str) -> list[tuple[str, str, int]] | None:
    """The members of a top-level JSON object as ``(key text, value text, line)``, found by
    scanning brackets and strings only, without parsing the values; None if the text is not one
    object whose members can be told apart. Iterative, so any nesting is safe: a reader of
    ``{id: record}`` files uses it to skip one unusable record (nested too deep, a huge number,
    a raw control character) and keep the others."""
    n = len(text)

    def space(i: int) -> int:
        return _SPACE.match(text, i).end()  # type: ignore[union-attr]

    def string_end(i: int) -> int | None:  # text[i] is an opening quote
        m = _STRING_BODY.match(text, i + 1)
        return m.end() if m else None

    i = space(0)
    if text.startswith("\ufeff", i):
        i = space(i + 1)
    if i >= n or text[i] != "{":
        return None
    members: list[tuple[str, str, int]] = []
    i, line, counted = space(i + 1), 1, 0
    if i < n and text[i] == "}":
        return members if space(i + 1) == n else None
    while i < n:
        if text[i] != '"':
            return None
        end = string_end(i)
        if end is None:
            return None
        key = text[i:end]
        i = space(end)
        if i >= n or text[i] != ":":
            return None
        start = i = space(i + 1)
        depth = 0
        while True:
            m = _STRUCTURE.search(text, i)
            if m is None:
                return None
            c, i = m.group(), m.start()
            if c == '"':
                end = string_end(i)
                if end is None:
                    return None
                i = end
                continue
            if c in "[{":
                depth += 1
            elif c in "]}" and depth:
                depth -= 1
            elif depth == 0:  # a ',' or the object's closing '}' ends this member
                break
            i += 1
        line += text.count("\n", counted, start)
        counted = start
        members.append((key, text[start:i].rstrip(" \t\r\n"), line))
        if text[i] == "}":
            return members if space(i + 1) == n else None
        if text[i] != ",":
            return None
        i = space(i + 1)
    return None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a UTF-8 JSON file (:func:`parse_json`); any failure is an :class:`EmitError` naming
    the file, the place and the fix."""
    path = path if isinstance(path, Path) else Path(path)  # a within() path keeps its root
    return parse_json(read_text(path), path)


# ---- reading inside a root ---------------------------------------------------------------
# A service that reads files under a root it was given must read nothing outside it, whatever
# the symbolic links inside the root say. The check is made on the opened descriptor, so a
# link swapped between a check and the open cannot lead out (no time-of-check-to-time-of-use).
_PROC_FD = "/proc/self/fd"


class OutsideRoot(EmitError, PermissionError):
    """A path that resolves, through symbolic links, to a file outside the root it must stay in."""

    def __init__(self, path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
        PermissionError.__init__(self, errno.EACCES, "leads outside the folder it must stay in "
                                 "(a symbolic link out of it)", str(path))
        self.path = Path(path)
        self.root = Path(root)

    def __str__(self) -> str:
        return f"{self.path}: {self.strerror}; refused"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _opened_path(fd: int) -> str | None:
    """The resolved path the kernel holds for an open descriptor (Linux), or None where unknown."""
    try:
        return os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        return None


def open_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> IO[bytes]:
    """Open the regular file ``path`` for reading, refusing one that resolves outside ``root``.

    Symbolic links that stay inside ``root`` are followed. The file actually opened is checked
    (its descriptor's path on Linux; elsewhere its device and inode against those of its
    resolved path), so a link changed during the call cannot lead out. Folders, FIFOs and
    devices are refused; the open does not block, so a FIFO cannot hang the reader. Raises
    :class:`OutsideRoot` (a ``PermissionError``) or the ``OSError`` of the open.
    """
    root_real = os.path.realpath(root)
    if not _inside(os.path.realpath(path), root_real):  # do not even open what is plainly outside
        raise OutsideRoot(path, root)
    flags = os.O_RDONLY
    for extra in ("O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):  # where the system has them
        flags |= getattr(os, extra, 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
        opened = _opened_path(fd)
        if opened is not None:
            ok = _inside(opened, root_real)
        else:  # no /proc: the opened file must be the one its resolved path names now
            real = os.path.realpath(path)
            try:
                now = os.stat(real)
            except OSError:
                now = None
            ok = (_inside(real, root_real) and now is not None
                  and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino))
        if not ok:
            raise OutsideRoot(path, root)
        return os.fdopen(fd, "rb")  # O_NONBLOCK is harmless on a regular file
    except BaseException:
        os.close(fd)
        raise


def read_bytes_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``, read with :func:`open_within`."""
    with open_within(path, root) as fh:
        return fh.read()


class WithinPath(type(Path())):  # type: ignore[misc]  # PosixPath or WindowsPath
    """A path that remembers the root its file must be read inside (see :func:`within`).

    Paths derived from it (``parent``, ``/ name``) are plain paths again: only the file itself
    carries the root.
    """

    within_root: Path | None = None

    def open(self, mode: str = "r", buffering: int = -1, encoding: str | None = None,  # type: ignore[override]
             errors: str | None = None, newline: str | None = None) -> IO[Any]:
        """Reads go through :func:`open_within` (so ``read_bytes`` and ``read_text`` do too)."""
        if self.within_root is None or set(mode) - {"r", "b", "t"}:
            return super().open(mode, buffering, encoding, errors, newline)
        raw = open_within(self, self.within_root)
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding or "utf-8", errors, newline)


def within(path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> Path:
    """``path``, marked so that emit's readers (:func:`open_read`, :func:`read_text`,
    :func:`emit.data.images.load_image`, feature hashing) open it inside ``root`` only."""
    if root is None:
        return Path(path)
    marked = WithinPath(path)
    marked.within_root = Path(root)
    return marked


def root_of(path: object) -> Path | None:
    """The root a :func:`within` path must be read inside, or None for a plain path."""
    return getattr(path, "within_root", None)


def open_read(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open ``path`` for reading; a :func:`within` path only inside its root."""
    root = root_of(path)
    return open(path, "rb") if root is None else open_within(path, root)


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``; a :func:`within` path is read inside its root only."""
    with open_read(path) as fh:
        return fh.read()
