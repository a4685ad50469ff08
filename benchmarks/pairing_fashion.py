"""Pairing quality, time and memory on ../shared/data/fashion-pairing (not part of the tests).

The 855 products are split by `emit.split` (hash of product id, seed 0): 20 % validation,
80 % training. Each row trains on the training products only and is scored on validation
products, with argmin and exact assignment. Every row runs in its own process so that wall
time and peak memory (ru_maxrss) are its own. Features are cached per backbone in
--cache-dir; the first row that needs a backbone pays for extraction, so run it twice or
read the `feature_seconds` column.

    python benchmarks/pairing_fashion.py                      # all rows -> results/pairing_fashion.{json,md}
    python benchmarks/pairing_fashion.py --rows frozen-single  # one row
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS: dict[str, dict] = {
    "frozen-single": {"bag_size": 1},
    "frozen-bagged": {},
    "frozen-bagged-vote": {"bag_combine": "vote"},
    "paper-head-single": {"bag_size": 1, "listwise_weight": 0.0, "product_context": False},
    "lite0-single": {"backbone": "efficientnet-lite0", "hflip_tta": True, "bag_size": 1},
    "lite0+colour-single": {"backbone": "efficientnet-lite0+colour-hist", "hflip_tta": True,
                            "bag_size": 1},
    "lite0+colour-bagged": {"backbone": "efficientnet-lite0+colour-hist", "hflip_tta": True},
    # 2 epochs: one epoch of the whole network takes ~7.5 min on this 2-core machine
    "finetuned-single": {"backbone": "efficientnet-lite0+colour-hist", "bag_size": 1,
                         "tune_full_model": True, "finetune_epochs": 2},
    "finetuned-bagged": {"backbone": "efficientnet-lite0+colour-hist", "tune_full_model": True,
                         "finetune_epochs": 2},
    # the library's default length, 6 epochs: does longer tuning help?
    "finetuned-6ep-single": {"backbone": "efficientnet-lite0+colour-hist", "bag_size": 1,
                             "tune_full_model": True, "finetune_epochs": 6},
}
HERE = Path(__file__).resolve().parent


def run_row(name: str, data: Path, cache: Path, work: Path, val_fraction: float) -> dict:
    import torch

    from emit.config import PairingConfig
    from emit.data.products import read_products
    from emit.metrics import pairing_scores
    from emit.pairing.model import PairingModel
    from emit.pairing.pipeline import extract_product_features, predict_pairing, train_pairing
    from emit.problems import ProblemLog
    from emit.split import split_ids
    from emit.vision.backbones import create_backbone

    torch.set_num_threads(2)
    config = PairingConfig(**ROWS[name])
    products, _ = read_products(data)
    train_ids, val_ids = split_ids([p.product_id for p in products], val_fraction, seed=0)
    by_id = {p.product_id: p for p in products}
    train, val = [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]
    problems = ProblemLog(echo=False)

    t0 = time.perf_counter()
    backbone = create_backbone(config.backbone, weights=config.weights)
    if config.tune_full_model:
        from emit.pairing.finetune import finetune_backbone

        # one tuned backbone per backbone and length: a bagged row reuses its single row's
        suffix = "" if config.finetune_epochs == 2 else f"-{config.finetune_epochs}ep"
        backbone = finetune_backbone(train, backbone, config,
                                     work / f"tuned-{config.backbone}{suffix}",
                                     problems=problems,
                                     progress=False)
    t1 = time.perf_counter()
    f_train = extract_product_features(train, backbone, cache_dir=cache, hflip_tta=config.hflip_tta,
                                       problems=problems, progress=False)
    f_val = extract_product_features(val, backbone, cache_dir=cache, hflip_tta=config.hflip_tta,
                                     problems=problems, progress=False)
    t2 = time.perf_counter()
    model: PairingModel = train_pairing(train, config, backbone=backbone, features=f_train,
                                        progress=False)
    t3 = time.perf_counter()
    truth = {p.product_id: p.tags for p in val}
    result: dict = {"row": name, "config": ROWS[name], "train_products": len(train),
                    "val_products": len(val), "val_images": sum(len(p.images) for p in val)}
    for mode in ("argmin", "exact"):
        decisions = predict_pairing(model, f_val, assign_mode=mode)
        s = pairing_scores({d.product_id: d.tags for d in decisions}, truth)
        b = pairing_scores({d.product_id: d.baseline_tags for d in decisions}, truth)
        result[mode] = {"acc": round(s["accuracy"], 4), "em": round(s["exact_match"], 4)}
        result[f"baseline_{mode}"] = {"acc": round(b["accuracy"], 4), "em": round(b["exact_match"], 4)}
    t4 = time.perf_counter()
    result.update(finetune_seconds=round(t1 - t0, 1), feature_seconds=round(t2 - t1, 1),
                  head_seconds=round(t3 - t2, 1), predict_seconds=round(t4 - t3, 2),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  problems=len(problems))
    return result


def table(results: list[dict]) -> str:
    head = ("| row | argmin Acc | argmin EM | exact Acc | exact EM | colour baseline exact Acc / EM "
            "| fine-tune s | features s | heads s | predict s | peak MB |\n|" + "---|" * 11)
    lines = [head]
    for r in results:
        lines.append(
            f"| {r['row']} | {r['argmin']['acc']:.3f} | {r['argmin']['em']:.3f} | "
            f"{r['exact']['acc']:.3f} | {r['exact']['em']:.3f} | "
            f"{r['baseline_exact']['acc']:.3f} / {r['baseline_exact']['em']:.3f} | "
            f"{r['finetune_seconds']} | {r['feature_seconds']} | {r['head_seconds']} | "
            f"{r['predict_seconds']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/fashion-pairing/train")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/emit/features")
    ap.add_argument("--work", type=Path, default=Path("/tmp/emit-bench-pairing"))
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pairing_fashion")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_row(args.one, args.data, args.cache_dir, args.work, args.val_fraction)))
        return
    for row in args.rows:
        cmd = [sys.executable, __file__, "--one", row, "--data", str(args.data), "--cache-dir",
               str(args.cache_dir), "--work", str(args.work), "--val-fraction", str(args.val_fraction)]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{row} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)
        save(result, args.out)  # after every row, so an interrupted run keeps what it measured


def save(result: dict, out: Path) -> None:
    from emit.files import atomic_write_json, atomic_write_text

    previous = []
    if out.with_suffix(".json").is_file():
        previous = [r for r in json.loads(out.with_suffix(".json").read_text())
                    if r["row"] != result["row"] and r["row"] in ROWS]
    merged = sorted([*previous, result], key=lambda r: list(ROWS).index(r["row"]))
    atomic_write_json(out.with_suffix(".json"), merged)
    atomic_write_text(out.with_suffix(".md"), table(merged) + "\n")

if __name__ == "__main__":
    main()
