"""Prediction speed for 1,000 products from cached features (not part of the tests).

Builds a folder of 1,000 products from ../shared/data/fashion-pairing/train (the 855 real
products, plus 145 of them again under new ids, all as symlinks: nothing is copied), trains
the default model on the real products, warms the feature cache with one prediction run, then
times `predict_job` (read 1,000 profiles, hash every image, fetch cached features, run the bag
of heads, solve every product's assignment, write final_json.json) --repeats times.

    python benchmarks/pairing_speed.py        # -> results/pairing_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/fashion-pairing/train")
    ap.add_argument("--products", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pairing_speed.json")
    args = ap.parse_args()

    import torch

    from emit.config import PairingConfig
    from emit.files import atomic_write_json
    from emit.pairing.jobs import predict_job, train_job

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="emit-speed-"))
    root = work / "products"
    root.mkdir()
    folders = sorted(p for p in args.data.iterdir() if (p / "profile.json").is_file())
    for k in range(args.products):
        src = folders[k % len(folders)]
        dst = root / (src.name if k < len(folders) else f"{src.name}-copy{k}")
        dst.mkdir()
        for f in src.iterdir():  # image names stay <pid>_<k>.jpg; only the folder is new
            (dst / f.name).symlink_to(f.resolve())
    cache = work / "cache"
    model = work / "model"
    trained = train_job(args.data, model, PairingConfig(), cache_dir=cache, progress=False)
    predict_job(model, root, work / "warm.json", cache_dir=cache, progress=False)  # fills the cache
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = predict_job(model, root, work / "final_json.json", cache_dir=cache, progress=False)
        times.append(time.perf_counter() - start)
    report = {"products": result["products"], "images": result["images"],
              "seconds_each": [round(t, 2) for t in times],
              "median_seconds": round(statistics.median(times), 2),
              "train_seconds_cold_cache": trained["seconds"], "threads": torch.get_num_threads()}
    atomic_write_json(args.out, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
