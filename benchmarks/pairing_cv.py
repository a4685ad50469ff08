"""How much does the pairing score depend on which products are held out? (not part of the tests)

Superseded by benchmarks/pairing_defaults.py, which cross-validates every row on both pairing
sets the same way; results/pairing_cv.{json,md} are from when the default was colour-hist.

Five-fold cross-validation of the default configuration on ../shared/data/fashion-pairing: a
product's fold is the same hash that `emit.split` uses (seed 0), cut into fifths, so fold 0 is
exactly the validation split of benchmarks/pairing_fashion.py. Each fold trains on the other
four and is scored with exact assignment and argmin. Nothing is chosen from these numbers; they
show the spread between splits of this size.

    python benchmarks/pairing_cv.py --cache-dir /tmp/emit-bench-cache   # -> results/pairing_cv.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FOLDS = 5


def fold_of(product_id: str, folds: int = FOLDS, seed: int = 0) -> int:
    """The fifth of emit.split's hash range the product falls in (fold 0 = validation at 0.2)."""
    from emit.split import hash_fraction

    return min(int(hash_fraction(product_id, seed) * folds), folds - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/fashion-pairing/train")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/emit/features")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pairing_cv")
    args = ap.parse_args()

    import torch

    from emit.config import PairingConfig, to_dict
    from emit.data.products import read_products
    from emit.files import atomic_write_json, atomic_write_text
    from emit.metrics import pairing_scores
    from emit.pairing.pipeline import extract_product_features, predict_pairing, train_pairing
    from emit.problems import ProblemLog
    from emit.split import in_validation
    from emit.vision.backbones import create_backbone

    torch.set_num_threads(2)
    config = PairingConfig()
    products, _ = read_products(args.data)
    assert all((fold_of(p.product_id) == 0) == in_validation(p.product_id, 0.2, 0) for p in products)
    backbone = create_backbone(config.backbone, weights=config.weights)

    def features(chosen: list[int]):  # from emit's feature cache after the first fold
        return extract_product_features([products[i] for i in chosen], backbone, cache_dir=args.cache_dir,
                                        hflip_tta=config.hflip_tta, problems=ProblemLog(echo=False),
                                        progress=False)

    rows = []
    for k in range(FOLDS):
        start = time.perf_counter()
        test = [i for i, p in enumerate(products) if fold_of(p.product_id) == k]
        train = [i for i, p in enumerate(products) if fold_of(p.product_id) != k]
        model = train_pairing([products[i] for i in train], config, backbone=backbone,
                              features=features(train), progress=False)
        truth = {products[i].product_id: products[i].tags for i in test}
        row = {"fold": k, "products": len(test), "images": sum(len(products[i].images) for i in test)}
        test_features = features(test)
        for mode in ("exact", "argmin"):
            decisions = predict_pairing(model, test_features, assign_mode=mode, baseline=False)
            s = pairing_scores({d.product_id: d.tags for d in decisions}, truth)
            row[mode] = {"acc": round(s["accuracy"], 4), "em": round(s["exact_match"], 4)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(row, flush=True)
        rows.append(row)
    summary = {mode: {m: {"mean": round(statistics.mean(r[mode][m] for r in rows), 4),
                          "min": min(r[mode][m] for r in rows), "max": max(r[mode][m] for r in rows)}
                      for m in ("acc", "em")} for mode in ("exact", "argmin")}
    atomic_write_json(args.out.with_suffix(".json"), {"config": to_dict(config), "folds": rows,
                                                      "summary": summary})
    lines = ["| fold | products | images | exact Acc | exact EM | argmin Acc | argmin EM |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['fold']} | {r['products']} | {r['images']} | {r['exact']['acc']:.3f} | "
              f"{r['exact']['em']:.3f} | {r['argmin']['acc']:.3f} | {r['argmin']['em']:.3f} |" for r in rows]
    means = [f"{summary[mode][m]['mean']:.3f}" for mode in ("exact", "argmin") for m in ("acc", "em")]
    lines.append("| mean | | | " + " | ".join(means) + " |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
