"""Kill a writer with SIGKILL right after its n-th rename or fsync, to test crash consistency.

The writer runs in a forked child (the parent's models are already built, so the child only
writes). In the child, ``os.replace``, ``os.rename`` and ``os.fsync`` are wrapped: each call
runs, then the n-th one is followed by ``SIGKILL`` — no ``finally`` blocks, no atexit, just as
a power cut or the OOM killer would stop it.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable

WATCHED = ("replace", "rename", "fsync")


def count_steps(write: Callable[[], None]) -> int:
    """How many renames and fsyncs ``write`` makes (run in a child, so nothing here changes)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        calls = [0]
        _wrap(lambda: calls.__setitem__(0, calls[0] + 1))
        code = 1
        try:
            write()
            os.write(write_end, str(calls[0]).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    _wait(pid)
    with os.fdopen(read_end) as fh:
        text = fh.read()
    if not text:
        raise AssertionError("the writer failed in the counting run")
    return int(text)


def kill_at(step: int, write: Callable[[], None]) -> bool:
    """Run ``write`` in a child killed right after its ``step``-th rename/fsync; True if killed."""
    pid = os.fork()
    if pid == 0:  # child
        calls = [0]

        def tick() -> None:
            calls[0] += 1
            if calls[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)

        _wrap(tick)
        code = 1
        try:
            write()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    status = _wait(pid)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise AssertionError(f"the writer failed before step {step} (see its traceback above)")
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _wrap(after: Callable[[], None]) -> None:
    for name in WATCHED:
        real = getattr(os, name)

        def wrapped(*args, _real=real, **kwargs):
            result = _real(*args, **kwargs)
            after()
            return result

        setattr(os, name, wrapped)


def _wait(pid: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the writer hung in the child process")
        time.sleep(0.01)
