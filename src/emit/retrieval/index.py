"""Nearest-neighbour search over image embeddings with FAISS (``pip install faiss-cpu``).

``build_index(vectors, ids, kind, metric, **params)`` returns a :class:`SearchIndex`:

* ``kind="exact"`` (default): ``IndexFlatL2`` / ``IndexFlatIP``, brute force, exact;
* ``kind="ivf"``: ``faiss.index_factory("IVF{nlist},Flat")``, trained by k-means on the
  vectors; ``nlist`` defaults to about ``4 sqrt(N)`` (at most N / 39, FAISS's minimum of
  training points per list) and ``nprobe`` (lists visited per query) to ``max(8, nlist / 8)``;
* ``kind="hnsw"``: ``"HNSW{M}"`` (``M=32``), ``ef_construction=40``, ``ef_search=64``;
* any kind with ``factory="..."``: that ``index_factory`` string instead (e.g. ``"IVF64,PQ16"``).

``metric="l2"`` scores are *squared* Euclidean distances (lower is nearer), the paper's distance;
``metric="ip"`` scores are inner products (higher is nearer; cosine on L2-normalised vectors).

:func:`recall_against_exact` measures what an approximate index loses. ``SearchIndex.save``
writes ``index.faiss`` and the manifest ``index.json`` (ids, kind, metric, dim, parameters, the
image backbone's and text encoder's identities, versions, and the sha256 of the index file);
:func:`load_index` refuses an index built for another backbone or text encoder, naming what
differs. The encoder identity is opaque here: a retrieval model that also projects the image
side should pass one dict covering both (e.g. ``{"text": ..., "image_projection": ...}``).

``bias=`` (one value per row) builds an index that ranks by ``score - bias``: the hubness
correction of :mod:`emit.retrieval.hubness`, folded into one extra coordinate of every row
(:func:`~emit.retrieval.fold.fold_candidates`). Queries keep the model's dimension; the
index appends the matching constant, and ``params["hubness"]`` records beta and the bank.
``search(..., corrected=False)`` gives the plain scores of an inner-product index (for
queries of the same modality as the rows).

An index built from feature shards (``emit index build --from-features``,
:mod:`emit.retrieval.ondisk`) has manifest format 2: its ids live in ``ids.arrow`` and an IVF
index's lists in ``lists.ivfdata``; :func:`load_index` opens it memory-mapped and read-only, with
the same identity checks. Format-1 folders load as before.

FAISS runs on all cores through OpenMP; call ``faiss.omp_set_num_threads(n)`` to share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import threading
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from emit.commit import folder_commit
from emit.config import versions
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.problems import EmitError
from emit.retrieval.fold import fold_candidates, fold_queries

INDEX_FILE, MANIFEST_FILE = "index.faiss", "index.json"
FORMAT_VERSION = 1
ONDISK_FORMAT = 2  # ids in a side file, lists on disk: emit.retrieval.ondisk (read here, written there)
LISTS_FILE = "lists.ivfdata"  # format 2, IVF kinds: the inverted lists (OnDiskInvertedLists)
IDS_FILE = "ids.arrow"  # format 2: row -> path, sha256 (Arrow IPC, memory-mapped)
SHA_CHECK_BYTES = 64 << 20  # format-2 index.faiss files up to this size are hashed on open; larger sized
KINDS = ("exact", "ivf", "hnsw")
METRICS = ("l2", "ip")
FAISS_PACKAGE = "faiss-cpu"


_FAISS_THREADS = threading.local()  # OpenMP's thread count is per calling thread


def faiss_module() -> Any:
    """The faiss module, with the calling thread's OpenMP threads set to torch's if torch is
    loaded: FAISS otherwise takes every core whatever ``--threads`` says (the command line sets
    torch's), and a server's request threads would each start with every core."""
    try:
        import faiss
    except ImportError as exc:
        raise EmitError(f"nearest-neighbour search needs FAISS: pip install {FAISS_PACKAGE}") from exc
    torch = sys.modules.get("torch")
    if torch is not None:
        wanted = int(torch.get_num_threads())
        if getattr(_FAISS_THREADS, "count", None) != wanted:
            faiss.omp_set_num_threads(wanted)
            _FAISS_THREADS.count = wanted
    return faiss


def _metric_code(metric: str) -> int:
    faiss = faiss_module()
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous, 2-D (a single vector becomes one row), finite."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise EmitError(f"{what} must be a (N, D) matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise EmitError(f"{what} have {arr.shape[1]} dimensions but the index has {dim}; "
                        "the queries come from another model than the index")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr).all(axis=1)).sum())
        raise EmitError(f"{what}: {bad} row(s) hold NaN or infinite values")
    return np.ascontiguousarray(arr)


@dataclass
class SearchIndex:
    """A FAISS index, the id of each of its rows, and what it was built from."""

    index: Any  # faiss.Index
    ids: list[str]
    kind: str
    metric: str
    params: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] | None = None
    encoder: dict[str, Any] | None = None

    @property
    def dim(self) -> int:
        """The dimension of the stored rows (one more than the queries' if hubness-corrected)."""
        return int(self.index.d)

    @property
    def corrected(self) -> bool:
        """True if the rows carry a hubness correction (an extra coordinate)."""
        return self.params.get("hubness") is not None

    @property
    def query_dim(self) -> int:
        return self.dim - 1 if self.corrected else self.dim

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "ip"

    def tune(self, *, nprobe: int | None = None, ef_search: int | None = None) -> SearchIndex:
        """Set search-time effort: IVF lists visited, HNSW candidate list size. Returns self."""
        faiss = faiss_module()
        if nprobe is not None:
            ivf = faiss.try_extract_index_ivf(self.index)
            if ivf is None:
                raise EmitError(f"nprobe applies to IVF indexes, not to {self.params.get('factory')!r}")
            ivf.nprobe = max(1, min(int(nprobe), int(ivf.nlist)))
            self.params["nprobe"] = int(ivf.nprobe)
        if ef_search is not None:
            hnsw = _hnsw_of(self.index)
            if hnsw is None:
                raise EmitError(f"ef_search applies to HNSW indexes, not to {self.params.get('factory')!r}")
            hnsw.efSearch = max(1, int(ef_search))
            self.params["ef_search"] = int(hnsw.efSearch)
        return self

    def search_positions(self, queries: Any, k: int, *, corrected: bool = True
                         ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, both ``(Q, min(k, N))``, nearest first; row -1 marks no result
        (an approximate index may find fewer than k), with score +inf (l2) or -inf (ip).

        On a hubness-corrected index, scores are corrected (``corrected=True``) or plain."""
        if len(self) == 0:
            raise EmitError("the index is empty; build it from at least one image vector")
        if k < 1:
            raise EmitError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, "queries", self.query_dim)
        if self.corrected:

            q = fold_queries(q, self.metric, corrected)
        k_eff = min(int(k), len(self))
        if q.shape[0] == 0:
            return np.zeros((0, k_eff), dtype=np.float32), np.zeros((0, k_eff), dtype=np.int64)
        faiss_module()  # this thread's FAISS threads follow torch's (a server's request threads)
        scores, rows = self.index.search(q, k_eff)
        scores = np.asarray(scores, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        missing = rows < 0
        if missing.any():
            scores[missing] = -np.inf if self.higher_is_better else np.inf
        elif self.metric == "l2" and not self.corrected:
            np.maximum(scores, 0.0, out=scores)  # rounding can give tiny negative distances
        if self.corrected and self.metric == "l2":
            scores[~missing] -= float(self.params["hubness"].get("shift", 0.0))  # distance + bias
        return scores, rows

    def search(self, queries: Any, k: int, *, corrected: bool = True) -> tuple[np.ndarray, list[list[str]]]:
        """``(scores (Q, min(k, N)), ids)``: ``ids[q]`` lists the hits of query q nearest first.

        Scores are squared L2 distances (lower is nearer) or inner products (higher is nearer).
        ``ids[q]`` is shorter than the score row only where an approximate index found fewer
        than k vectors; those scores are +-inf.
        """
        scores, rows = self.search_positions(queries, k, corrected=corrected)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows.tolist()]
        return scores, ids

    def _rows(self) -> np.ndarray:
        faiss = faiss_module()
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.make_direct_map()
        return np.asarray(self.index.reconstruct_n(0, len(self)), dtype=np.float32)

    def stored(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(vectors, bias)`` from one read of the stored rows: the vectors without the
        hubness coordinate (exact for Flat storage, approximations for compressed indexes), and
        each row's hubness bias read back from that coordinate (None if the index has none)."""
        rows = self._rows()
        vectors = rows[:, :self.query_dim]
        if not self.corrected:
            return vectors, None
        last = rows[:, -1].astype(np.float64)
        if self.metric == "ip":
            return vectors, -last
        return vectors, last ** 2 - float(self.params["hubness"].get("shift", 0.0))

    def vectors(self) -> np.ndarray:
        """The stored vectors, without the hubness coordinate (see :meth:`stored`)."""
        return self.stored()[0]

    def bias(self) -> np.ndarray | None:
        """The hubness bias of each row, or None (see :meth:`stored`)."""
        return self.stored()[1]

    # ---- persistence ------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` and ``index.json`` into ``folder`` as one commit."""
        faiss = faiss_module()
        folder = Path(folder)
        if self.params.get("storage") in ("ondisk", "mmap"):
            raise EmitError("an index opened from feature shards is saved when it is built and read-only "
                            "here; copy its folder, or build again with `emit index build --from-features`")
        # No folder manifest of its own: index.json already records the sha256 of index.faiss.
        with folder_commit(folder, label="index", manifest=False):
            self._write(folder, faiss)
        return folder

    def _write(self, folder: Path, faiss: Any) -> None:
        data = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(folder / INDEX_FILE, data)
        manifest = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "count": len(self),
            "params": self.params,
            "backbone": self.backbone,
            "encoder": self.encoder,
            "index_sha256": hashlib.sha256(data).hexdigest(),
            "versions": {**versions(), "faiss": faiss.__version__},
            "ids": self.ids,
        }
        atomic_write_json(folder / MANIFEST_FILE, manifest, indent=None)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, expect_backbone: Any = None,
             expect_encoder: Any = None) -> SearchIndex:
        return load_index(folder, expect_backbone=expect_backbone, expect_encoder=expect_encoder)


def _hnsw_of(index: Any) -> Any:
    faiss = faiss_module()
    try:
        return faiss.downcast_index(index).hnsw
    except AttributeError:
        return None


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) inverted lists, with at least 39 training points each (FAISS's minimum)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def build_index(vectors: Any, ids: Sequence[str], kind: str = "exact", metric: str = "l2", *,
                backbone: Any = None, encoder: Any = None, bias: Any = None,
                hubness: Mapping[str, Any] | None = None, factory: str | None = None,
                nlist: int | None = None, nprobe: int | None = None, m: int = 32,
                ef_construction: int = 40, ef_search: int = 64) -> SearchIndex:
    """Index ``vectors`` (N, D) whose rows are the images ``ids``; see the module docstring.

    ``backbone`` / ``encoder`` are the identities (dicts, or objects with ``identity`` /
    ``identity()``) of the image backbone and text model the vectors belong to; they are saved
    with the index and checked by :func:`load_index`. ``bias`` (N,) makes the index rank by
    ``score - bias`` (see the module docstring); ``hubness`` (beta, the bank's identity, ...)
    is recorded with it in ``params["hubness"]``.
    """
    faiss = faiss_module()
    if kind not in KINDS:
        raise EmitError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if metric not in METRICS:
        raise EmitError(f"unknown metric {metric!r}; use 'l2' (squared Euclidean) or 'ip' (inner product)")
    x = _as_matrix(vectors, "index vectors")
    ids = [str(i) for i in ids]
    n, d = x.shape
    if n == 0:
        raise EmitError("no vectors to index; extract image features first")
    if len(ids) != n:
        raise EmitError(f"{n} vectors but {len(ids)} ids; give one id per vector")
    params: dict[str, Any] = {}
    if bias is not None:

        x, shift = fold_candidates(x, bias, metric)
        d += 1
        params["hubness"] = {**dict(hubness or {}), "shift": shift}
    if len(set(ids)) != n:
        dup = next(i for i, c in _counts(ids).items() if c > 1)
        raise EmitError(f"image id {dup!r} occurs more than once; ids must be unique")
    if kind == "exact" and factory is None:
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        params["factory"] = "Flat"
    else:
        if factory is None:
            if kind == "ivf":
                nlist = default_nlist(n) if nlist is None else int(nlist)
                factory = f"IVF{nlist},Flat"
            else:
                factory = f"HNSW{int(m)}"
        try:
            index = faiss.index_factory(d, factory, _metric_code(metric))
        except RuntimeError as exc:
            raise EmitError(f"FAISS does not understand the index description {factory!r} "
                            f"({str(exc).strip().splitlines()[-1][:200]})") from exc
        params["factory"] = factory
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            hnsw.efConstruction = int(ef_construction)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            lists = int(ivf.nlist) if ivf is not None else 1
            if n < lists:
                raise EmitError(f"{factory!r} needs at least {lists} vectors to train, got {n}; "
                                "lower nlist or use kind='exact'")
            index.train(x)
        if faiss.try_extract_index_ivf(index) is not None:
            params["nlist"] = int(faiss.try_extract_index_ivf(index).nlist)
    index.add(x)
    built = SearchIndex(index, ids, kind, metric, params, _identity_of(backbone), _identity_of(encoder))
    if built.params.get("nlist") is not None:
        built.tune(nprobe=nprobe if nprobe is not None else max(8, built.params["nlist"] // 8))
    if _hnsw_of(index) is not None:
        if factory == f"HNSW{int(m)}":
            built.params["m"] = int(m)
        built.params["ef_construction"] = int(ef_construction)
        built.tune(ef_search=ef_search)
    return built


def _counts(items: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _identity_of(obj: Any) -> dict[str, Any] | None:
    """A JSON-able identity dict from a dict, a Backbone (``.identity``) or an encoder (``.identity()``)."""
    if obj is None:
        return None
    ident = getattr(obj, "identity", obj)
    if callable(ident):
        ident = ident()
    if not isinstance(ident, Mapping):
        raise EmitError(f"expected an identity dict, got {type(obj).__name__}")
    # through JSON, as saved: tuples become lists, so live and loaded identities compare equal
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def recall_against_exact(index: SearchIndex, queries: Any, k: int, vectors: Any = None) -> float:
    """Recall@k of ``index`` against exact search: the mean share of the true k nearest it finds.

    The exact neighbours come from ``vectors`` (the indexed rows, in order) or, if not given,
    from the index's stored vectors (exact for Flat storage; for compressed indexes such as PQ
    pass the original vectors).
    """
    stored, bias = index.stored()  # one read of the rows gives both
    x = stored if vectors is None else _as_matrix(vectors, "vectors", index.query_dim)
    if x.shape[0] != len(index):
        raise EmitError(f"{x.shape[0]} vectors given for an index of {len(index)}")
    exact = build_index(x, index.ids, "exact", index.metric, bias=bias, hubness=index.params.get("hubness"))
    _, truth = exact.search_positions(queries, k)
    _, found = index.search_positions(queries, k)
    if truth.shape[0] == 0:
        raise EmitError("recall needs at least one query")
    hits = sum(len(set(t.tolist()) & set(f.tolist()) - {-1}) for t, f in zip(truth, found, strict=True))
    return hits / truth.size


def _differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identity dicts."""
    if isinstance(saved, Mapping) and isinstance(expected, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(expected), key=str):
            out += _differences(saved.get(key), expected.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == expected else [prefix.rstrip(".") or "(all)"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_identity(folder: Path, what: str, saved: dict[str, Any] | None, expected: Any) -> None:
    want = _identity_of(expected)
    if want is None:
        return
    if saved is None:
        raise EmitError(f"{folder}: this index records no {what}, so it cannot be checked against "
                        f"the model; rebuild the index, passing {what}= to build_index")
    diffs = _differences(saved, want)
    if diffs:
        detail = "; ".join(f"{key}: index {_short(_lookup(saved, key))}, model {_short(_lookup(want, key))}"
                           for key in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        name = saved.get("name") or want.get("name") or what
        raise EmitError(f"{folder}: the index was built for another {what} than the model's "
                        f"({name}: {detail}{more}). Rebuild the index with the current model "
                        f"(embed the images again and build_index), or load the model it was built with")


def _lookup(obj: Any, dotted: str) -> Any:
    if dotted == "(all)":
        return obj
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def load_index(folder: str | os.PathLike[str], *, expect_backbone: Any = None,
               expect_encoder: Any = None) -> SearchIndex:
    """Read an index saved by :meth:`SearchIndex.save`, refusing a mismatched model.

    ``expect_backbone`` / ``expect_encoder`` (identity dicts, a Backbone, a text encoder) are
    compared with the recorded identities; any difference is an :class:`EmitError` naming it.
    """
    faiss = faiss_module()
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise EmitError(f"{folder}: not a search index (no {MANIFEST_FILE}); build one first")
    meta = read_json(folder / MANIFEST_FILE)
    version = meta.get("format") if isinstance(meta, dict) else None
    if version not in (FORMAT_VERSION, ONDISK_FORMAT):
        raise EmitError(f"{folder / MANIFEST_FILE}: index format {version!r} is not {FORMAT_VERSION} or "
                        f"{ONDISK_FORMAT}; rebuild the index with this version of emit")
    _check_identity(folder, "backbone", meta.get("backbone"), expect_backbone)
    _check_identity(folder, "encoder", meta.get("encoder"), expect_encoder)
    if version == ONDISK_FORMAT:  # built from feature shards: opened memory-mapped, read-only
        return load_ondisk(folder, meta)
    try:
        data = (folder / INDEX_FILE).read_bytes()
    except OSError as exc:
        raise EmitError(f"{folder / INDEX_FILE}: cannot read the index ({exc.strerror or exc}); "
                        "rebuild it") from exc
    if hashlib.sha256(data).hexdigest() != meta.get("index_sha256"):
        raise EmitError(f"{folder / INDEX_FILE}: does not match {MANIFEST_FILE} (the folder mixes two "
                        "saves, or the file is damaged); rebuild the index")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise EmitError(f"{folder / INDEX_FILE}: FAISS cannot read it ({str(exc)[:200]}); rebuild") from exc
    ids = [str(i) for i in meta.get("ids", [])]
    if index.ntotal != len(ids) or index.d != meta.get("dim"):
        raise EmitError(f"{folder}: the index holds {index.ntotal} x {index.d}-d vectors but the manifest "
                        f"lists {len(ids)} ids of {meta.get('dim')}-d; rebuild the index")
    built = SearchIndex(index, ids, str(meta["kind"]), str(meta["metric"]), dict(meta.get("params") or {}),
                        meta.get("backbone"), meta.get("encoder"))
    params = built.params
    if params.get("nprobe") is not None:
        built.tune(nprobe=params["nprobe"])
    if params.get("ef_search") is not None:
        built.tune(ef_search=params["ef_search"])
    return built


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """FAISS's on-disk code prints progress with C printf; send it to stderr, so a command's
    stdout (``emit search --json``) stays clean JSON."""
    import sys

    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (an embedding app): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).fflush(None)  # C's buffered stdout, before fd 1 is restored
        os.dup2(saved, 1)
        os.close(saved)


# ---- format 2: built from feature shards (emit.retrieval.ondisk), opened memory-mapped ----


class IdColumn(Sequence[str]):
    """The ids (image paths) of an index's rows, memory-mapped from ``ids.arrow``: rows are
    looked up on demand, never turned into millions of Python strings."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.ipc
        except ImportError as exc:
            raise EmitError("indexes built from feature shards need pyarrow: pip install pyarrow") from exc
        self.path = Path(path)
        try:
            table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        except (OSError, pa.ArrowException) as exc:
            raise EmitError(f"{self.path}: cannot read the index's ids ({str(exc)[:200]}); rebuild the "
                            "index") from exc
        self._paths = table.column("path").chunks
        self._shas = table.column("sha256").chunks
        self._starts = np.cumsum([0] + [len(c) for c in self._paths]).tolist()
        self._n = self._starts[-1]

    def __len__(self) -> int:
        return self._n

    def _locate(self, row: int) -> tuple[int, int]:
        if row < 0:
            row += self._n
        if not 0 <= row < self._n:
            raise IndexError(f"row {row} outside 0..{self._n - 1}")
        chunk = bisect_right(self._starts, row) - 1
        return chunk, row - self._starts[chunk]

    @overload
    def __getitem__(self, row: int) -> str: ...
    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self._n))]
        chunk, at = self._locate(int(row))
        return str(self._paths[chunk][at].as_py())

    def sha256(self, row: int) -> str | None:
        """The sha256 of the image file of ``row`` (None if the extractor could not hash it)."""
        chunk, at = self._locate(int(row))
        value = self._shas[chunk][at].as_py()
        return None if value is None else str(value)

    def __iter__(self) -> Iterator[str]:
        for chunk in self._paths:
            yield from (str(p) for p in chunk.to_pylist())


def load_ondisk(folder: Path, meta: dict[str, Any]) -> Any:
    """Open a format-2 index folder read-only and memory-mapped (called by ``load_index``)."""
    faiss = faiss_module()
    path = folder / INDEX_FILE
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise EmitError(f"{path}: cannot read the index ({exc.strerror or exc}); rebuild it") from exc
    torn = (f"does not match {MANIFEST_FILE} (the folder mixes two builds, or the file is damaged); "
            "rebuild the index")
    hashed = size <= SHA_CHECK_BYTES  # a large (HNSW, Flat) index file is checked by its size
    if size != meta.get("index_bytes") or (
            hashed and hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("index_sha256")):
        raise EmitError(f"{path}: {torn}")
    lists = meta.get("lists_file")
    if lists is not None:
        lists_path = folder / str(lists)
        if not lists_path.is_file() or lists_path.stat().st_size != meta.get("lists_bytes"):
            raise EmitError(f"{lists_path}: missing, or {torn}")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    else:
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    try:
        with stdout_to_stderr():
            index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise EmitError(f"{path}: FAISS cannot read it ({str(exc)[:200]}); rebuild") from exc
    ids = IdColumn(folder / str(meta.get("ids_file") or IDS_FILE))
    if index.ntotal != len(ids) or index.d != meta.get("dim") or index.ntotal != meta.get("count"):
        raise EmitError(f"{folder}: the index holds {index.ntotal} x {index.d}-d vectors but the manifest "
                        f"lists {len(ids)} ids of {meta.get('dim')}-d; rebuild the index")
    built = SearchIndex(index, ids, str(meta["kind"]), str(meta["metric"]),  # type: ignore[arg-type]
                        dict(meta.get("params") or {}), meta.get("backbone"), meta.get("encoder"))
    if built.params.get("nprobe") is not None:
        built.tune(nprobe=built.params["nprobe"])
    if built.params.get("ef_search") is not None:
        built.tune(ef_search=built.params["ef_search"])
    return built
