"""Interactive text-query latency through emit's searcher, and what the query precision costs in R@1.

Given a trained retrieval run (``emit retrieval train``) and either its index folder (``--index``)
or ``--images N`` (a synthetic exact index of N random unit vectors of the run's dimension,
default 10,000, with the run's hubness correction folded in as ``emit index build`` does), it
times, for each MiniLM query precision (float, bf16, int8; only "float" for an encoder without
MiniLM) and each ``--threads`` setting, over the distinct texts of ``--queries`` (after
``--warmup`` untimed ones; the precisions interleaved query by query, so they share the load):

* ``encode``: ``IndexSearcher.query_vectors(text)`` with the query cache off (tokenise, the
  sentence model(s), the MLP);
* ``search``: ``IndexSearcher.search(text, top=10)`` with the cache off: what a first-time
  query costs, encoding included (the issue's target: a median of 15 ms or less on 10,000 images);
* ``cached_search``: the same search once the query is in the searcher's cache (a repeat);
* ``search_only``: ``IndexSearcher.rank`` of an already encoded query (FAISS and the hits).

Each is reported as the median and p90 in ms. With ``--captions`` (captions of images the run
did not train on: a held-out split, or the run's own files with ``--held-out``) it also reports
text -> image R@1/5/10 with each precision's query vectors on the same split, plain and with
the run's hubness correction, each caption encoded on its own as a search query is, and how
often a caption's top image is the float model's. Writes benchmarks/results/query_speed.json.

    # the issue's measurement: a MiniLM run trained on Flickr8k (10 % of its images held out),
    # 10,000 synthetic images, fashion queries, R@1 on the run's held-out captions
    emit retrieval train --titles ../shared/data/flickr8k/Flickr8k.token.txt --encoder minilm \\
        --out /tmp/qs/run --cache-dir /tmp/emit-bench-cache/features
    python benchmarks/query_speed.py /tmp/qs/run --images 10000 --threads 1,2 \\
        --queries ../shared/data/fashion-retrieval/queries.jsonl \\
        --captions ../shared/data/flickr8k/Flickr8k.token.txt --held-out \\
        --cache-dir /tmp/emit-bench-cache/features
    # a real index instead of the synthetic one
    python benchmarks/query_speed.py /tmp/qs/run --index /tmp/qs/idx --queries queries.txt

``--queries``: one query a line, or JSON lines with a "query" or "text" field (a click log,
a titles file). ``--captions`` is read by emit's caption reader (any format it knows, e.g.
Flickr8k.token.txt). e5 is loaded once with the threads of the first ``--threads`` value (its
engine reads them at load time), so with ``minilm+e5`` give one value per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PRECISIONS = ("float", "bf16", "int8")


def read_queries(path: Path) -> list[str]:
    """Distinct query texts, in file order: one a line, or JSON lines with "query" or "text"."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            row = json.loads(line)
            line = str(row.get("query") or row.get("text") or "").strip()
        if line:
            texts.append(line)
    return list(dict.fromkeys(texts))


def ms(timings: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(timings), 2),
            "p90_ms": round(float(np.percentile(timings, 90)), 2), "n": len(timings)}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def synthetic_index(run: Path, n: int, folder: Path, seed: int) -> dict[str, Any]:
    """An exact index of ``n`` random unit vectors in the run's space, saved in ``folder``, with
    the run's default hubness correction folded in (as ``emit index build`` would)."""
    from emit.retrieval.hubness import DEFAULT_BETA, DEFAULT_DIRECTION, HubnessBank, index_correction, resolve
    from emit.retrieval.index import build_index
    from emit.retrieval.model import RetrievalModel

    model = RetrievalModel.load(run)
    dim = int(model.encoder.out_dim)
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    direction = resolve(DEFAULT_DIRECTION, model.metric)
    bank = HubnessBank.load(run, model) if direction != "none" else None
    correction = index_correction(vectors, "images", bank, direction, beta=DEFAULT_BETA, metric=model.metric)
    index = build_index(vectors, [f"synthetic/{i:06d}.jpg" for i in range(n)], "exact", model.metric,
                        backbone=model.backbone, encoder=model.identity(), **correction)
    index.save(folder)
    return {"images": n, "dim": dim, "metric": model.metric, "hubness": direction, "seed": seed}


def time_queries(searchers: dict[str, Any], texts: list[str], warmup: int) -> dict[str, Any]:
    """encode / search / cached_search per precision, and search_only, interleaved by query."""
    timings: dict[str, dict[str, list[float]]] = {p: {"encode": [], "search": [], "cached_search": []}
                                                  for p in searchers}
    only: list[float] = []
    for i, text in enumerate(texts):
        for precision, (cold, warm) in searchers.items():
            t_encode = timed(lambda cold=cold, text=text: cold.query_vectors(text))
            t_search = timed(lambda cold=cold, text=text: cold.search(text, top=10))
            warm.search(text, top=10)  # into the cache
            t_cached = timed(lambda warm=warm, text=text: warm.search(text, top=10))
            if i >= warmup:
                for key, value in (("encode", t_encode), ("search", t_search), ("cached_search", t_cached)):
                    timings[precision][key].append(value)
        cold = next(iter(searchers.values()))[0]
        vec = cold.query_vectors(text)
        t_only = timed(lambda cold=cold, vec=vec: cold.rank(vec, 10))
        if i >= warmup:
            only.append(t_only)
    out: dict[str, Any] = {p: {k: ms(v) for k, v in t.items()} for p, t in timings.items()}
    out["search_only"] = ms(only)
    return out


def recall_by_precision(run: Path, captions: Path, precisions: list[str], *, held_out: bool,
                        image_root: Path | None, cache_dir: Path | None, max_captions: int | None,
                        open_searcher: Callable[[str], Any]) -> dict[str, Any]:
    """Text -> image R@1/5/10 on ``captions`` with each precision's query vectors (each caption
    encoded alone, through the searcher with its cache off), plain and hubness-corrected."""
    from emit.data.captions import image_indices, read_captions
    from emit.problems import ProblemLog
    from emit.retrieval.evaluate import evaluate_embeddings
    from emit.retrieval.hubness import DEFAULT_BETA, DEFAULT_DIRECTION, HubnessBank, biases, resolve
    from emit.retrieval.jobs import held_out_captions
    from emit.retrieval.model import RetrievalModel, model_backbone
    from emit.vision.features import default_cache_dir, extract_features

    model = RetrievalModel.load(run)
    problems = ProblemLog(echo=False)
    caps, _ = read_captions(captions, "auto", image_root, problems=problems)
    if held_out:
        caps = held_out_captions(model, caps, run)
    caps = caps[:max_captions] if max_captions else caps
    paths, of = image_indices(caps)
    feats, ok = extract_features(paths, model_backbone(model), problems=problems, progress=False,
                                 cache_dir=cache_dir if cache_dir else default_cache_dir())
    keep = np.asarray(ok, dtype=bool)[of]
    rows = (np.cumsum(ok) - 1)[of[keep]]
    texts = [c.text for c, k in zip(caps, keep, strict=True) if k]
    images = model.image_vectors(feats[np.asarray(ok, dtype=bool)])
    direction = resolve(DEFAULT_DIRECTION, model.metric)
    bank = HubnessBank.load(run, model) if direction != "none" else None
    distinct = list(dict.fromkeys(texts))
    out: dict[str, Any] = {"captions": str(captions), "held_out": held_out, "queries": len(texts),
                           "images": int(images.shape[0]), "hubness": direction}
    tops: dict[str, np.ndarray] = {}
    for precision in precisions:
        searcher = open_searcher(precision)
        start = time.perf_counter()
        by_text = {t: searcher.query_vectors(t)[0] for t in distinct}
        vectors = np.stack([by_text[t] for t in texts])
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {"encode_s": round(seconds, 1)}
        for name, how in (("plain", "none"), ("hubness", direction)):
            _, image_bias = biases(vectors, images, bank, how, beta=DEFAULT_BETA, metric=model.metric)
            report = evaluate_embeddings(vectors, images, rows, metric=model.metric, ks=(1, 5, 10),
                                         texts=texts, image_bias=image_bias)
            entry[name] = {k: round(float(report["text_to_image"][k]), 2) for k in ("R@1", "R@5", "R@10")}
        scores = vectors @ images.T  # -|v - x|^2 = 2 v.x - |x|^2 - |v|^2: the same top image
        if model.metric != "ip":
            scores = 2 * scores - (images ** 2).sum(axis=1)[None]
        tops[precision] = scores.argmax(axis=1)
        if precision != "float" and "float" in tops:
            entry["top1_same_as_float"] = round(float(np.mean(tops[precision] == tops["float"])), 4)
        out[precision] = entry
        print("R@1", precision, json.dumps(entry), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a trained retrieval run folder")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--index", type=Path, default=None, help="an index folder built with the run")
    where.add_argument("--images", type=int, default=10_000, help="synthetic exact index size (default)")
    ap.add_argument("--queries", type=Path, default=None, help="query texts (default: the captions' texts)")
    ap.add_argument("--max-queries", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", default="1,2", help="torch and FAISS threads, comma-separated settings")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--captions", type=Path, default=None, help="held-out captions: R@1 per precision")
    ap.add_argument("--held-out", action="store_true",
                    help="keep the captions of the run's validation images")
    ap.add_argument("--image-root", type=Path, default=None)
    ap.add_argument("--max-captions", type=int, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="image feature cache (emit's default if not given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "query_speed.json")
    a = ap.parse_args(argv)

    import faiss
    import torch

    from emit.config import versions
    from emit.files import atomic_write_json
    from emit.retrieval.encoders.sentence import SentenceTextEncoder, native_bf16
    from emit.retrieval.model import RetrievalModel
    from emit.retrieval.search import IndexSearcher

    if a.queries is None and a.captions is None:
        ap.error("give --queries, or --captions to time their texts")
    model = RetrievalModel.load(a.run)
    has_minilm = isinstance(model.encoder, SentenceTextEncoder) and "minilm" in model.encoder.sentence_models
    precisions = [p for p in a.precisions.split(",") if p] if has_minilm else ["float"]
    threads = [int(t) for t in a.threads.split(",") if t]
    given = sys.argv[1:] if argv is None else argv
    result: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/query_speed.py", *map(str, given)]),
        "run": str(a.run), "encoder": model.encoder.name, "metric": model.metric,
        "cpu": platform.processor() or platform.machine(), "cpu_native_bf16": native_bf16(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()], "versions": versions(),
    }
    with tempfile.TemporaryDirectory(prefix="emit-query-speed-") as work:
        if a.index is not None:
            folder, result["index"] = a.index, str(a.index)
        else:
            folder = Path(work) / "index"
            result["synthetic_index"] = synthetic_index(a.run, a.images, folder, a.seed)

        def open_searcher(precision: str, cache: int = 0) -> IndexSearcher:
            return IndexSearcher.open(folder, a.run, targets=["images"], query_precision=precision,
                                      query_cache_size=cache)

        if a.queries is not None:
            texts = read_queries(a.queries)
        else:
            from emit.data.captions import read_captions

            texts = list(dict.fromkeys(c.text for c in read_captions(a.captions, "auto", a.image_root,
                                                                      check_images=False)[0]))
        texts = texts[:a.warmup + a.max_queries]
        result["queries"] = {"file": str(a.queries or a.captions), "timed": max(0, len(texts) - a.warmup),
                             "warmup": a.warmup}
        result["timings"] = {}
        for n in threads:
            torch.set_num_threads(n)
            faiss.omp_set_num_threads(n)
            searchers = {p: (open_searcher(p), open_searcher(p, cache=4096)) for p in precisions}
            result["timings"][str(n)] = entry = time_queries(searchers, texts, a.warmup)
            print(f"threads {n}:", json.dumps(entry), flush=True)
        if a.captions is not None:
            torch.set_num_threads(threads[0])
            faiss.omp_set_num_threads(threads[0])
            result["recall"] = recall_by_precision(
                a.run, a.captions, precisions, held_out=a.held_out, image_root=a.image_root,
                cache_dir=a.cache_dir, max_captions=a.max_captions, open_searcher=open_searcher)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
