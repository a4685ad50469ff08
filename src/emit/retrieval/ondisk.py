"""Indexes past one machine's RAM: built from feature shards, merged on disk, opened memory-mapped.

``emit features extract --out DIR`` writes image features as Parquet shards (``DIR/*.parquet``:
``path``, ``sha256``, ``features`` list<float32>, ``error``; the schema metadata key
``emit.backbone_key`` names the backbone). :func:`build_from_features` turns them into an index
folder without ever holding all vectors in memory, with FAISS's own tools:

1. *scan*: every shard's backbone key is checked against the run's (a shard of another
   backbone is refused, naming it); rows with an ``error`` are skipped (one problem per shard);
   the ids of the usable rows (row -> path, sha256) are streamed into ``ids.arrow``;
2. *train*: the IVF quantiser (and the PQ codebooks) are trained on a seeded sample of rows;
3. *add*: groups of shards ("blocks", at most ``block_rows`` rows each) are added to copies of
   the trained, empty index in parallel processes (``concurrent.futures.ProcessPoolExecutor``),
   each block written to disk with its global row numbers as FAISS ids;
4. *merge*: ``faiss.contrib.ondisk.merge_ondisk`` merges the blocks' inverted lists into one
   ``lists.ivfdata`` (``OnDiskInvertedLists``); ``index.faiss`` holds the quantiser, the
   codebooks and the lists' offsets only.

Each chunk of raw features goes through the run's image side (:meth:`RetrievalModel.image_vectors`:
normalisation and projection) and, for a hubness-corrected index, gets its extra coordinate the
same way as :func:`emit.retrieval.index.build_index` folds it (the bias of a candidate depends on
it and the bank only, so chunks fold independently). Kinds ``hnsw`` and ``exact`` have no
inverted lists to merge: they are filled chunk by chunk in one process and need their size in
RAM to build; they are opened memory-mapped all the same.

The folder is one commit (:mod:`emit.commit`); ``index.json`` has format 2: no inline ids, the
sha256 and size of every file. :func:`emit.retrieval.index.load_index` opens ``index.faiss`` read-only with
``IO_FLAG_ONDISK_SAME_DIR`` (the lists are memory-mapped from ``lists.ivfdata``) or
``IO_FLAG_MMAP_IFC`` (Flat and HNSW storage mapped from the file), and ``ids.arrow`` memory-mapped
(Arrow IPC, i.e. Feather v2: pandas, DuckDB and Polars read it). Several processes that open
the same folder share its pages through the OS page cache: ``emit serve --workers N``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emit.config import versions
from emit.files import atomic_write, atomic_write_bytes, atomic_write_json
from emit.problems import EmitError, ProblemLog
from emit.retrieval.fold import fold_candidates
from emit.retrieval.index import (  # no torch there: a build's worker processes stay small
    IDS_FILE,
    INDEX_FILE,
    LISTS_FILE,
    MANIFEST_FILE,
    IdColumn,
    default_nlist,
    faiss_module,
    stdout_to_stderr,
)

__all__ = ["IDS_FILE", "LISTS_FILE", "BuildSettings", "IdColumn", "ImageSide", "Shard", "backbone_key",
           "build_from_features", "iter_features", "ivf_factory", "plan_blocks", "scan_shards", "shard_files"]

log = logging.getLogger("emit")

SHARD_BACKBONE_KEY = b"emit.backbone_key"  # the shards' schema metadata key (emit features extract)
SHARD_COLUMNS = ("path", "sha256", "features", "error")
ONDISK_FORMAT = 2
FEATURE_KINDS = ("ivfpq", "ivfflat", "ivf", "hnsw", "exact")  # ivf: the same as ivfflat
IVF_KINDS = ("ivfpq", "ivfflat", "ivf")
DEFAULT_CHUNK_ROWS = 16384  # rows mapped through the model at a time
DEFAULT_BLOCK_ROWS = 1_000_000  # rows of one parallel block (its codes are held in RAM while added)
_SCRATCH_PREFIX = ".emit-index-build-"

PathLike = str | os.PathLike[str]


def _pa() -> Any:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as exc:
        raise EmitError("indexes from feature shards need pyarrow: pip install pyarrow") from exc
    return pyarrow


def backbone_key(identity: dict[str, Any]) -> str:
    """The key of a backbone identity, as :attr:`emit.vision.backbones.Backbone.key` computes it
    (so the identity a run records is enough: no backbone weights are loaded to check shards)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One feature shard: its usable rows are index rows ``offset .. offset + rows - 1``."""

    path: str
    rows: int
    offset: int


def shard_files(folder: PathLike) -> list[Path]:
    """``folder/*.parquet``, sorted by name (the row order of the index); hidden temporaries skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EmitError(f"{folder}: not a folder of feature shards; give the --out folder of "
                        "`emit features extract`")
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise EmitError(f"{folder}: holds no *.parquet feature shards; run `emit features extract "
                        f"--out {folder} IMAGES` first")
    return files


def check_shard_schema(path: Path, expect_key: str) -> None:
    """Refuse a shard that is not Parquet, lacks a column, or holds another backbone's features."""
    pa = _pa()
    try:
        schema = pa.parquet.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise EmitError(f"{path}: not a readable Parquet file ({str(exc)[:200]}); delete it and rerun "
                        "`emit features extract` (it rewrites missing shards)") from exc
    missing = [c for c in SHARD_COLUMNS if c not in schema.names]
    if missing:
        raise EmitError(f"{path}: lacks the column(s) {', '.join(missing)} of a feature shard "
                        f"({', '.join(SHARD_COLUMNS)}); write it with `emit features extract`")
    key = (schema.metadata or {}).get(SHARD_BACKBONE_KEY)
    if key is None:
        raise EmitError(f"{path}: records no backbone (schema metadata {SHARD_BACKBONE_KEY.decode()}), "
                        "so its features cannot be checked against the model; write it with "
                        "`emit features extract`")
    if key.decode("utf-8", "replace") != expect_key:
        raise EmitError(f"{path}: holds features of another backbone (key {key.decode('utf-8', 'replace')}) "
                        f"than the run's (key {expect_key}); extract the features again with the run's "
                        "backbone (`emit features extract --backbone ...` as in the run's config), or build "
                        "with the run trained on these features")


def scan_shards(folder: PathLike, expect_key: str, problems: ProblemLog, ids_out: Any | None = None
                ) -> list[Shard]:
    """Check every shard, count its usable rows and give each its first index row.

    Error rows are skipped, with one problem per shard; with ``ids_out`` (a writable binary
    file) the usable rows' ``path`` and ``sha256`` are streamed into it as an Arrow IPC file.
    Only these small columns are read here, never the features.
    """
    pa = _pa()
    files = shard_files(folder)
    for path in files:  # all refused before any work
        check_shard_schema(path, expect_key)
    schema = pa.schema([pa.field("path", pa.string()), pa.field("sha256", pa.string())])
    writer = pa.ipc.new_file(ids_out, schema) if ids_out is not None else None
    shards: list[Shard] = []
    offset = 0
    try:
        for path in files:
            table = pa.parquet.read_table(path, columns=["path", "sha256", "error"])
            ok = table.column("error").is_null()
            bad = len(table) - int(pa.compute.sum(ok.cast(pa.int64())).as_py() or 0)
            if bad:
                errors = table.filter(pa.compute.invert(ok))
                first = errors.column("path")[0].as_py()
                problems.add(path, first, f"{bad} row(s) hold a feature-extraction error (first: "
                             f"{str(errors.column('error')[0].as_py())[:200]}); skipped",
                             "fix or remove those images and rerun `emit features extract`")
            kept = table.filter(ok)
            if writer is not None and len(kept):
                writer.write_table(kept.select(["path", "sha256"]).cast(schema))
            shards.append(Shard(str(path), len(kept), offset))
            offset += len(kept)
    finally:
        if writer is not None:
            writer.close()
    return shards


def _matrix(column: Any, where: str, first_row: int) -> np.ndarray:
    """A list<float> Arrow column -> (N, D) float32, refusing nulls and ragged rows."""
    pa = _pa()
    if column.null_count:
        raise EmitError(f"{where}: a row without an error has no features (near row {first_row}); the "
                        "shard is damaged: delete it and rerun `emit features extract`")
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = pa.compute.list_value_length(column)
    lo, hi = pa.compute.min(lengths).as_py(), pa.compute.max(lengths).as_py()
    if lo != hi:
        raise EmitError(f"{where}: feature vectors of different lengths ({lo} and {hi}, near row "
                        f"{first_row}); delete the shard and rerun `emit features extract`")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.astype(np.float32, copy=False).reshape(n, hi))


def iter_features(shard: Shard, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[np.ndarray]:
    """The raw features of a shard's usable rows, in order, ``chunk_rows`` at a time."""
    pa = _pa()
    pf = pa.parquet.ParquetFile(shard.path)
    seen = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=["features", "error"]):
        ok = batch.column("error").is_null()
        feats = batch.column("features").filter(ok)
        if len(feats):
            yield _matrix(feats, shard.path, seen)
        seen += batch.num_rows


# --------------------------------------------------------------------------- the image side


@dataclass(frozen=True)
class ImageSide:
    """What maps raw features to index rows, picklable for worker processes: the run's model
    (``run``; None: the features are already index vectors) and the hubness correction folded in."""

    run: str | None
    direction: str = "none"  # resolved: a direction that corrects 'images', or none
    beta: float = 10.0
    metric: str = "ip"


class _Mapper:
    def __init__(self, side: ImageSide, model: Any = None, bank: Any = None) -> None:
        # torch comes with the model and the bank only: without them a worker stays small
        self.side = side
        if side.run is not None and model is None:
            from emit.retrieval.model import RetrievalModel

            model = RetrievalModel.load(side.run)
        self.model = model
        self.correct = side.direction in ("text_to_image", "both")  # the directions that correct images
        if self.correct and bank is None:
            from emit.retrieval.hubness import HubnessBank

            bank = HubnessBank.load(side.run, model)  # type: ignore[arg-type]
        self.bank = bank

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = self.model.image_vectors(raw) if self.model is not None else np.ascontiguousarray(raw, np.float32)
        if not self.correct:
            return x
        from emit.retrieval.hubness import bank_bias  # imports torch: only when used
        bias = bank_bias(x, self.bank.for_target("images"), beta=self.side.beta, metric=self.side.metric)
        rows, shift = fold_candidates(x, bias, self.side.metric)
        assert shift == 0.0  # ip only: an l2 shift depends on every row (refused before the build)
        return rows


_MAPPERS: dict[ImageSide, _Mapper] = {}  # one per process: a worker loads the model once


def _mapper(side: ImageSide) -> _Mapper:
    if side not in _MAPPERS:
        _MAPPERS[side] = _Mapper(side)
    return _MAPPERS[side]


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class _Block:
    shards: tuple[Shard, ...]
    trained: str  # the trained, empty index
    out: str  # where the populated block goes
    side: ImageSide
    chunk_rows: int
    threads: int


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM: of its own image, unlike ru_maxrss, which
    counts a spawned child's pages from before its exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _add_block(block: _Block) -> tuple[int, float | None]:
    """Fill a copy of the trained index with the block's shards (ids: global rows); write it.
    Returns the rows added and this process's peak memory."""
    import sys

    faiss = faiss_module()
    faiss.omp_set_num_threads(block.threads)
    mapper = _mapper(block.side)
    if "torch" in sys.modules:  # the model's (never imported just for this: ~700 MB)
        sys.modules["torch"].set_num_threads(block.threads)
    index = faiss.read_index(block.trained)
    for shard in block.shards:
        row = shard.offset
        for raw in iter_features(shard, block.chunk_rows):
            x = mapper(raw)
            index.add_with_ids(x, np.arange(row, row + len(x), dtype=np.int64))
            row += len(x)
        if row != shard.offset + shard.rows:
            raise EmitError(f"{shard.path}: changed while the index was built ({row - shard.offset} usable "
                            f"rows now, {shard.rows} before); build again once the shards are written")
    faiss.write_index(index, block.out)
    return int(index.ntotal), peak_rss_mib()


def plan_blocks(shards: Sequence[Shard], block_rows: int) -> list[tuple[Shard, ...]]:
    """Consecutive shards grouped into blocks of at most ``block_rows`` rows (at least one shard)."""
    blocks: list[tuple[Shard, ...]] = []
    current: list[Shard] = []
    rows = 0
    for shard in shards:
        if shard.rows == 0:
            continue
        if current and rows + shard.rows > block_rows:
            blocks.append(tuple(current))
            current, rows = [], 0
        current.append(shard)
        rows += shard.rows
    if current:
        blocks.append(tuple(current))
    return blocks


def _sample(shards: Sequence[Shard], size: int, side: ImageSide, chunk_rows: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` index rows (mapped), read shard by shard."""
    total = sum(s.rows for s in shards)
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    mapper = _mapper(side)
    parts: list[np.ndarray] = []
    for shard in shards:
        lo, hi = np.searchsorted(picked, [shard.offset, shard.offset + shard.rows])
        if lo == hi:
            continue
        want = picked[lo:hi] - shard.offset
        start = 0
        for raw in iter_features(shard, chunk_rows):
            take = want[(want >= start) & (want < start + len(raw))] - start
            if len(take):
                parts.append(mapper(raw[take]))
            start += len(raw)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def pq_subquantizers(dim: int) -> int:
    """Default PQ size: one byte per 2 dimensions, at most 128 bytes per vector (at 4 dimensions
    a byte, recall@10 against exact fell to about 0.5 on clustered test data; OPQ recovered it
    but trained for minutes on a sample of 20,000 on 2 cores)."""
    per_byte = max(2, math.ceil(dim / 128))
    return math.ceil(dim / per_byte)


def ivf_factory(kind: str, dim: int, nlist: int, pq_m: int | None = None) -> str:
    """The index_factory string of an IVF kind.

    PQ pads the dimension to a multiple of ``pq_m`` (the hubness coordinate makes it odd, e.g.
    257) with zeros, which change no distance. An OPQ rotation (``BuildSettings.factory``
    ``"OPQ64,IVF1024,PQ64"``) buys recall at fewer bytes, at a much longer training."""
    if kind == "ivfpq":
        m = pq_subquantizers(dim) if pq_m is None else int(pq_m)
        if m < 1:
            raise EmitError(f"--pq-m must be at least 1, got {m}")
        padded = math.ceil(dim / m) * m
        pad = f"Pad{padded}," if padded != dim else ""
        return f"{pad}IVF{nlist},PQ{m}"
    return f"IVF{nlist},Flat"


def _scratch(out: Path) -> Path:
    """A scratch folder for the blocks inside ``out`` (same disk); a killed build's is removed."""
    from emit.files import pid_alive

    for old in out.glob(f"{_SCRATCH_PREFIX}*"):
        with contextlib.suppress(ValueError):
            if not pid_alive(int(old.name.rsplit("-", 1)[-1])):
                shutil.rmtree(old, ignore_errors=True)
    path = out / f"{_SCRATCH_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class BuildSettings:
    """How to build from shards (the ``emit index build --from-features`` flags)."""

    kind: str = "ivfpq"
    nlist: int | None = None  # default: about 4 sqrt(N)
    nprobe: int | None = None  # default: max(8, nlist / 8)
    pq_m: int | None = None  # PQ bytes per vector; default: pq_subquantizers(dim)
    factory: str | None = None  # an index_factory string instead (IVF for the on-disk merge)
    train_size: int | None = None  # default: max(40 nlist, 10000), at most N
    workers: int = 1  # processes adding blocks in parallel
    block_rows: int = DEFAULT_BLOCK_ROWS
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    seed: int = 0
    m: int = 32  # HNSW
    ef_construction: int = 40
    ef_search: int = 64

    def validate(self) -> BuildSettings:
        if self.kind not in FEATURE_KINDS:
            raise EmitError(f"unknown index kind {self.kind!r} for --from-features; use one of "
                            f"{', '.join(FEATURE_KINDS)}")
        for name in ("workers", "block_rows", "chunk_rows"):
            if getattr(self, name) < 1:
                raise EmitError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("nlist", "nprobe", "pq_m", "train_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EmitError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        return self


def build_from_features(features: PathLike, out: PathLike, side: ImageSide, settings: BuildSettings, *,
                        expect_key: str, backbone: dict[str, Any] | None, encoder: dict[str, Any] | None,
                        hubness: dict[str, Any] | None, problems: ProblemLog, model: Any = None,
                        bank: Any = None) -> dict[str, Any]:
    """Build the image index of ``out`` from the shards in ``features`` (see the module docstring).

    Call inside ``folder_commit(out)``: every file is staged into that commit. ``model`` and
    ``bank`` (already loaded for ``side.run``) spare this process loading them again. Returns
    what ``index.json`` records.
    """
    faiss_module()  # a clear error without FAISS, before any work
    settings.validate()
    if side.metric == "l2" and side.direction not in ("none", "auto") and hubness:
        raise EmitError("a hubness correction of a squared-distance (l2) index needs one shift over all "
                        "rows, which a build from shards does not compute yet; use --hubness none, or "
                        "build from the image folders")
    if side.run is not None:
        _MAPPERS[side] = _Mapper(side, model, bank)
    try:
        return _build(features, Path(out), side, settings, expect_key, backbone, encoder, hubness, problems)
    finally:
        _MAPPERS.pop(side, None)  # the model is the caller's; this process keeps no copy


def _build(features: PathLike, out: Path, side: ImageSide, settings: BuildSettings, expect_key: str,
           backbone: dict[str, Any] | None, encoder: dict[str, Any] | None, hubness: dict[str, Any] | None,
           problems: ProblemLog) -> dict[str, Any]:
    faiss = faiss_module()
    start = time.perf_counter()
    with_ids: dict[str, list[Shard]] = {}

    def write_ids(fh: Any) -> None:
        with_ids["shards"] = scan_shards(features, expect_key, problems, fh)

    atomic_write(out / IDS_FILE, write_ids)
    shards = with_ids["shards"]
    n = sum(s.rows for s in shards)
    if n == 0:
        raise EmitError(f"{features}: no usable rows (every row holds an error); see the problems above")
    timings: dict[str, float] = {"scan": time.perf_counter() - start}
    first = next(s for s in shards if s.rows)
    dim = _mapper(side)(next(iter_features(first, 1))).shape[1]  # the index rows' width
    kind = "ivfflat" if settings.kind == "ivf" else settings.kind
    params: dict[str, Any] = {"storage": "ondisk" if kind in IVF_KINDS else "mmap"}
    if hubness:
        params["hubness"] = {**hubness, "shift": 0.0}
    metric = faiss.METRIC_L2 if side.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind in IVF_KINDS:
        lists_bytes = _build_ivf(shards, n, dim, kind, metric, side, settings, out, params, timings)
    else:
        lists_bytes = None
        _build_in_memory(shards, dim, kind, metric, side, settings, out, params, timings)
    index_bytes = params.pop("_index_bytes")
    worker_peak = params.pop("_worker_peak_rss_mib", None)
    workers_used = params.pop("_workers", 1)
    manifest = {
        "format": ONDISK_FORMAT, "kind": kind, "metric": side.metric, "dim": int(dim), "count": int(n),
        "params": params, "backbone": backbone, "encoder": encoder,
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(), "index_bytes": len(index_bytes),
        "ids_file": IDS_FILE, "lists_file": LISTS_FILE if lists_bytes is not None else None,
        "lists_bytes": lists_bytes,
        "features": {"folder": str(Path(os.path.abspath(features))), "shards": len(shards),
                     "backbone_key": expect_key},
        "build": {"workers": workers_used, "seconds": {k: round(v, 2) for k, v in timings.items()},
                  "peak_rss_mib": {"process": peak_rss_mib(), "largest_worker": worker_peak}},
        "versions": {**versions(), "faiss": faiss.__version__},
    }
    atomic_write_json(out / MANIFEST_FILE, manifest, indent=1)
    return manifest


def _write_index(out: Path, index: Any, params: dict[str, Any]) -> None:
    data = faiss_module().serialize_index(index).tobytes()
    atomic_write_bytes(out / INDEX_FILE, data)
    params["_index_bytes"] = data


def _build_ivf(shards: Sequence[Shard], n: int, dim: int, kind: str, metric: int, side: ImageSide,
               settings: BuildSettings, out: Path, params: dict[str, Any], timings: dict[str, float]) -> int:
    from emit.files import active_stager, temp_path

    faiss = faiss_module()
    from faiss.contrib.ondisk import merge_ondisk

    nlist = settings.nlist or default_nlist(n)
    factory = settings.factory or ivf_factory(kind, dim, nlist, settings.pq_m)
    try:
        trained = faiss.index_factory(dim, factory, metric)
    except RuntimeError as exc:
        raise EmitError(f"FAISS does not understand the index description {factory!r} "
                        f"({str(exc).strip().splitlines()[-1][:200]})") from exc
    ivf = faiss.try_extract_index_ivf(trained)
    if ivf is None:
        raise EmitError(f"{factory!r} is not an IVF index; the on-disk merge needs one (IVF...,Flat or PQ)")
    nlist = int(ivf.nlist)
    ivfpq = faiss.downcast_index(ivf)
    if hasattr(ivfpq, "do_polysemous_training"):
        # on by default from index_factory; it only serves polysemous search (unused) and makes
        # training tens of times slower
        ivfpq.do_polysemous_training = False
    if n < nlist:
        raise EmitError(f"{factory!r} needs at least {nlist} vectors to train, got {n}; lower --nlist")
    codes = 2 ** int(ivfpq.pq.nbits) if hasattr(ivfpq, "pq") else 0
    if n < codes:  # FAISS would stop with a RuntimeError deep in its PQ training
        raise EmitError(f"{factory!r}: product quantisation trains {codes} codes and needs at least {codes} "
                        f"vectors, got {n}; use --kind ivfflat (or exact) for so few images")
    t = time.perf_counter()
    sample = _sample(shards, settings.train_size or max(40 * nlist, 10_000), side, settings.chunk_rows,
                     settings.seed)
    trained.train(sample)
    del sample
    timings["train"] = time.perf_counter() - t
    scratch = _scratch(out)
    try:
        trained_path = scratch / "trained.index"
        faiss.write_index(trained, str(trained_path))
        # blocks of at most block_rows (their codes are in a worker's RAM), and at least one per worker
        blocks = plan_blocks(shards, min(settings.block_rows, math.ceil(n / settings.workers)))
        workers = max(1, min(settings.workers, len(blocks)))
        params["_workers"] = workers
        threads = max(1, (os.cpu_count() or 1) // workers)
        tasks = [_Block(b, str(trained_path), str(scratch / f"block-{i:05d}.index"), side,
                        settings.chunk_rows, threads) for i, b in enumerate(blocks)]
        t = time.perf_counter()
        if workers == 1:  # no process start-up (nor model reload) for one worker
            results = [_add_block(task) for task in tasks]
        else:
            # spawn, not fork: torch and OpenMP threads of this process must not be copied
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                results = list(pool.map(_add_block, tasks))
            peaks = [p for _, p in results if p is not None]
            params["_worker_peak_rss_mib"] = max(peaks) if peaks else None
        added = [rows for rows, _ in results]
        timings["add"] = time.perf_counter() - t
        log.info("added %d rows in %d block(s) with %d worker(s)", sum(added), len(tasks), workers)
        if sum(added) != n:
            raise EmitError(f"the blocks hold {sum(added)} rows, the shards {n}; build again")
        t = time.perf_counter()
        final = out / LISTS_FILE
        lists_tmp = temp_path(final)
        with stdout_to_stderr():
            merge_ondisk(trained, [t.out for t in tasks], str(lists_tmp))
        invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(trained).invlists)
        invlists.filename = LISTS_FILE  # opened beside index.faiss (IO_FLAG_ONDISK_SAME_DIR)
        ivf_final = faiss.extract_index_ivf(trained)
        ivf_final.nprobe = max(1, min(settings.nprobe or max(8, nlist // 8), nlist))
        params.update({"factory": factory, "nlist": nlist, "nprobe": int(ivf_final.nprobe),
                       "train_size": int(min(settings.train_size or max(40 * nlist, 10_000), n))})
        _write_index(out, trained, params)
        del invlists, ivf_final, trained  # unmaps the lists file: its pages are written
        fd = os.open(lists_tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(lists_tmp, 0o644)
        stager = active_stager(final)
        if stager is None:
            os.replace(lists_tmp, final)
        else:
            stager.stage(final, lists_tmp)
        timings["merge"] = time.perf_counter() - t
        return final.stat().st_size if stager is None else lists_tmp.stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_in_memory(shards: Sequence[Shard], dim: int, kind: str, metric: int, side: ImageSide,
                     settings: BuildSettings, out: Path, params: dict[str, Any],
                     timings: dict[str, float]) -> None:
    """HNSW or Flat: no inverted lists to merge, filled chunk by chunk in this process."""
    from emit.files import active_stager

    faiss = faiss_module()
    factory = settings.factory or ("Flat" if kind == "exact" else f"HNSW{int(settings.m)}")
    index = faiss.index_factory(dim, factory, metric)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = int(settings.ef_construction)
        hnsw.efSearch = int(settings.ef_search)
        params.update({"m": int(settings.m), "ef_construction": int(settings.ef_construction),
                       "ef_search": int(settings.ef_search)})
    if not index.is_trained:
        raise EmitError(f"{factory!r} needs training; use --kind ivfpq or ivfflat for trained indexes")
    mapper = _mapper(side)
    t = time.perf_counter()
    for shard in shards:
        for raw in iter_features(shard, settings.chunk_rows):
            index.add(mapper(raw))
    timings["add"] = time.perf_counter() - t
    params["factory"] = factory
    _write_index(out, index, params)
    stager = active_stager(out / LISTS_FILE)
    if stager is not None:
        stager.remove(out / LISTS_FILE)  # an earlier on-disk build's lists
    else:
        (out / LISTS_FILE).unlink(missing_ok=True)
