"""The content hashes behind emit's identities, caches and manifests: one place, one algorithm.

* :func:`stream_sha256`: sha256 of bytes as they are read (images through a confined reader);
* :func:`file_sha256`: a file's sha256. Weights are hashed on every model load to build the
  backbone's identity, so by default it is remembered per (path, size, mtime); checks of a
  folder's manifest pass ``remember=False`` and always read the bytes;
* :func:`state_dict_sha256`: sha256 of a module's tensors, for weights that came from no file.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

CHUNK = 1 << 20  # large files are read a MiB at a time, never whole


def stream_sha256(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _read_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return stream_sha256(fh)


@lru_cache(maxsize=256)
def _remembered_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _read_sha256(path)


def file_sha256(path: str | os.PathLike[str], *, remember: bool = True) -> str:
    """sha256 of a file's bytes; with ``remember`` memoised on (path, size, mtime)."""
    if not remember:
        return _read_sha256(path)
    st = os.stat(path)
    return _remembered_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of a model's tensors, for identities of weights that did not come from a file."""
    import torch  # only where a module is hashed: the file hashes need no torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("ascii"))
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
