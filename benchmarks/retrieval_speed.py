"""Search latency: one text query against 10,000 images, through emit's own search path.

Images: 10,000 real photos (all 6,646 of ../shared/data/fashion-retrieval, then Flickr8k
images up to 10,000), their features (--backbone, default emit's: Lite0 + Lite2) from emit's
cache. Model: `emit retrieval train`'s default configuration (or --encoder), trained for
--epochs on the fashion titles and queries (latency does not depend on how well it is trained).
The index is built and saved as `emit index build` does, with its default hubness correction
folded in (one extra coordinate per image), opened once with `IndexSearcher` (as `emit serve`
does), and each timed search is
`IndexSearcher.search(text)`: tokenise, run the text encoder, search FAISS, format the hits.

For each index kind (exact, ivf, hnsw) it reports the median and p95 latency over the queries
(distinct fashion queries, in file order, after --warmup untimed ones) and, for the approximate
kinds, recall@10 against exact search.

    python benchmarks/retrieval_speed.py          # emit's defaults -> results/retrieval_speed_default.json
    python benchmarks/retrieval_speed.py --encoder lstm --backbone efficientnet-lite0
                                                  # the earlier default -> results/retrieval_speed.json
    python benchmarks/retrieval_speed.py --encoder minilm+e5 --backbone efficientnet-lite0
                                                  # -> results/retrieval_speed_minilm+e5.json

With a sentence-model encoder each timed query also runs the frozen sentence model(s): the
searcher is opened from the saved model, so no query's embedding is cached from training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared/data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/emit-bench-cache/features"))
    ap.add_argument("--encoder", default=None,
                    help="text encoder of the timed model (default: emit's, 'auto': minilm for these texts)")
    ap.add_argument("--backbone", default=None, help="image backbone (default: emit's retrieval default)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/retrieval_speed_default.json (emit's defaults), "
                         "retrieval_speed.json (--encoder lstm, the earlier default) or "
                         "retrieval_speed_<encoder>.json")
    args = ap.parse_args()
    from emit.retrieval.config import RetrievalConfig

    defaults = RetrievalConfig()
    backbone_name = args.backbone or defaults.backbone
    if args.out is None:
        name = {None: "_default", "lstm": ""}.get(args.encoder, f"_{args.encoder}")
        # a backbone other than the one each name was measured with gets its own file: Lite0 for
        # the named encoders (results from before issue 14), emit's default for the default
        usual = "efficientnet-lite0" if args.encoder is not None else defaults.backbone
        if backbone_name != usual:
            name += "_" + backbone_name.replace("+", "-")
        args.out = HERE / "results" / f"retrieval_speed{name}.json"

    import faiss
    import torch

    from emit.config import to_dict
    from emit.data.captions import image_indices, read_captions, read_flickr8k
    from emit.files import atomic_write_json
    from emit.retrieval.hubness import DEFAULT_BETA, build_bank, index_correction
    from emit.retrieval.index import build_index, recall_against_exact
    from emit.retrieval.pairs import Pairs
    from emit.retrieval.search import IndexSearcher
    from emit.retrieval.train import train_retrieval
    from emit.vision.backbones import create_backbone
    from emit.vision.features import extract_features

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    titles, _ = read_captions(SHARED / "fashion-retrieval/titles.jsonl", "jsonl")
    queries, _ = read_captions(SHARED / "fashion-retrieval/queries.jsonl", "clicks")
    flickr, _ = read_flickr8k(SHARED / "flickr8k/Flickr8k.token.txt")
    fashion_paths, _ = image_indices(titles + queries)
    flickr_paths, _ = image_indices(flickr)
    paths = (fashion_paths + flickr_paths)[:args.images]
    backbone = create_backbone(backbone_name)
    feats, ok = extract_features(paths, backbone, cache_dir=args.cache_dir, progress=False)
    feats, paths = feats[ok], [p for p, good in zip(paths, ok, strict=True) if good]
    row = {str(p): i for i, p in enumerate(paths)}

    config = RetrievalConfig(epochs=args.epochs, val_fraction=0.0, encoder=args.encoder or defaults.encoder,
                             backbone=backbone.name)
    model = train_retrieval(feats, Pairs.from_captions(titles, row), Pairs.from_captions(queries, row),
                            config, backbone=backbone.identity, progress=False)
    texts = list(dict.fromkeys(c.text for c in queries))[:args.warmup + args.queries]
    vectors = model.image_vectors(feats)
    # emit's default for a cosine model ('both'): images corrected against a bank of training texts
    bank = build_bank(model, feats, np.arange(len(paths)), [c.text for c in titles + queries])
    correction = index_correction(vectors, "images", bank, "both", beta=DEFAULT_BETA, metric=model.metric)
    ids = [str(p) for p in paths]
    results: dict[str, Any] = {"images": len(paths), "queries": len(texts) - args.warmup,
                               "threads": args.threads, "config": to_dict(config), "kinds": {}}
    with tempfile.TemporaryDirectory() as work:
        for kind in ("exact", "ivf", "hnsw"):
            index = build_index(vectors, ids, kind, model.metric, backbone=backbone.identity,
                                encoder=model.identity(), **correction)
            folder = Path(work) / kind
            index.save(folder)
            model.save(folder / "model")
            searcher = IndexSearcher.open(folder, folder / "model")
            timings = []
            for i, text in enumerate(texts):
                start = time.perf_counter()
                searcher.search(text, top=10)
                if i >= args.warmup:
                    timings.append(1000 * (time.perf_counter() - start))
            entry = {"median_ms": round(statistics.median(timings), 2),
                     "p95_ms": round(float(np.percentile(timings, 95)), 2), "params": index.params}
            if kind != "exact":
                q = model.text_vectors(texts)
                entry["recall@10_vs_exact"] = round(recall_against_exact(index, q, 10, vectors), 4)
            results["kinds"][kind] = entry
            print(kind, json.dumps(entry), flush=True)
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
