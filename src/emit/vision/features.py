"""Extract image features with a content-addressed, resumable cache.

Features are keyed by the sha256 of the image file's bytes, in one sqlite file per backbone
identity (``<cache_dir>/<key>.sqlite``). So renamed or copied images are free, duplicates are
computed once, a second run over the same images never touches the model, and a run killed
half-way keeps every batch it committed.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from tqdm.auto import tqdm

from emit.data.images import load_images_threaded
from emit.devices import default_batch_size, inference_context, resolve_device, to_device
from emit.files import OutsideRoot, open_read
from emit.hashing import stream_sha256
from emit.problems import EmitError, ProblemLog
from emit.vision.backbones import Backbone

_SQL_CHUNK = 500  # stay under sqlite's host-parameter limit in IN (...) queries


def default_cache_dir() -> Path:
    """Feature cache shared by every workflow: $EMIT_CACHE_DIR, else ~/.cache/emit/features."""
    env = os.environ.get("EMIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "emit" / "features"


def feature_key(backbone: Backbone, hflip_tta: bool = False) -> str:
    """Cache key for ``backbone``'s features; test-time flipping gives different features."""
    return backbone.key + ("-hflip" if hflip_tta else "")


class FeatureCache:
    """``{content sha256: float32 vector}`` in ``<cache_dir>/<backbone_key>.sqlite``.

    WAL mode and a long busy timeout let two processes share one cache; every
    :meth:`put_many` commits, so an interrupted run keeps what it finished.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], backbone_key: str) -> None:
        self.path = Path(cache_dir) / f"{backbone_key}.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0)
            self._setup(deadline=time.monotonic() + 60.0)
        except (OSError, sqlite3.Error) as exc:
            raise EmitError(f"{self.path}: cannot open the feature cache ({exc}); check the "
                            "folder is writable, or delete the file if it is corrupt") from exc

    def _setup(self, deadline: float) -> None:
        """WAL mode and the table. Two processes creating the same new cache at once (the ranks
        of a torchrun job) can find it locked: switching the journal mode does not wait for the
        busy timeout, so wait here, briefly and increasingly, until the deadline."""
        pause = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this crash-safe
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS features "
                    "(content_sha256 TEXT PRIMARY KEY, vec BLOB NOT NULL)"
                )
                self._db.commit()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(0.5, pause * 2)

    def get_many(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(wanted), _SQL_CHUNK):
            chunk = wanted[i:i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT content_sha256, vec FROM features WHERE content_sha256 IN ({marks})",
                chunk,
            )
            for digest, blob in rows:
                found[digest] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for k, v in vectors.items()]
        with self._db:  # one transaction per batch: committed, or not at all
            self._db.executemany(
                "INSERT OR REPLACE INTO features (content_sha256, vec) VALUES (?, ?)", rows
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def hash_file(path: str | os.PathLike[str]) -> str:
    with open_read(path) as fh:  # an emit.files.within() path is read inside its root only
        return stream_sha256(fh)


def _hash_all(paths: Sequence[Path], num_threads: int, problems: ProblemLog,
              records: Sequence[object]) -> list[str | None]:
    def one(path: Path) -> str | OSError:
        try:
            return hash_file(path)
        except OSError as exc:  # reported below, on the calling thread, in order
            return exc

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = list(pool.map(one, paths))
    hashes: list[str | None] = []
    for path, record, result in zip(paths, records, results, strict=True):
        if isinstance(result, OutsideRoot):
            problems.add(path, record, "the image file is a symbolic link that leads outside the folder "
                         "it must be read in; image refused",
                         "copy the image into the product folder instead of linking to it")
            hashes.append(None)
        elif isinstance(result, OSError):
            what = ("image file not found" if isinstance(result, FileNotFoundError)
                    else f"cannot read the file ({result.strerror or result})")
            problems.add(path, record, what + "; image skipped",
                         "check the path, or add the file / remove its entry")
            hashes.append(None)
        else:
            hashes.append(result)
    return hashes


def extract_features(
    paths: Sequence[str | os.PathLike[str]],
    backbone: Backbone,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    num_threads: int = 2,
    problems: ProblemLog | None = None,
    progress: bool = True,
    hflip_tta: bool = False,
    record_names: Sequence[object] | None = None,
    device: str | torch.device | None = "cpu",
    autocast: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, backbone.dim)`` float32 and a bool mask ``ok`` ``(N,)`` for ``paths``.

    Bad images get a zero row, ``ok=False`` and a problem in ``problems`` (``record_names[i]``
    names the record; default the file name); the others are unaffected. With ``cache_dir``
    cached vectors are reused and new ones stored per batch. ``hflip_tta`` averages each
    image's features with its mirror image's. Thread count for torch is left to the caller
    (``torch.set_num_threads``); ``num_threads`` is for reading and decoding.

    ``device`` (see :func:`emit.devices.resolve_device`) is where the backbone runs; the model is
    moved there and stays. On CUDA the forward pass runs under autocast from pinned, non-blocking
    copies, ``batch_size`` grows to what the GPU's free memory allows, and the vectors come back
    as float32 into the same cache as a CPU run's (the cache is keyed by the backbone, not the
    device). ``autocast=False`` keeps full precision on CUDA too (for comparisons).
    """
    paths = [p if isinstance(p, Path) else Path(p) for p in paths]  # keeps a within() path's root
    n = len(paths)
    if record_names is not None and len(record_names) != n:
        raise ValueError(f"record_names has {len(record_names)} entries for {n} paths")
    records = list(record_names) if record_names is not None else [p.name for p in paths]
    problems = problems if problems is not None else ProblemLog()
    features = np.zeros((n, backbone.dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return features, ok

    hashes = _hash_all(paths, num_threads, problems, records)
    # Rows by content: identical files share one computation and one cache entry.
    rows_of: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            rows_of.setdefault(h, []).append(i)

    cache = FeatureCache(cache_dir, feature_key(backbone, hflip_tta)) if cache_dir else None
    bar = tqdm(total=n, desc=f"features {backbone.name}", unit="img", disable=not progress)
    try:
        bar.update(n - sum(len(r) for r in rows_of.values()))  # unreadable files are done
        vectors: dict[str, np.ndarray] = {}
        if cache is not None:
            vectors = {h: v for h, v in cache.get_many(rows_of).items()
                       if v.shape == (backbone.dim,)}  # ignore entries of another width
        for h, v in vectors.items():
            _fill(features, ok, rows_of[h], v)
            bar.update(len(rows_of[h]))

        todo = [h for h in rows_of if h not in vectors]
        if todo:
            where = resolve_device(device)
            _compute(todo, rows_of, paths, records, backbone, features, ok, cache, bar,
                     batch_size=batch_size, num_threads=num_threads, problems=problems,
                     hflip_tta=hflip_tta, device=where, autocast=autocast)
    finally:
        bar.close()
        if cache is not None:
            cache.close()
    return features, ok


def _fill(features: np.ndarray, ok: np.ndarray, rows: list[int], vec: np.ndarray) -> None:
    features[rows] = vec
    ok[rows] = True


def _compute(todo: list[str], rows_of: dict[str, list[int]], paths: list[Path],
             records: list[object], backbone: Backbone, features: np.ndarray, ok: np.ndarray,
             cache: FeatureCache | None, bar: tqdm, *, batch_size: int, num_threads: int,
             problems: ProblemLog, hflip_tta: bool, device: torch.device, autocast: bool) -> None:
    """Decode one file per missing hash, run the model in batches, store as we go."""
    batch_size = default_batch_size(device, batch_size, backbone.image_size)
    first = [rows_of[h][0] for h in todo]
    images = load_images_threaded([paths[i] for i in first], backbone.transform, num_threads,
                                  problems, [records[i] for i in first])
    model = backbone.model.to(device)
    was_training = model.training
    model.eval()
    batch: list[torch.Tensor] = []
    batch_hashes: list[str] = []

    def flush() -> None:
        x = to_device(torch.stack(batch), device)
        with inference_context(device, autocast):
            out = model(x)
            if hflip_tta:
                out = (out + model(x.flip(-1))) / 2
        out_np = out.float().cpu().numpy()
        if out_np.shape != (len(batch), backbone.dim):
            raise EmitError(f"backbone {backbone.name} returned features of shape "
                            f"{out_np.shape}, expected ({len(batch)}, {backbone.dim})")
        computed = dict(zip(batch_hashes, out_np, strict=True))
        if cache is not None:
            cache.put_many(computed)
        for h, v in computed.items():
            _fill(features, ok, rows_of[h], v)
            bar.update(len(rows_of[h]))
        batch.clear()
        batch_hashes.clear()

    try:
        for h, tensor in zip(todo, images, strict=True):
            if tensor is None:  # reported by load_images_threaded for the first path
                rows = rows_of[h]
                for i in rows[1:]:
                    problems.add(paths[i], records[i],
                                 f"same bytes as {paths[rows[0]]}, which cannot be decoded; "
                                 "image skipped", "replace both files with a good image")
                bar.update(len(rows))
                continue
            batch.append(tensor)
            batch_hashes.append(h)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        images.close()
        model.train(was_training)
