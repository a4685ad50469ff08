"""One file hasher: memoised for identities, read every time for checks."""

from __future__ import annotations

import hashlib
import io
import os

from hypothesis import given
from hypothesis import strategies as st

from emit.hashing import CHUNK, file_sha256, stream_sha256


@given(st.binary(max_size=3 * 1024) | st.just(b"x" * (CHUNK + 7)))
def test_stream_hash_is_sha256_of_the_bytes(data: bytes) -> None:
    assert stream_sha256(io.BytesIO(data)) == hashlib.sha256(data).hexdigest()


def test_remembered_hash_follows_size_and_mtime_and_a_check_reads_now(tmp_path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"aaaa")
    first = file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"bbbb")  # same size; put the old mtime back, as `cp -p` can
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == first  # remembered: fine for an identity of weights files
    assert file_sha256(path, remember=False) == hashlib.sha256(b"bbbb").hexdigest()  # a check is not fooled
    path.write_bytes(b"ccccc")
    assert file_sha256(path) == hashlib.sha256(b"ccccc").hexdigest()
