"""A synthetic IVF-PQ build from feature shards: build time, peak memory, recall@10 against exact.

The script writes N clustered vectors of low intrinsic dimension (as image embeddings are) as
Parquet shards in the schema of ``emit features extract`` into ``--work``, then builds the index
with :func:`emit.retrieval.ondisk.build_from_features` (the code ``emit index build
--from-features`` runs after the model's image side) in a fresh process, so that its peak
memory (``ru_maxrss`` of the process and of its worker processes) is the build's alone. The
vectors stand for the model-space rows (256-d by default, the width of a projected model; the
raw Lite0 features are 1280-d). Recall@10 is measured against exact inner-product search over
all N rows (streamed shard by shard) for a sample of queries from the same distribution::

    nice python benchmarks/index_ondisk.py --work /tmp/ondisk-bench            # 1M x 256
    nice python benchmarks/index_ondisk.py --work /tmp/small --n 100000 --nlist 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KEY = "benchmark-000000"


def vectors(n: int, dim: int, seed: int, latent: int, clusters: int) -> np.ndarray:
    """Unit vectors: ``latent``-d Gaussian clusters lifted into ``dim`` dimensions, plus noise."""
    rng = np.random.default_rng(seed)
    lift = np.random.default_rng(1).standard_normal((latent, dim)).astype(np.float32)
    centres = np.random.default_rng(2).standard_normal((clusters, latent)).astype(np.float32) * 2
    z = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, latent), dtype=np.float32)
    x = z @ lift + 0.1 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def generate(args: argparse.Namespace) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = Path(args.work) / "features"
    done = feats / "_generated.json"
    spec = {"n": args.n, "dim": args.dim, "per_shard": args.per_shard, "seed": args.seed}
    if done.is_file() and json.loads(done.read_text()) == spec:
        return feats
    feats.mkdir(parents=True, exist_ok=True)
    for old in feats.glob("*.parquet"):
        old.unlink()
    start = time.perf_counter()
    for s, lo in enumerate(range(0, args.n, args.per_shard)):
        hi = min(lo + args.per_shard, args.n)
        x = vectors(hi - lo, args.dim, args.seed + 10 + s, args.latent, args.clusters)
        values = pa.array(x.reshape(-1), type=pa.float32())
        lists = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, args.dim, dtype=np.int32)), values)
        table = pa.table({"path": [f"/images/{i:08d}.jpg" for i in range(lo, hi)],
                          "sha256": pa.nulls(hi - lo, pa.string()), "features": lists,
                          "error": pa.nulls(hi - lo, pa.string())})
        pq.write_table(table.replace_schema_metadata({b"emit.backbone_key": KEY.encode()}),
                       feats / f"part-{s:05d}.parquet")
    done.write_text(json.dumps(spec))
    print(f"generated {args.n} x {args.dim} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return feats


def build(args: argparse.Namespace) -> dict:
    """Run in a fresh process: the build alone, its time and peak memory."""
    import faiss

    from emit.commit import folder_commit
    from emit.problems import ProblemLog
    from emit.retrieval.ondisk import BuildSettings, ImageSide, build_from_features

    faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
    out = Path(args.work) / "index"
    settings = BuildSettings(kind="ivfpq", nlist=args.nlist, pq_m=args.pq_m, train_size=args.train_size,
                             workers=args.workers, block_rows=args.block_rows)
    start = time.perf_counter()
    with folder_commit(out, label="index"):
        manifest = build_from_features(Path(args.work) / "features", out, ImageSide(None, metric="ip"),
                                       settings, expect_key=KEY, backbone={"name": "benchmark"}, encoder=None,
                                       hubness=None, problems=ProblemLog())
    seconds = time.perf_counter() - start
    # ru_maxrss (KiB on Linux) of a spawned process includes the pages of its parent before exec,
    # so the build's own high-water marks (VmHWM) are reported beside it
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "phases": manifest["build"]["seconds"],
            "factory": manifest["params"]["factory"], "peak_rss_mib": manifest["build"]["peak_rss_mib"],
            "ru_maxrss_mib": {"self": round(own), "children": round(children)},
            "bytes": {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}}


def exact_top(feats: Path, queries: np.ndarray, k: int) -> np.ndarray:
    import pyarrow.parquet as pq

    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for shard in sorted(feats.glob("*.parquet")):
        col = pq.read_table(shard, columns=["features"]).column("features").combine_chunks()
        x = col.flatten().to_numpy().reshape(len(col), -1)
        s = queries @ x.T
        all_s = np.hstack([best_s, s])
        all_i = np.hstack([best_i, np.broadcast_to(np.arange(offset, offset + len(x)), s.shape)])
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
        offset += len(x)
    return best_i


def evaluate(args: argparse.Namespace) -> dict:
    from emit.retrieval.index import load_index

    queries = vectors(args.queries, args.dim, args.seed + 1, args.latent, args.clusters)
    start = time.perf_counter()
    truth = exact_top(Path(args.work) / "features", queries, 10)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    index = load_index(Path(args.work) / "index")
    out = {"open_seconds": round(time.perf_counter() - start, 2), "exact_seconds": round(exact_s, 1),
           "queries": args.queries, "recall_at_10": {}}
    for nprobe in args.nprobe:
        index.tune(nprobe=nprobe)
        start = time.perf_counter()
        _, rows = index.search_positions(queries, 10)
        ms = (time.perf_counter() - start) * 1000 / len(queries)
        recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), rows.tolist(),
                                                                            strict=True)]))
        out["recall_at_10"][f"nprobe={nprobe}"] = {"recall": round(recall, 3), "ms_per_query": round(ms, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the shards and the index")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--per-shard", type=int, default=10_000)
    p.add_argument("--latent", type=int, default=32, help="intrinsic dimension of the data")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=None, help="default: one byte per 2 dimensions, at most 128")
    p.add_argument("--train-size", type=int, default=65_536)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-rows", type=int, default=250_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", choices=["all", "build"], default="all", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "build":
        print(json.dumps(build(args)))
        return
    start = time.perf_counter()
    generate(args)
    generated = time.perf_counter() - start
    argv = [sys.executable, __file__, *sys.argv[1:], "--phase", "build"]
    built = json.loads(subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout)
    result = {"n": args.n, "dim": args.dim, "shards": -(-args.n // args.per_shard), "workers": args.workers,
              "cores": os.cpu_count(), "generate_seconds": round(generated, 1), "build": built,
              "search": evaluate(args)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
