"""``emit pair predict`` on Ray: the products spread over an actor pool, one ``final_json.json``.

Each actor loads the pairing model and its backbone once (:class:`PredictBatch`, a callable class
for ``Dataset.map_batches``) and reads the product list itself, so a batch only carries product
numbers. Products are decided independently of each other (the heads run per image, the
assignment per product), so the driver, which puts the decisions back in product order and
writes them with :func:`emit.pairing.jobs.write_predictions`, writes what the local run writes.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from emit.data.products import read_products
from emit.pairing.jobs import (
    assignment_used,
    baseline_path,
    check_review_below,
    load_pairing_model,
    write_predictions,
)
from emit.pairing.pipeline import ProductDecision, predict_products
from emit.pairing.report import confidence_path
from emit.pairing.review_queue import review_path
from emit.problems import EmitError, ProblemLog
from emit.scale.ray_engine import actor_device, actor_options, ray_session, require_ray
from emit.vision.features import default_cache_dir

log = logging.getLogger("emit")


class PredictBatch:
    """Decisions for a batch of product numbers (a table with ``index`` and ``product_id``)."""

    def __init__(self, model_dir: str, data: str, *, image_root: str | None, cache_dir: str,
                 assign: str | None, combine: str | None, device: str, torch_threads: int | None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.model, self.backbone = load_pairing_model(model_dir)
        self.products, _ = read_products(data, image_root=image_root, problems=ProblemLog(echo=False),
                                         keep_missing=True)
        self.data, self.cache_dir, self.device = data, cache_dir, device
        self.assign, self.combine = assign, combine

    def __call__(self, batch: pa.Table) -> pa.Table:
        indices = batch.column("index").to_pylist()
        products = [self.products[i] if i < len(self.products) else None for i in indices]
        for product, want in zip(products, batch.column("product_id").to_pylist(), strict=True):
            if product is None or product.product_id != want:
                raise EmitError(f"{self.data}: the products changed while the job ran (expected {want}); "
                                "rerun it on a folder that is not being written")
        problems = ProblemLog(echo=False)
        decisions = predict_products(self.model, self.backbone, products,  # type: ignore[arg-type]
                                     cache_dir=self.cache_dir, problems=problems, progress=False,
                                     assign_mode=self.assign, combine_mode=self.combine,  # type: ignore[arg-type]
                                     device=self.device)
        found = [json.dumps(problems.to_json())] + ["[]"] * (len(indices) - 1)  # once a batch
        return pa.table({"index": pa.array(indices, pa.int64()),
                         "decision": pa.array([pickle.dumps(d) for d in decisions], pa.binary()),
                         "problems": pa.array(found, pa.string())})


def predict_job_ray(model_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                    out: str | os.PathLike[str], *, image_root: str | None = None,
                    cache_dir: str | os.PathLike[str] | None = None, assign: str | None = None,
                    combine: str | None = None, progress: bool = True, device: str = "cpu",
                    workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    products_per_batch: int = 64, review_below: float | None = None) -> dict[str, Any]:
    """``emit pair predict --engine ray``: the summary of :func:`emit.pairing.jobs.predict_job`,
    with ``engine`` and ``workers`` added."""
    start = time.perf_counter()
    require_ray()
    if str(device).startswith("cuda") and not gpus_per_worker:
        raise EmitError(f"--device {device} with --engine ray needs --gpus-per-worker (e.g. 1)")
    check_review_below(review_below)
    model, _ = load_pairing_model(model_dir)  # a wrong backbone is refused before Ray starts
    problems = ProblemLog()
    products, _ = read_products(data, image_root=image_root, problems=problems, keep_missing=True)
    if not products:
        raise EmitError(f"{data}: no usable products; see the problems above")
    decisions: list[ProductDecision | None] = [None] * len(products)
    found: list[tuple[int, list[dict[str, str]]]] = []
    with ray_session(progress, cpus_per_worker, gpus_per_worker) as ray, \
            tqdm(total=len(products), unit="product", desc="predict (ray)", disable=not progress) as bar:
        items = [{"index": i, "product_id": p.product_id} for i, p in enumerate(products)]
        blocks = max(1, min(-(-len(items) // products_per_batch), 8 * workers))
        threads = max(1, int(cpus_per_worker))
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            PredictBatch,
            fn_constructor_kwargs={
                "model_dir": str(model_dir), "data": str(data), "image_root": image_root,
                "cache_dir": str(cache_dir or default_cache_dir()), "assign": assign, "combine": combine,
                "device": actor_device(device, gpus_per_worker),
                "torch_threads": threads},
            batch_size=products_per_batch, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), udf_modifying_row_count=False,
            **actor_options(cpus_per_worker, gpus_per_worker))
        for rows in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for i, blob, text in zip(*(rows.column(c).to_pylist() for c in ("index", "decision", "problems")),
                                     strict=True):
                decisions[i] = pickle.loads(blob)  # written by this job's own actors
                if text != "[]":
                    found.append((i, json.loads(text)))
            bar.update(rows.num_rows)
    missing = [products[i].product_id for i, d in enumerate(decisions) if d is None]
    if missing:
        raise EmitError(f"{data}: Ray returned no decision for {len(missing)} product(s) (e.g. "
                        f"{missing[0]}); nothing was written: rerun the job")
    for _, items_found in sorted(found, key=lambda f: f[0]):  # in product order, as a local run
        for item in items_found:
            problems.add(item["where"], item["record"], item["what"], item["fix"])
    review = write_predictions(Path(out), products, decisions, problems,  # type: ignore[arg-type]
                               review_below=review_below, data=data)
    return {"predictions": str(out), "baseline": str(baseline_path(out)),
            "confidence": str(confidence_path(out)),
            **({} if review is None else {"review": str(review_path(out)), "review_products": review}),
            "products": len(products), "images": sum(len(p.images) for p in products),
            "unassigned_images": sum(t is None for d in decisions if d for t in d.tags),
            "problems": len(problems), "assign": assignment_used(model, assign, combine),  # type: ignore[arg-type]
            "combine": combine or model.config.bag_combine, "engine": "ray", "workers": workers,
            "seconds": round(time.perf_counter() - start, 2)}

