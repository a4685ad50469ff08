"""Jobs shared by both workflows: splitting data, label statistics, and the demo."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from emit.config import PairingConfig
from emit.data.products import Product, read_products
from emit.files import atomic_write_json, read_text
from emit.problems import EmitError
from emit.split import split_ids
from emit.text.labels import LabelVocab, build_vocab, count_labels, coverage


def split_job(data: str | os.PathLike[str], out: str | os.PathLike[str], *, val_fraction: float = 0.2,
              seed: int = 0, materialise: Literal["none", "symlink", "copy", "move"] = "none",
              into: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write ``{"train": [...], "val": [...]}``; optionally build train/ and val/ folders.

    The user's files are only moved with ``materialise="move"``; otherwise folders are
    linked or copied into ``into``.
    """
    if not 0 <= val_fraction < 1:
        raise EmitError(f"--val-fraction {val_fraction} is outside [0, 1); give e.g. 0.2")
    products, problems = read_products(data, require_images=False)
    ids = [p.product_id for p in products]
    train, val = split_ids(ids, val_fraction, seed)
    atomic_write_json(out, {"data": str(data), "val_fraction": val_fraction, "seed": seed,
                            "train": train, "val": val})
    result: dict[str, Any] = {"split": str(out), "train": len(train), "val": len(val),
                              "problems": len(problems)}
    if materialise != "none":
        if into is None:
            raise EmitError("--materialise needs --into FOLDER for the train/ and val/ folders")
        by_id = {p.product_id: p for p in products}
        for part, part_ids in (("train", train), ("val", val)):
            _materialise([by_id[i] for i in part_ids], Path(into) / part, materialise)
        result["folders"] = str(into)
    return result


def _materialise(products: list[Product], dest: Path, how: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in products:
        target = dest / p.product_id
        if target.exists() or target.is_symlink():
            continue  # resumable: finished products are left alone
        if p.folder is None or not p.folder.is_dir():
            raise EmitError(f"{p.source}: product {p.product_id} has no folder to "
                            f"{how}; use --materialise none")
        if how == "symlink":
            target.symlink_to(p.folder.resolve(), target_is_directory=True)
        elif how == "move":
            shutil.move(str(p.folder), str(target))
        else:
            tmp = dest / f".{p.product_id}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(p.folder, tmp)
            tmp.rename(target)


def read_tag_corpus(path: str | os.PathLike[str]) -> tuple[list[str], int]:
    """Tags from products (folder or *_all.json), or from a text file with one tag per line."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in {".txt", ".tsv", ".csv"}:
        lines = read_text(path).splitlines()
        return [t.strip() for t in lines if t.strip()], 0
    products, _ = read_products(path, require_images=False)
    return [t for p in products for t in p.optional_tags], len(products)


def labels_stats_job(tags_path: str | os.PathLike[str], *, min_count: int = 5, top_k: int = 64,
                     vocab: str | os.PathLike[str] | None = None, top: int = 20) -> dict[str, Any]:
    tags, n_products = read_tag_corpus(tags_path)
    if not tags:
        raise EmitError(f"{tags_path}: no tags found")
    vocabulary = LabelVocab.load(vocab) if vocab else build_vocab(tags, min_count, top_k)
    counts = count_labels(tags, vocabulary.strip_colour_suffix)
    return {
        "source": str(tags_path), "products": n_products,
        "labels": [(lab, counts.get(lab, 0)) for lab in vocabulary.labels],
        "coverage": coverage(vocabulary, tags),
        "segmented_labels_total": len(counts),
        "most_common_segments": counts.most_common(top),
    }


def demo_job(out: str | os.PathLike[str], *, n_products: int = 120, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Generate products, train a pairing model, predict held-out products, and evaluate."""
    from emit.data.synthetic import make_products
    from emit.pairing.jobs import evaluate_job, predict_job, train_job
    from emit.pairing.report import format_report

    start = time.perf_counter()
    out = Path(out)
    train_dir = make_products(out / "data" / "train", n_products, seed=seed)
    test_dir = make_products(out / "data" / "test", max(10, n_products // 3), seed=seed + 1)
    # What a user predicts on: the same products with the answers removed, in the combined form.
    test_products, _ = read_products(test_dir)
    atomic_write_json(out / "data" / "test_all.json",
                      {p.product_id: p.to_profile([None] * len(p.images)) for p in test_products})
    config = PairingConfig(seed=seed)
    cache = out / "feature-cache"
    trained = train_job(train_dir, out / "model", config, cache_dir=cache, progress=progress)
    predicted = predict_job(out / "model", out / "data" / "test_all.json", out / "final_json.json",
                            image_root=str(test_dir), cache_dir=cache, progress=progress)
    report, json_path, png_path = evaluate_job(out / "final_json.json", test_dir)
    print(format_report(report))
    return {"train": trained, "predict": predicted, "report": str(json_path), "plot": str(png_path),
            "accuracy": report["accuracy"], "exact_match": report["exact_match"],
            "baselines": {k: {"accuracy": v["accuracy"], "exact_match": v["exact_match"]}
                          for k, v in report["baselines"].items()},
            "seconds": round(time.perf_counter() - start, 1)}
