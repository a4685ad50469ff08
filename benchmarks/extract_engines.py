"""Ray Data against the local engine for `emit features extract` (not part of the tests).

The same 1,000 images (the first of ../shared/data/flickr8k/images, sorted), EfficientNet-Lite0,
no feature cache, on the CPU:

* local: one process, 2 torch threads, 2 decoding threads;
* ray: a one-machine cluster of 2 CPUs, 2 actors of 1 CPU each (1 torch thread, 1 decoding
  thread), each loading the backbone once.

images/s is rows / seconds of the extraction itself: for ray that includes starting the actor
pool and loading the backbone in each actor (ray.init is timed separately), for local the
backbone is loaded before the clock starts. The issue's target is ray >= 0.9 x local.

    python benchmarks/extract_engines.py            # -> results/extract_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=HERE.parent.parent / "shared/data/flickr8k/images")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each engine, alternating")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "extract_engines.json")
    args = ap.parse_args()

    import ray
    import torch

    from emit.files import atomic_write_json
    from emit.scale.jobs import ExtractJob, extract_to_shards

    names = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".jpg")[: args.count]
    if len(names) < args.count:
        raise SystemExit(f"{args.images}: only {len(names)} images, {args.count} asked")
    work = Path(tempfile.mkdtemp(prefix="emit-engines-"))
    manifest = work / "images.txt"
    manifest.write_text("".join(f"{p.resolve()}\n" for p in names))
    torch.set_num_threads(2)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start

    runs: dict[str, list[dict[str, object]]] = {"local": [], "ray": []}
    try:
        for k in range(args.repeats):
            for engine in ("local", "ray"):
                out = work / f"{engine}-{k}"
                summary = extract_to_shards(ExtractJob(
                    inputs=[manifest], out=out, engine=engine, backbone=args.backbone, device="cpu",
                    batch_size=args.batch_size, workers=2, cpus_per_worker=1, threads=2, progress=False))
                runs[engine].append({key: summary[key] for key in
                                     ("rows", "errors", "seconds", "images_per_s", "total_seconds")})
                print(engine, json.dumps(runs[engine][-1]), flush=True)
                shutil.rmtree(out)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    best = {engine: max(float(r["images_per_s"]) for r in rs) for engine, rs in runs.items()}  # type: ignore[arg-type]
    report = {
        "images": len(names), "backbone": args.backbone, "batch_size": args.batch_size,
        "local": "1 process, 2 torch threads, 2 decoding threads",
        "ray": "2 actors x 1 CPU (1 torch thread, 1 decoding thread), ray.init(num_cpus=2)",
        "ray_init_seconds": round(ray_init_s, 2), "runs": runs,
        "best_images_per_s": best, "ray_over_local": round(best["ray"] / best["local"], 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
