"""Choose pairing's default on both development sets at once (not part of the tests).

Every row is cross-validated on ../shared/data/fashion-pairing (options differ by colour) and
../shared/data/fashion-pairing-mixed (by garment and colour). A product's fold is the hash
that `emit.split` uses (seed 0) cut into fifths, as in benchmarks/pairing_cv.py, so fold 0 is
the validation split of the other pairing benchmarks. Each fold trains on the other four with
the library (`train_pairing`, `predict_pairing`) and is scored with the exact assignment:

* Acc (per image) and EM (per product);
* EM of the most confident 70 % of products, and the expected calibration error of the
  product confidences (`emit.metrics`);
* the colour baseline (the paper's single-class colour labels) on the same features.

A default is chosen by the mean over both sets, never by one. Features come from emit's cache;
a composite row joins the parts' cached features, which equals the composite backbone's
output. `--extra SET=FILE` (from benchmarks/pairing_extra_catalogue.py, leaving out that set's
own photos) adds labelled catalogue photos to every fold's training data in the +catalogue
rows, as `emit pair train --extra` does.

    python benchmarks/pairing_extra_catalogue.py --exclude fashion-pairing --out /tmp/x/colour.jsonl
    python benchmarks/pairing_extra_catalogue.py --exclude fashion-pairing-mixed --out /tmp/x/mixed.jsonl
    python benchmarks/pairing_defaults.py --cache-dir /tmp/emit-bench-cache \
        --extra colour=/tmp/x/colour.jsonl --extra mixed=/tmp/x/mixed.jsonl
    # -> results/pairing_defaults.jsonl (one line per row, set and fold) and results/pairing_defaults.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SETS = {"colour": "fashion-pairing/train", "mixed": "fashion-pairing-mixed/train"}
FOLDS = 5

# name -> (backbone parts, mirror TTA, PairingConfig overrides, uses --extra)
L0C = ["efficientnet-lite0", "colour-hist"]
# calibration_folds 0: confidence fitted on each member's own hold-out (how these rows were first
# run); the "crossfit" row fits it on out-of-fold bags, the library's default since.
M0 = {"calibration_folds": 0}
ROWS: dict[str, tuple[list[str], bool, dict, bool]] = {
    "colour-hist": (["colour-hist"], False, {**M0}, False),
    "lite0+colour-hist": (L0C, False, {"cnn_components": 0, **M0}, False),
    "lite0-pca32+colour-hist": (L0C, False, {"cnn_components": 32, **M0}, False),
    "lite0-pca64+colour-hist": (L0C, False, {"cnn_components": 64, **M0}, False),
    "lite0-pca128+colour-hist": (L0C, False, {"cnn_components": 128, **M0}, False),
    "lite0-pca64+colour-hist tta": (L0C, True, {"cnn_components": 64, **M0}, False),
    "colour-hist +catalogue": (["colour-hist"], False, {**M0}, True),
    "lite0+colour-hist +catalogue": (L0C, False, {"cnn_components": 0, **M0}, True),
    "lite0-pca64+colour-hist +catalogue": (L0C, False, {"cnn_components": 64, **M0}, True),
    "lite0-pca64+colour-hist crossfit": (L0C, False, {"cnn_components": 64, "calibration_folds": 3}, False),
    "lite2-pca64+colour-hist": (["efficientnet-lite2", "colour-hist"], False,
                                {"cnn_components": 64, **M0}, False),
}


def fold_of(product_id: str) -> int:
    from emit.split import hash_fraction

    return min(int(hash_fraction(product_id, 0) * FOLDS), FOLDS - 1)


def joined_features(products, parts: list[str], tta: bool, cache_dir: Path):
    """ProductFeatures of the composite, from each part's cache (same rows for every part)."""
    from emit.pairing.pipeline import ProductFeatures, extract_product_features
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    pfs = [extract_product_features(products, create_backbone(p), cache_dir=cache_dir, hflip_tta=tta,
                                    problems=ProblemLog(echo=False), progress=False) for p in parts]
    assert all(pf.rows == pfs[0].rows for pf in pfs)
    return ProductFeatures(list(products), np.concatenate([pf.features for pf in pfs], axis=1),
                           pfs[0].groups, pfs[0].rows)


def subset(pf, keep: list[int]):
    """The ProductFeatures of products ``keep`` (indices into pf.products), rows renumbered."""
    from emit.pairing.pipeline import ProductFeatures

    rows, take = [], []
    for k in keep:
        slot = []
        for r in pf.rows[k]:
            slot.append(None if r is None else len(take))
            if r is not None:
                take.append(r)
        rows.append(slot)
    groups = np.repeat(np.arange(len(keep)), [sum(r is not None for r in pf.rows[k]) for k in keep])
    return ProductFeatures([pf.products[k] for k in keep], pf.features[take], groups, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/emit/features")
    ap.add_argument("--extra", action="append", default=[], metavar="SET=FILE",
                    help="JSON lines for the +catalogue rows of one set (from pairing_extra_catalogue.py "
                         "with --exclude naming that set)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    ap.add_argument("--sets", default="colour,mixed")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pairing_defaults")
    args = ap.parse_args()

    import torch

    from emit.config import PairingConfig, to_dict
    from emit.data.extra_images import read_extra_images
    from emit.data.products import read_products
    from emit.metrics import calibration_error, coverage_scores, exact_matches, pairing_scores
    from emit.pairing.pipeline import predict_pairing, train_pairing
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    torch.set_num_threads(2)
    results = args.out.with_suffix(".jsonl")
    done = set()
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["row"], r["set"], r["fold"]))
    extra_files = dict(item.split("=", 1) for item in args.extra)
    for name in args.rows.split(","):
        parts, tta, overrides, uses_extra = ROWS[name]
        config = replace(PairingConfig(backbone="+".join(parts), hflip_tta=tta), **overrides)
        backbone = create_backbone(config.backbone)
        for set_name in args.sets.split(","):
            products, _ = read_products(args.data / SETS[set_name], problems=ProblemLog(echo=False))
            if uses_extra and set_name not in extra_files:
                raise SystemExit(f"row {name!r} needs --extra {set_name}=FILE")
            more = read_extra_images(extra_files[set_name], ProblemLog(echo=False)) if uses_extra else []
            pf = joined_features(products + more, parts, tta, args.cache_dir)
            for k in map(int, args.folds.split(",")):
                if (name, set_name, k) in done:
                    continue
                start = time.perf_counter()
                test = [i for i, p in enumerate(products) if fold_of(p.product_id) == k]
                train = [i for i, p in enumerate(products) if fold_of(p.product_id) != k]
                train += list(range(len(products), len(products) + len(more)))
                train_pf, test_pf = subset(pf, train), subset(pf, test)
                model = train_pairing([products[i] for i in train if i < len(products)], config,
                                      backbone=backbone, features=train_pf, progress=False, extra=more)
                seconds = time.perf_counter() - start
                decisions = predict_pairing(model, test_pf)
                truth = {products[i].product_id: products[i].tags for i in test}
                pred = {d.product_id: d.tags for d in decisions}
                conf = {d.product_id: d.product_confidence for d in decisions}
                s = pairing_scores(pred, truth)
                b = pairing_scores({d.product_id: d.baseline_tags for d in decisions}, truth)
                cov = {c["coverage"]: c for c in coverage_scores(conf, pred, truth)}
                right = exact_matches(pred, truth)
                cal = calibration_error([conf[p] for p in right], [right[p] for p in right])
                row = {"row": name, "set": set_name, "fold": k, "products": len(test),
                       "acc": round(s["accuracy"], 4), "em": round(s["exact_match"], 4),
                       "em70": round(cov[0.7]["exact_match"], 4), "acc70": round(cov[0.7]["accuracy"], 4),
                       "ece": round(cal["ece"], 4), "baseline_acc": round(b["accuracy"], 4),
                       "baseline_em": round(b["exact_match"], 4),
                       "calibration": model.calibration.to_json() if model.calibration else None,
                       "train_s": round(seconds, 1), "config": to_dict(config),
                       "extra_images": sum(len(p.images) for p in more)}
                print(json.dumps(row, ensure_ascii=False), flush=True)
                with results.open("a") as fh:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_table(results, args.out.with_suffix(".md"))


def write_table(results: Path, out: Path) -> None:
    from emit.files import atomic_write_text

    rows = [json.loads(line) for line in results.read_text().splitlines()]
    names = list(dict.fromkeys(r["row"] for r in rows))
    keys = ("acc", "em", "em70", "ece", "baseline_acc", "baseline_em")
    lines = ["| row | folds | colour Acc | colour EM | colour EM@70% | colour ECE | mixed Acc | mixed EM | "
             "mixed EM@70% | mixed ECE | mean Acc | mean EM | colour baseline Acc / EM | "
             "mixed baseline Acc / EM |", "|" + "---|" * 14]
    for name in names:
        mean = {}
        folds = {}
        for set_name in SETS:
            got = [r for r in rows if r["row"] == name and r["set"] == set_name]
            folds[set_name] = len(got)
            for key in keys:
                mean[set_name, key] = statistics.mean(r[key] for r in got) if got else float("nan")
        both = {key: (mean["colour", key] + mean["mixed", key]) / 2 for key in ("acc", "em")}
        lines.append(
            f"| {name} | {folds['colour']}+{folds['mixed']} | "
            + " | ".join(f"{mean[s, k]:.3f}" for s in SETS for k in ("acc", "em", "em70", "ece"))
            + f" | {both['acc']:.3f} | {both['em']:.3f} | "
            + " | ".join(f"{mean[s, 'baseline_acc']:.3f} / {mean[s, 'baseline_em']:.3f}" for s in SETS)
            + " |")
    atomic_write_text(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
