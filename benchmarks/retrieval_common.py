"""Shared parts of the retrieval benchmarks: a hashed test split of images, training on the rest
with emit's own early-stopping split, evaluation on the test images, and a markdown table.

Not a test and not part of the package: the benchmarks import it as a sibling module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
KEYS = ("R@1", "R@5", "R@10", "R@20", "median_rank")


@dataclass
class Task:
    texts: list[str]
    rows: np.ndarray  # image row of each text
    categories: list[str | None] | None = None


@dataclass
class Bench:
    features: np.ndarray  # (N, D) raw backbone features
    keys: list[str]  # split key of each image (images of one product share one)
    tasks: dict[str, Task]
    is_test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def hashed_order(keys: list[str], salt: str) -> list[str]:
    return sorted(set(keys), key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())


def hold_out(bench: Bench, salt: str, *, n_images: int | None = None, fraction: float | None = None) -> None:
    """Mark test images: the first keys in a salted hash order, up to ``n_images`` images or
    ``fraction`` of the keys. Images sharing a key go together."""
    order = hashed_order(bench.keys, salt)
    if fraction is not None:
        chosen = set(order[:round(fraction * len(order))])
    else:
        chosen, count = set(), 0
        per_key = Counter(bench.keys)
        for k in order:
            if count >= (n_images or 0):
                break
            chosen.add(k)
            count += per_key[k]
    bench.is_test = np.array([k in chosen for k in bench.keys])


def restrict(task: Task, images: np.ndarray) -> Task:
    """The captions of the images where ``images`` (bool per image row) is true, their image
    rows renumbered to count those images only."""
    keep = np.flatnonzero(images)
    new_row = -np.ones(len(images), dtype=np.int64)
    new_row[keep] = np.arange(len(keep))
    sel = np.flatnonzero(images[task.rows])
    return Task([task.texts[i] for i in sel], new_row[task.rows[sel]],
                None if task.categories is None else [task.categories[i] for i in sel])


def side(bench: Bench, test: bool) -> tuple[np.ndarray, list[str], dict[str, Task]]:
    """Features, keys and tasks of the test (or training) images, rows renumbered."""
    images = bench.is_test == test
    keep = np.flatnonzero(images)
    tasks = {name: restrict(t, images) for name, t in bench.tasks.items()}
    return bench.features[keep], [bench.keys[i] for i in keep], tasks


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {d: {k: round(float(v), 2) for k, v in report[d].items() if k in KEYS}
                           for d in ("text_to_image", "image_to_text")}
    if report["map_at_r"]["relevance"] == "category":
        out["map_at_r"] = {"R": report["map_at_r"]["R"],
                           **{d: round(100 * report["map_at_r"][d], 2)
                              for d in ("text_to_image", "image_to_text")}}
    return out


# Row settings that are not RetrievalConfig fields: the hubness correction at evaluation,
# "model_row", a row whose run folder (model) is reused, so a corrected row scores the very
# model of its uncorrected row, and "test_hflip" (test-time flips, applied by the caller).
EVAL_KEYS = ("hubness", "hubness_beta", "model_row", "test_hflip")


def train_seconds(row: dict[str, Any]) -> str:
    """A row's training time for a table, or "(its model)" for a row that reuses another's."""
    if "model_row" in row["settings"]:
        return "(its model)"  # the model of the row it extends, loaded, not trained again
    return f"{row['train_seconds']:.0f}"


def train_and_evaluate(name: str, settings: dict[str, Any], bench: Bench, work: Path,
                       eval_tasks: list[str] | None = None) -> dict[str, Any]:
    """Train ``RetrievalConfig(**settings)`` on the training images (early stopping on emit's
    inner --val-fraction split of them) and evaluate every task on the test images, with the
    hubness correction against the run's bank of training images and texts if asked."""
    from emit.retrieval.checkpoint import is_trained
    from emit.retrieval.config import RetrievalConfig
    from emit.retrieval.evaluate import evaluate_model
    from emit.retrieval.hubness import HubnessBank
    from emit.retrieval.pairs import Pairs
    from emit.retrieval.train import train_retrieval

    x_tr, keys_tr, tr = side(bench, test=False)
    x_te, _, te = side(bench, test=True)
    config = RetrievalConfig(**{k: v for k, v in settings.items() if k not in EVAL_KEYS})
    pairs = {k: Pairs(t.texts, t.rows) if k in tr else None for k, t in tr.items()}
    folder = work / run_folder(settings.get("model_row", name))
    trained_before = is_trained(folder)
    start = time.perf_counter()
    model = train_retrieval(x_tr, pairs.get("titles"), pairs.get("clicks"), config,
                            out=folder, image_keys=keys_tr, progress=False)
    seconds = time.perf_counter() - start
    if trained_before:  # loaded, not trained here: the epochs' own log gives the training time
        seconds = sum(float(r["seconds"]) for r in model.info["history"])
    hubness = {"hubness": settings.get("hubness", "none"), "beta": settings.get("hubness_beta", 1.0)}
    bank = HubnessBank.load(folder, model) if hubness["hubness"] != "none" else None
    result: dict[str, Any] = {"settings": settings, "train_seconds": round(seconds, 1),
                              "best_epoch": model.info["best_epoch"],
                              "epochs_run": len(model.info["history"]),
                              "encoder": model.config.encoder,  # what 'auto' resolved to
                              "best_val_score": model.info.get("best_score"),
                              "margin": round(float(model.margin), 4)}
    for task in eval_tasks or list(te):
        t = te[task]
        report = evaluate_model(model, t.texts, t.rows, x_te, categories=t.categories, bank=bank, **hubness)
        result[task] = summarise(report)
        result[task]["counts"] = {k: report["counts"][k] for k in ("captions", "images", "distinct_texts")}
    return result


def run_folder(name: str) -> str:
    """A row's run folder under --work: its name with anything but letters and digits as '_'."""
    return "".join(c if c.isalnum() else "_" for c in name)


def run_rows(rows: dict[str, dict[str, Any]], wanted: list[str], json_path: Path,
             run_one: Callable[[str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Run the rows not yet in ``json_path`` with the same settings; save after each one.
    Returns the saved results of every row in ``rows`` order."""
    from emit.files import atomic_write_json

    def saved() -> dict[str, Any]:
        return json.loads(json_path.read_text()) if json_path.is_file() else {}

    results = saved()
    for name in wanted:
        if name not in rows:
            raise SystemExit(f"unknown row {name!r}; choose from {', '.join(rows)}")
        if name in results and results[name].get("settings") == rows[name]:
            continue
        print(f"-- {name}", flush=True)
        row = run_one(name, rows[name])
        print(json.dumps(row), flush=True)
        # re-read first: another process may be running other rows into the same file
        results = {**saved(), name: row}
        atomic_write_json(json_path, results)
    return {k: results[k] for k in rows if k in results}


def run_benchmark(doc: str, name: str, rows: dict[str, dict[str, Any]],
                  table: Callable[[dict[str, Any]], str],
                  make_runner: Callable[[argparse.Namespace], Callable[[str, dict[str, Any]], dict[str, Any]]]
                  ) -> None:
    """The command line shared by the retrieval benchmarks: parse the flags, let
    ``make_runner(args)`` load the data and return ``run_one(row name, settings)``, run the
    asked rows into ``results/retrieval_<name>.json``, and write the markdown table beside it."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(rows), help=f"comma-separated: {', '.join(rows)}")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/emit-bench-cache/features"))
    ap.add_argument("--work", type=Path, default=Path(f"/tmp/emit-bench-{name}"),
                    help="run folders (checkpoints: a killed benchmark resumes)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"retrieval_{name}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from emit.files import atomic_write_text

    torch.set_num_threads(args.threads)
    run_one = make_runner(args)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    ordered = run_rows(rows, wanted, args.out.with_suffix(".json"), run_one)
    atomic_write_text(args.out.with_suffix(".md"), table(ordered))
    print(table(ordered))
