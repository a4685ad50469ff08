"""FAISS search index: exact = brute force, approximate recall, save/load, model checks, edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed")

from emit.problems import EmitError  # noqa: E402
from emit.retrieval.index import (  # noqa: E402
    INDEX_FILE,
    MANIFEST_FILE,
    SearchIndex,
    build_index,
    load_index,
    recall_against_exact,
)

BACKBONE = {"name": "efficientnet-lite0", "weights_sha256": "aaa", "image_size": 224}
ENCODER = {"name": "lstm", "config": {"hidden": 8}, "weights_sha256": "bbb"}




def data(n: int = 300, d: int = 16, q: int = 6, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, [f"img{i}" for i in range(n)], rng.standard_normal((q, d)).astype(np.float32)


def clustered(n_clusters: int = 20, per: int = 50, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32) * 5
    x = np.repeat(centres, per, axis=0) + rng.standard_normal((n_clusters * per, d)) * 0.5
    queries = centres[rng.integers(0, n_clusters, 30)] + rng.standard_normal((30, d)) * 0.5
    x, queries = x.astype(np.float32), queries.astype(np.float32)
    return x, [f"c{i}" for i in range(len(x))], queries


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_equals_numpy_brute_force(metric: str) -> None:
    x, ids, q = data()
    k = 7
    index = build_index(x, ids, metric=metric)
    scores, found = index.search(q, k)
    if metric == "l2":
        full = ((q[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(full, axis=1, kind="stable")[:, :k]
    else:
        full = q.astype(np.float64) @ x.T.astype(np.float64)
        order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    assert found == [[ids[j] for j in row] for row in order]
    np.testing.assert_allclose(scores, np.take_along_axis(full, order, axis=1), rtol=1e-4, atol=1e-4)
    assert index.kind == "exact" and index.dim == 16 and len(index) == 300
    assert recall_against_exact(index, q, k) == 1.0


@pytest.mark.parametrize(("kind", "params"), [("ivf", {}), ("hnsw", {}), ("ivf", {"nlist": 20, "nprobe": 2})])
def test_approximate_recall_is_high_on_clustered_data(kind: str, params: dict,
                                                      record_property: pytest.RecordProperty) -> None:
    x, ids, q = clustered()
    index = build_index(x, ids, kind=kind, **params)
    recall = recall_against_exact(index, q, 10)
    record_property(f"recall@10[{kind}{params}]", recall)
    print(f"{kind} {index.params}: recall@10 vs exact = {recall:.3f}")
    assert recall >= 0.9
    np.testing.assert_array_equal(index.vectors(), x)  # Flat storage keeps the vectors exactly
    assert recall_against_exact(index, q, 10, vectors=x) == recall


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, ids, q = clustered()
    index = build_index(x, ids, kind="ivf", backbone=BACKBONE, encoder=ENCODER, nprobe=3)
    index.save(tmp_path / "idx")
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {INDEX_FILE, MANIFEST_FILE}
    manifest = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert manifest["ids"] == ids and manifest["kind"] == "ivf" and manifest["metric"] == "l2"
    assert manifest["dim"] == 16 and "faiss" in manifest["versions"] and "torch" in manifest["versions"]
    loaded = SearchIndex.load(tmp_path / "idx", expect_backbone=BACKBONE, expect_encoder=ENCODER)
    assert loaded.params == index.params and loaded.params["nprobe"] == 3
    a, b = index.search(q, 5), loaded.search(q, 5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    hnsw = build_index(x, ids, kind="hnsw", metric="ip", ef_search=80)
    hnsw.save(tmp_path / "h")
    again = load_index(tmp_path / "h")
    assert again.metric == "ip" and again.params["ef_search"] == 80
    assert again.search(q, 3)[1] == hnsw.search(q, 3)[1]


class _Encoder:
    def __init__(self, ident: dict) -> None:
        self._ident = ident

    def identity(self) -> dict:
        return self._ident


def test_load_refuses_a_mismatched_model(tmp_path: Path) -> None:
    x, ids, _ = data(n=20)
    build_index(x, ids, backbone=BACKBONE, encoder=ENCODER).save(tmp_path / "idx")
    load_index(tmp_path / "idx", expect_backbone=dict(BACKBONE), expect_encoder=_Encoder(ENCODER))
    message = r"another backbone.*weights_sha256: index 'aaa', model 'zzz'.*Rebuild"
    with pytest.raises(EmitError, match=message):
        load_index(tmp_path / "idx", expect_backbone={**BACKBONE, "weights_sha256": "zzz"})
    with pytest.raises(EmitError, match=r"another encoder.*config\.hidden: index 8, model 16"):
        load_index(tmp_path / "idx", expect_encoder={**ENCODER, "config": {"hidden": 16}})
    build_index(x, ids).save(tmp_path / "bare")
    with pytest.raises(EmitError, match="records no backbone"):
        load_index(tmp_path / "bare", expect_backbone=BACKBONE)
    # a manifest from another save than the index file
    build_index(x * 2, ids).save(tmp_path / "other")
    (tmp_path / "bare" / INDEX_FILE).write_bytes((tmp_path / "other" / INDEX_FILE).read_bytes())
    with pytest.raises(EmitError, match="does not match"):
        load_index(tmp_path / "bare")
    with pytest.raises(EmitError, match="not a search index"):
        load_index(tmp_path / "missing")


def test_k_larger_than_n() -> None:
    x, ids, q = data(n=5)
    for kind in ("exact", "hnsw"):
        scores, found = build_index(x, ids, kind=kind).search(q, 50)
        assert scores.shape == (len(q), 5) and all(sorted(row) == sorted(ids) for row in found)
        assert (np.diff(scores, axis=1) >= 0).all()
    scores, found = build_index(x, ids).search(q[0], 2)  # one query as a vector
    assert scores.shape == (1, 2) and len(found) == 1


def test_errors() -> None:
    x, ids, q = data(n=10)
    with pytest.raises(EmitError, match="no vectors to index"):
        build_index(np.zeros((0, 4), dtype=np.float32), [])
    index = build_index(x, ids)
    index.index.reset()  # an index emptied after building
    with pytest.raises(EmitError, match="index is empty"):
        index.search(q, 3)
    with pytest.raises(EmitError, match="one id per vector"):
        build_index(x, ids[:-1])
    with pytest.raises(EmitError, match="occurs more than once"):
        build_index(x, [*ids[:-1], ids[0]])
    with pytest.raises(EmitError, match="NaN"):
        build_index(np.full((2, 3), np.nan), ["a", "b"])
    with pytest.raises(EmitError, match="unknown index kind"):
        build_index(x, ids, kind="lsh")
    with pytest.raises(EmitError, match="unknown metric"):
        build_index(x, ids, metric="cosine")
    with pytest.raises(EmitError, match="needs at least 64 vectors"):
        build_index(x, ids, kind="ivf", nlist=64)
    with pytest.raises(EmitError, match="does not understand"):
        build_index(x, ids, factory="NoSuchIndex")
    with pytest.raises(EmitError, match="index has 16"):
        build_index(x, ids).search(np.zeros((1, 3)), 2)


def test_faiss_follows_torchs_thread_count_so_threads_limits_search() -> None:
    """FAISS takes every core by default; emit gives it torch's thread count (what --threads
    sets), in a fresh process as the command line would."""
    import subprocess
    import sys

    code = ("import threading, numpy as np, torch; torch.set_num_threads(1)\n"
            "from emit.retrieval.index import build_index, faiss_module\n"
            "faiss = faiss_module(); print(faiss.omp_get_max_threads())\n"
            "index = build_index(np.eye(4, dtype='float32'), list('abcd'), 'exact', 'ip')\n"
            "seen = []\n"
            "def request():  # a server's request thread: OpenMP's count is per thread\n"
            "    index.search(np.eye(4, dtype='float32')[:1], 2); seen.append(faiss.omp_get_max_threads())\n"
            "t = threading.Thread(target=request); t.start(); t.join(); print(seen[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.split() == ["1", "1"]
