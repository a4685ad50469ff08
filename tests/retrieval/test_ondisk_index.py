"""Indexes from feature shards (emit.retrieval.ondisk): ids survive the parallel add and the
on-disk merge, IVF-PQ recall against exact search, identity and bad-row handling, the CLI job
through a real retrieval run (same results as the image-folder build), and old indexes still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow not installed")
import pyarrow.parquet as pq  # noqa: E402

from emit.commit import folder_commit  # noqa: E402
from emit.problems import EmitError, ProblemLog  # noqa: E402
from emit.retrieval.index import INDEX_FILE, MANIFEST_FILE, build_index, load_index  # noqa: E402
from emit.retrieval.ondisk import (  # noqa: E402
    IDS_FILE,
    LISTS_FILE,
    BuildSettings,
    IdColumn,
    ImageSide,
    backbone_key,
    build_from_features,
    ivf_factory,
    plan_blocks,
    scan_shards,
)

KEY = "0123456789abcdef"
# recall@10 of the default IVF-PQ (2 dimensions a byte, every list probed) against exact search
# on clustered 32-d data of intrinsic dimension 8; measured 0.82 with plain FAISS
PQ_RECALL_BOUND = 0.7


def clustered(n: int, d: int, seed: int = 0, clusters: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 3
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # inner product = cosine
    return x.astype(np.float32)


def write_shards(folder: Path, x: np.ndarray, per_shard: int, *, key: str = KEY,
                 errors: dict[int, str] | None = None, prefix: str = "/data/img") -> list[str]:
    """Shards in the schema of `emit features extract`; returns the paths of the usable rows, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    errors = errors or {}
    usable = []
    for s, start in enumerate(range(0, len(x), per_shard)):
        rows = range(start, min(start + per_shard, len(x)))
        paths = [f"{prefix}/{i:06d}.jpg" for i in rows]
        err = [errors.get(i) for i in rows]
        feats = [None if errors.get(i) else x[i].tolist() for i in rows]
        shas = [None if e else f"sha-{i}" for i, e in zip(rows, err, strict=True)]
        table = pa.table({"path": paths, "sha256": shas,
                          "features": pa.array(feats, type=pa.list_(pa.float32())),
                          "error": pa.array(err, type=pa.string())})
        pq.write_table(table.replace_schema_metadata({b"emit.backbone_key": key.encode()}),
                       folder / f"part-{s:05d}.parquet")
        usable += [p for p, e in zip(paths, err, strict=True) if e is None]
    return usable


def build(features: Path, out: Path, settings: BuildSettings, problems: ProblemLog | None = None) -> dict:
    with folder_commit(out, label="index"):
        return build_from_features(features, out, ImageSide(None, metric="ip"), settings, expect_key=KEY,
                                   backbone={"name": "test"}, encoder=None, hubness=None,
                                   problems=ProblemLog(echo=False) if problems is None else problems)


def test_ids_survive_the_parallel_add_and_the_on_disk_merge(tmp_path: Path) -> None:
    x = clustered(1200, 16)
    errors = {5: "truncated JPEG", 777: "not an image"}
    paths = write_shards(tmp_path / "feats", x, 200, errors=errors)
    kept = np.delete(x, sorted(errors), axis=0)
    problems = ProblemLog(echo=False)
    # blocks of at most 450 rows: 3 blocks, added by 2 processes, merged into one lists file
    manifest = build(tmp_path / "feats", tmp_path / "idx",
                     BuildSettings(kind="ivfflat", nlist=8, workers=2, block_rows=450), problems)
    assert manifest["count"] == len(paths) == 1198 and manifest["format"] == 2
    assert {p.name for p in (tmp_path / "idx").iterdir()} >= {INDEX_FILE, MANIFEST_FILE, LISTS_FILE, IDS_FILE}
    assert not list((tmp_path / "idx").glob(".emit-index-build-*"))  # the blocks are gone
    assert len(problems) == 2 and all("feature-extraction error" in p.what for p in problems)
    index = load_index(tmp_path / "idx").tune(nprobe=8)  # every list: exact over the stored rows
    assert isinstance(index.ids, IdColumn) and list(index.ids) == paths
    assert index.ids.sha256(0) == "sha-0" and index.ids[-1] == paths[-1]
    scores, found = index.search(kept, 1)
    assert [f[0] for f in found] == paths  # every row is found by its own vector, with its own path
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert not any("/000005.jpg" in p or "/000777.jpg" in p for p in index.ids)  # error rows skipped


def structured(n: int, d: int, seed: int, latent: int = 8, clusters: int = 24) -> np.ndarray:
    """Clustered unit vectors of low intrinsic dimension (as image embeddings are): ``latent``-d
    clusters mapped into ``d`` dimensions, plus a little noise."""
    rng = np.random.default_rng(seed)
    lift = np.random.default_rng(99).standard_normal((latent, d))
    centres = np.random.default_rng(98).standard_normal((clusters, latent)) * 2
    z = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, latent))
    x = z @ lift + 0.1 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_ivfpq_recall_against_exact_is_above_the_bound(tmp_path: Path, record_property) -> None:
    d = 32
    x = structured(6000, d, seed=1)
    q = structured(50, d, seed=2)
    write_shards(tmp_path / "feats", x, 1500)
    manifest = build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind="ivfpq", nlist=16, workers=1))
    assert manifest["params"]["factory"] == ivf_factory("ivfpq", d, 16) == "IVF16,PQ16"  # the default
    index = load_index(tmp_path / "idx").tune(nprobe=16)
    _, rows = index.search_positions(q, 10)
    truth = exact_top(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), rows.tolist(), strict=True)])
    record_property("recall@10[ivfpq ondisk]", recall)
    print(f"IVF16,PQ16 on disk, nprobe 16: recall@10 vs exact = {recall:.3f}")
    assert recall >= PQ_RECALL_BOUND


def test_pq_pads_an_odd_dimension() -> None:
    assert ivf_factory("ivfpq", 257, 64) == "Pad258,IVF64,PQ86"  # 256-d + the hubness coordinate
    assert ivf_factory("ivfpq", 256, 64) == "IVF64,PQ128" and ivf_factory("ivfpq", 1280, 8) == "IVF8,PQ128"
    assert ivf_factory("ivfpq", 257, 64, pq_m=64) == "Pad320,IVF64,PQ64"
    assert ivf_factory("ivfpq", 256, 64, pq_m=32) == "IVF64,PQ32"
    assert ivf_factory("ivfflat", 257, 64) == "IVF64,Flat"


@pytest.mark.parametrize("kind", ["hnsw", "exact"])
def test_graph_and_flat_kinds_open_memory_mapped(tmp_path: Path, kind: str) -> None:
    x = clustered(400, 8)
    paths = write_shards(tmp_path / "feats", x, 150)
    build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind=kind, chunk_rows=64))
    index = load_index(tmp_path / "idx")
    assert index.params["storage"] == "mmap" and not (tmp_path / "idx" / LISTS_FILE).exists()
    _, found = index.search(x[:20], 1)
    assert [f[0] for f in found] == paths[:20]


def test_a_shard_of_another_backbone_is_refused_by_name(tmp_path: Path) -> None:
    x = clustered(300, 8)
    write_shards(tmp_path / "feats", x[:150], 150)
    other = tmp_path / "other"
    write_shards(other, x[150:], 150, key="fedcba9876543210")
    (other / "part-00000.parquet").rename(tmp_path / "feats" / "part-00001.parquet")
    with pytest.raises(EmitError, match=r"part-00001\.parquet: holds features of another backbone.*"
                                        r"fedcba9876543210.*extract the features again"):
        build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind="ivfflat", nlist=2))
    assert not (tmp_path / "idx" / INDEX_FILE).exists()  # nothing committed
    table = pq.read_table(tmp_path / "feats" / "part-00000.parquet")
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "feats" / "part-00001.parquet")
    with pytest.raises(EmitError, match=r"part-00001\.parquet: records no backbone"):
        build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind="ivfflat", nlist=2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmitError, match=r"holds no \*\.parquet feature shards"):
        build(tmp_path / "empty", tmp_path / "idx", BuildSettings())


def test_scan_counts_usable_rows_and_blocks_group_whole_shards(tmp_path: Path) -> None:
    x = clustered(500, 4)
    write_shards(tmp_path / "feats", x, 100, errors={i: "bad" for i in range(100, 200)})  # shard 1: all bad
    shards = scan_shards(tmp_path / "feats", KEY, ProblemLog(echo=False))
    assert [s.rows for s in shards] == [100, 0, 100, 100, 100]
    assert [s.offset for s in shards] == [0, 100, 100, 200, 300]
    assert [[s.offset for s in b] for b in plan_blocks(shards, 250)] == [[0, 100], [200, 300]]
    assert [len(b) for b in plan_blocks(shards, 1)] == [1, 1, 1, 1]  # a shard is never split


def test_an_existing_format_index_still_loads_beside_the_new_one(tmp_path: Path) -> None:
    x = clustered(200, 8)
    ids = [f"img{i}" for i in range(200)]
    build_index(x, ids, "ivf", "ip", nlist=4, nprobe=4).save(tmp_path / "old")
    old = load_index(tmp_path / "old")
    assert json.loads((tmp_path / "old" / MANIFEST_FILE).read_text())["format"] == 1
    assert old.ids == ids and old.search(x[:3], 1)[1] == [[i] for i in ids[:3]]
    write_shards(tmp_path / "feats", x, 100, prefix="img")
    build(tmp_path / "feats", tmp_path / "new", BuildSettings(kind="ivfflat", nlist=4, nprobe=4))
    new = load_index(tmp_path / "new")
    assert new.search(x[:3], 1)[1] == [[f"img/{i:06d}.jpg"] for i in range(3)]
    with pytest.raises(EmitError, match="read-only"):
        new.save(tmp_path / "copy")


def test_a_damaged_lists_file_is_refused(tmp_path: Path) -> None:
    x = clustered(300, 8)
    write_shards(tmp_path / "feats", x, 100)
    build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind="ivfflat", nlist=4))
    with open(tmp_path / "idx" / LISTS_FILE, "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.raises(EmitError, match=r"lists\.ivfdata: missing, or does not match index\.json"):
        load_index(tmp_path / "idx")


def test_backbone_key_is_the_backbones_own() -> None:
    from emit.vision.backbones import create_backbone

    backbone = create_backbone("colour-hist")
    assert backbone_key(json.loads(json.dumps(backbone.identity))) == backbone.key


# ---- the job, through a real (tiny) retrieval run ---------------------------------------------


@pytest.fixture(scope="module")
def run_and_features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from emit.data.synthetic import make_shapes
    from emit.retrieval.config import RetrievalConfig
    from emit.retrieval.jobs import train_job
    from emit.vision.backbones import create_backbone
    from emit.vision.features import extract_features

    root = tmp_path_factory.mktemp("ondisk-run")
    data = make_shapes(root / "shapes", variants=2)
    cache = root / "cache"
    config = RetrievalConfig(encoder="lstm", backbone="colour-hist", vectors=str(data["vectors"]),
                             hidden=16, num_layers=1,
                             epochs=3, batch_size=20, lr=0.01, val_fraction=0)
    train_job(data["titles"], data["clicks"], root / "run", config, cache_dir=cache, progress=False)
    images = sorted(str(p.resolve()) for p in data["images"].glob("*.png"))
    backbone = create_backbone("colour-hist")
    feats, ok = extract_features([Path(p) for p in images], backbone, cache_dir=cache,
                                 problems=ProblemLog(echo=False), progress=False)
    assert ok.all()
    # as `emit features extract` writes them: sorted paths, two shards, one broken image
    paths = [*images, str(root / "broken.jpg")]
    vectors = [*feats.tolist(), None]
    errors = [None] * len(images) + ["cannot identify image file; re-download it"]
    out = root / "feats"
    out.mkdir()
    for s, (lo, hi) in enumerate([(0, 25), (25, len(paths))]):
        table = pa.table({"path": paths[lo:hi], "sha256": [f"sha-{i}" for i in range(lo, hi)],
                          "features": pa.array(vectors[lo:hi], type=pa.list_(pa.float32())),
                          "error": pa.array(errors[lo:hi], type=pa.string())})
        pq.write_table(table.replace_schema_metadata({b"emit.backbone_key": backbone.key.encode()}),
                       out / f"part-{s:05d}.parquet")
    return {"root": root, "run": root / "run", "features": out, "images": data["images"], "cache": cache,
            "titles": data["titles"]}


def test_the_job_matches_the_image_folder_build(run_and_features: dict[str, Path]) -> None:
    from emit.retrieval.jobs import build_index_from_features_job, build_index_job
    from emit.retrieval.search import IndexSearcher

    r = run_and_features
    build_index_job(r["run"], [r["images"]], r["root"] / "from-images", cache_dir=r["cache"], progress=False)
    summary = build_index_from_features_job(r["run"], r["features"], r["root"] / "from-shards",
                                            settings=BuildSettings(kind="ivfflat", nlist=2, nprobe=2),
                                            texts=r["titles"])
    assert summary["images"] == 40 and summary["problems"] == 1 and summary["storage"] == "ondisk"
    assert summary["hubness"]["direction"] == "both"  # the cosine run's default corrects images too
    a = IndexSearcher.open(r["root"] / "from-images")
    b = IndexSearcher.open(r["root"] / "from-shards")
    assert b.indexes["images"].params["hubness"]["beta"] == a.indexes["images"].params["hubness"]["beta"]
    for text in ("a red circle", "blue square", "green bar"):
        query = a.query_vectors(text)
        want, got = a.rank(query, 10), b.rank(query, 10)
        assert [h["id"] for h in got["results"]] == [h["id"] for h in want["results"]]
        np.testing.assert_allclose([h["score"] for h in got["results"]],
                                   [h["score"] for h in want["results"]], rtol=1e-4, atol=1e-4)
    assert "texts" in b.indexes and b.search("a red circle", target="texts")["results"]


def test_the_job_refuses_shards_of_another_backbone(run_and_features: dict[str, Path],
                                                    tmp_path: Path) -> None:
    from emit.retrieval.jobs import build_index_from_features_job

    r = run_and_features
    other = tmp_path / "feats"
    other.mkdir()
    table = pq.read_table(r["features"] / "part-00000.parquet")
    pq.write_table(table.replace_schema_metadata({b"emit.backbone_key": b"aaaaaaaaaaaaaaaa"}),
                   other / "part-00000.parquet")
    with pytest.raises(EmitError, match=r"part-00000\.parquet: holds features of another backbone"):
        build_index_from_features_job(r["run"], other, tmp_path / "idx", settings=BuildSettings(kind="exact"))


def test_cli_from_features_and_rebuilding_from_images_drops_the_lists(run_and_features: dict[str, Path],
                                                                      capsys: pytest.CaptureFixture) -> None:
    from emit.cli import main

    r = run_and_features
    out = r["root"] / "cli-idx"
    assert main(["index", "build", str(r["run"]), "--from-features", str(r["features"]), "--kind", "ivfflat",
                 "--nlist", "2", "--workers", "1", "--out", str(out), "-q", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is clean JSON (FAISS prints to stderr)
    assert summary["kind"] == "ivfflat" and (out / LISTS_FILE).is_file()
    assert main(["search", str(out), "a red circle", "--json", "--top", "3", "--threads", "1"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["results"]) == 3 and "row" not in found["results"][0]
    assert main(["index", "build", str(r["run"]), str(r["images"]), "--out", str(out), "--cache-dir",
                 str(r["cache"]), "-q", "--threads", "1"]) == 0
    assert not (out / LISTS_FILE).exists() and not (out / IDS_FILE).exists()
    assert load_index(out).kind == "exact"
    assert main(["index", "build", str(r["run"]), str(r["images"]), "--kind", "ivfpq", "--out", str(out),
                 "-q", "--threads", "1"]) == 2  # ivfpq needs --from-features


# ---- several `emit serve` processes over one memory-mapped index, on loopback -----------------


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


def test_serve_with_two_workers_over_one_memory_mapped_index(run_and_features: dict[str, Path],
                                                             tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="emit serve needs the serve extra")
    httpx = pytest.importorskip("httpx")
    import signal
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    from emit.retrieval.jobs import build_index_from_features_job
    from emit.retrieval.search import IndexSearcher

    r = run_and_features
    index = tmp_path / "idx"
    build_index_from_features_job(r["run"], r["features"], index,
                                  settings=BuildSettings(kind="ivfflat", nlist=2, nprobe=2))
    queries = ["a red circle", "blue square", "green bar", "yellow triangle"]
    searcher = IndexSearcher.open(index)
    expected = {q: [h["id"] for h in searcher.search(q, top=5)["results"]] for q in queries}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "emit.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "2", "--threads", "1", "--cache-dir", str(r["cache"]),
           "--export-dir", str(tmp_path / "exports")]
    with open(log, "wb") as fh:
        server = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # both workers loaded, not just the first
            assert server.poll() is None, log.read_text()[-3000:]
            if log.read_text().count('"search index loaded"') >= 2:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"two workers did not start in time:\n{log.read_text()[-3000:]}")
        assert httpx.get(url + "/health", timeout=30).status_code == 200

        def search(query: str) -> list[str]:
            response = httpx.post(url + "/search/text", json={"query": query, "top_k": 5}, timeout=60)
            assert response.status_code == 200, response.text
            return [hit["id"] for hit in response.json()["results"]]

        with ThreadPoolExecutor(4) as pool:  # 16 bounded requests, spread over the two processes
            got = list(pool.map(search, queries * 4))
        assert got == [expected[q] for q in queries * 4]
        hit = httpx.post(url + "/search/text", json={"query": "a red circle", "top_k": 1}, timeout=60).json()
        assert hit["results"][0]["thumbnail_url"].startswith("/thumbnails/")  # rows found without a dict
        if Path(f"/proc/{server.pid}/task/{server.pid}/children").is_file():
            # Linux: two worker processes (beside multiprocessing's helper), each mapping the
            # same lists and ids files
            mapped = [Path(f"/proc/{w}/maps").read_text() for w in _children(server.pid)]
            with_lists = [m for m in mapped if str(index / LISTS_FILE) in m and str(index / IDS_FILE) in m]
            assert len(with_lists) == 2
            lists_lines = [line for m in with_lists for line in m.splitlines() if line.endswith(LISTS_FILE)]
            assert lists_lines and all(line.split()[1].startswith("r-") for line in lists_lines)  # read-only
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
    assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]


def test_serve_settings_take_workers_and_hand_them_to_worker_processes(tmp_path: Path) -> None:
    from emit.serve.settings import ServeSettings

    env = {"EMIT_WORKERS": "3", "EMIT_API_TOKEN": "a-token-of-24-characters"}
    settings = ServeSettings.from_env(env, index=str(tmp_path / "idx"), export_dir=str(tmp_path / "out"),
                                      max_top_k="7")
    assert settings.workers == 3 and settings.limits.max_top_k == 7
    assert ServeSettings.from_json(settings.to_json()) == settings  # what each worker process reads
    with pytest.raises(EmitError, match="serves search only"):
        ServeSettings.from_env({}, index=str(tmp_path), pairing_model=str(tmp_path), workers="2")
    with pytest.raises(EmitError, match=r"EMIT_WORKERS.*whole number"):
        ServeSettings.from_env({"EMIT_WORKERS": "two"}, index=str(tmp_path))
    with pytest.raises(EmitError, match="workers must be at least 1"):
        ServeSettings.from_env({}, index=str(tmp_path), workers="0")


def test_too_few_rows_for_product_quantisation_is_a_clear_error(tmp_path: Path) -> None:
    """PQ trains 256 codes a sub-quantiser: 40 rows used to end in FAISS's RuntimeError."""
    write_shards(tmp_path / "feats", structured(40, 16, seed=3), 20)
    with pytest.raises(EmitError, match=r"needs at least 256 vectors.*--kind ivfflat"):
        build(tmp_path / "feats", tmp_path / "idx", BuildSettings(kind="ivfpq", nlist=4, workers=1))
