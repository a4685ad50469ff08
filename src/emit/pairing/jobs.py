"""Whole pairing jobs on folders and files: what ``emit pair ...`` runs.

Each job reads its inputs, reports bad records (and keeps going), writes its outputs
atomically, and returns a small summary dict for the command line to print.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emit import distributed
from emit.commit import FolderCommit, folder_commit, write_problems
from emit.config import PairingConfig
from emit.data.extra_images import read_extra_images
from emit.data.products import Product, read_products, read_truth, write_final_json
from emit.devices import local_device, resolve_device
from emit.files import atomic_remove, atomic_write_bytes, atomic_write_json, recover_folder
from emit.pairing.assign import AssignMode
from emit.pairing.confidence import as_probability
from emit.pairing.ensemble import CombineMode
from emit.pairing.model import PairingModel
from emit.pairing.pipeline import ProductDecision, check_backbone, predict_products, train_pairing
from emit.pairing.report import confidence_path, evaluate_pairing, write_report
from emit.pairing.review_queue import build_review_queue, review_path, write_review_queue
from emit.plots import plot_pairing_curves
from emit.problems import EmitError, ProblemLog
from emit.vision.backbones import Backbone, create_backbone
from emit.vision.features import default_cache_dir

log = logging.getLogger("emit")


def baseline_path(pred_path: str | os.PathLike[str]) -> Path:
    """Where predict writes the colour baseline's predictions, beside final_json.json."""
    p = Path(pred_path)
    return p.with_name(p.stem + ".baseline.json")


def problems_path(pred_path: str | os.PathLike[str]) -> Path:
    """Where predict writes the problems it met, beside final_json.json (only if there were any)."""
    p = Path(pred_path)
    return p.with_name(p.stem + ".problems.json")


TRAIN_PROBLEMS = "train_problems.json"


def train_job(data: str | os.PathLike[str], out: str | os.PathLike[str], config: PairingConfig, *,
              image_root: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
              progress: bool = True, device: str = "cpu",
              extra: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    config.validate()
    where = local_device(device)  # absent: refused before any work; under torchrun: this rank's GPU
    if distributed.launched() and not config.tune_full_model:
        # Only fine-tuning is data-parallel; the heads train in seconds on one process, and
        # several processes would race to write one model folder.
        raise EmitError("emit pair train runs data-parallel under torchrun only with --tune-full-model; "
                        "run it without torchrun, or add --tune-full-model")
    start = time.perf_counter()
    problems = ProblemLog()
    products, _ = read_products(data, image_root=image_root, problems=problems)
    if not products:
        raise EmitError(f"{data}: no usable products; see the problems above")
    extra_products, sources = [], []
    seen = {p.product_id for p in products}
    for source in extra:
        found = []
        for product in read_extra_images(source, problems):
            if product.product_id in seen:  # e.g. --extra naming the training folder itself
                problems.add(source, product.product_id, "product is already in the training data (or "
                             "an earlier --extra); not used twice", "leave it out of one of the two")
                continue
            seen.add(product.product_id)
            found.append(product)
        extra_products += found
        sources.append({"path": str(Path(source).resolve()), "products": len(found),
                        "images": sum(len(p.images) for p in found)})
    backbone = create_backbone(config.backbone, weights=config.weights)
    cache = cache_dir or default_cache_dir()
    if config.tune_full_model:
        from emit.pairing.finetune import finetune_backbone

        backbone.model.to(where)
        backbone = finetune_backbone(products, backbone, config, Path(out), problems=problems,
                                     progress=progress)
    model = train_pairing(products, config, backbone=backbone, cache_dir=cache, problems=problems,
                          progress=progress, device=device, extra=extra_products)
    model.extra_sources = sources
    png = write_model_folder(out, model, problems)
    return {"model": str(out), "products": len(products),
            "images": sum(len(p.images) for p in products),
            **({"extra_products": len(extra_products),
                "extra_images": sum(len(p.images) for p in extra_products)} if extra else {}),
            "labels": len(model.vocab.labels),
            "members": len(model.members), "problems": len(problems),
            "seconds": round(time.perf_counter() - start, 1), "curves": str(png)}


def write_model_folder(out: str | os.PathLike[str], model: PairingModel, problems: ProblemLog) -> Path:
    """The model, its fine-tuned backbone (if any), curves and problems as one commit: a reader
    of ``out`` sees the last complete model, never a mix. Returns the curves' path."""
    out = Path(out)
    png = out / "training.png"
    with folder_commit(out, label="pairing-model") as commit:
        _commit_tuned_backbone(out, model.config, commit)
        model.save(out)
        atomic_write_bytes(png, plot_pairing_curves([member.info for member in model.members]))
        write_problems(problems, out / TRAIN_PROBLEMS)
    return png


def _commit_tuned_backbone(out: Path, config: PairingConfig, commit: FolderCommit) -> None:
    """The fine-tuned backbone joins the model's commit; a model without one drops an old one."""
    from emit.pairing.finetune import TUNED_FILE, TUNED_WORK

    work, tuned = out / TUNED_WORK, out / TUNED_FILE
    if config.tune_full_model and work.is_file():
        atomic_write_bytes(tuned, work.read_bytes())
        commit.remove(work)
    elif config.tune_full_model:
        commit.adopt(tuned)  # reused from the folder's last complete save
    else:
        commit.remove(tuned)


def load_pairing_model(model_dir: str | os.PathLike[str]) -> tuple[PairingModel, Backbone]:
    """A saved pairing model and the backbone it was trained with (refusing a different one)."""
    model = PairingModel.load(model_dir)
    backbone = create_backbone(model.config.backbone, weights=_model_weights(model, model_dir))
    check_backbone(model, backbone)
    return model, backbone


def _model_weights(model: PairingModel, model_dir: str | os.PathLike[str]) -> str | None:
    """A fine-tuned backbone lives in the model folder; otherwise the configured weights."""
    tuned = Path(model_dir) / "backbone.safetensors"
    # Only a model trained with fine-tuning uses it: a stray file is no part of another model.
    return str(tuned) if model.config.tune_full_model and tuned.is_file() else model.config.weights


def assignment_used(model: PairingModel, assign: AssignMode | None = None,
                    combine: CombineMode | None = None) -> str:
    """The assignment rule a prediction uses, for reports: the paper's vote is per-image argmin,
    so it has no assignment mode of its own."""
    if (combine or model.config.bag_combine) == "vote":
        return "argmin (vote)"
    return assign or model.config.assign


def predict_job(model_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                out: str | os.PathLike[str], *, image_root: str | None = None,
                cache_dir: str | os.PathLike[str] | None = None, assign: AssignMode | None = None,
                combine: CombineMode | None = None, progress: bool = True,
                device: str = "cpu", review_below: float | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    resolve_device(device)
    check_review_below(review_below)
    model, backbone = load_pairing_model(model_dir)
    if model.calibration is None:
        log.warning("%s was trained by an emit that did not calibrate confidence; the confidences "
                    "are uncalibrated margins; retrain it for calibrated ones", model_dir)
    problems = ProblemLog()
    products, _ = read_products(data, image_root=image_root, problems=problems, keep_missing=True)
    if not products:
        raise EmitError(f"{data}: no usable products; see the problems above")
    decisions = predict_products(model, backbone, products, cache_dir=cache_dir or default_cache_dir(),
                                 problems=problems, progress=progress, assign_mode=assign,
                                 combine_mode=combine, device=device)
    unreadable = sum(t is None for d in decisions for t in d.tags)
    review = write_predictions(out, products, decisions, problems, review_below=review_below, data=data)
    summary = {"predictions": str(out), "baseline": str(baseline_path(out)),
               "confidence": str(confidence_path(out)),
               "products": len(products), "images": sum(len(p.images) for p in products),
               "unassigned_images": unreadable, "problems": len(problems),
               "assign": assignment_used(model, assign, combine),
               "combine": combine or model.config.bag_combine,
               "calibrated": model.calibration is not None,
               "seconds": round(time.perf_counter() - start, 2)}
    if review is not None:
        summary.update(review=str(review_path(out)), review_products=review)
    return summary


def check_review_below(review_below: float | None) -> None:
    """Before any work: the queue's own check (build_review_queue) would only come at the end."""
    if review_below is not None and as_probability(review_below) is None:
        raise EmitError(f"--review-below {review_below}: give a probability between 0 and 1, e.g. 0.9")


def write_predictions(out: str | os.PathLike[str], products: list[Product],
                      decisions: list[ProductDecision], problems: ProblemLog, *,
                      review_below: float | None = None,
                      data: str | os.PathLike[str] | None = None) -> int | None:
    """``final_json.json``, its baseline, confidences, problems and (with ``review_below``) the
    review queue of the products less sure than that, as one commit: all from this run (a
    queue left by an earlier run is removed). Returns the queue's length, or None."""
    out = Path(out)
    # rounded once: the review queue and the confidence file must agree on every product
    confidence = {d.product_id: round(d.product_confidence, 6) for d in decisions}
    review = None
    if review_below is not None:
        if data is None:
            raise ValueError("a review queue needs the data folder it names")
        review = build_review_queue(review_below, Path(data).resolve(), out.resolve(), confidence,
                                    {d.product_id: d.tags for d in decisions})
    outputs = [out, baseline_path(out), confidence_path(out), problems_path(out), review_path(out)]
    with folder_commit(out.parent, label=out.name, manifest=False, only=[p.name for p in outputs]):
        write_final_json(out, products, {d.product_id: d.tags for d in decisions})
        write_final_json(baseline_path(out), products, {d.product_id: d.baseline_tags for d in decisions})
        atomic_write_json(confidence_path(out), confidence)
        write_problems(problems, problems_path(out))
        if review is not None:
            write_review_queue(review_path(out), review)
        else:
            atomic_remove(review_path(out))
    return None if review is None else len(review["products"])


def evaluate_job(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
                 baseline: str | os.PathLike[str] | None = None,
                 confidence: str | os.PathLike[str] | None = None,
                 out: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], Path, Path]:
    problems = ProblemLog()
    recover_folder(Path(pred).parent)  # finish a predict that was killed mid-commit: read one run's files
    truth_products = read_truth(truth, problems=problems)
    if baseline is not None and not Path(baseline).is_file():  # asked for by name: never dropped silently
        raise EmitError(f"--baseline {baseline}: no such file; give the baseline predictions that "
                        f"`emit pair predict` wrote beside its output (<name>.baseline.json), or leave "
                        "--baseline out")
    base = Path(baseline) if baseline else baseline_path(pred)
    baselines = {"colour baseline (single-class)": base} if base.is_file() else None
    conf = Path(confidence) if confidence else confidence_path(pred)
    if confidence is not None and not conf.is_file():
        raise EmitError(f"--confidence {confidence}: no such file; give the <name>.confidence.json that "
                        "`emit pair predict` wrote beside its output, or leave --confidence out")
    report = evaluate_pairing(pred, truth_products, baselines, problems=problems,
                              confidence=conf if conf.is_file() else None)
    prefix = Path(out) if out else Path(pred).with_name(Path(pred).stem + "_report")
    with folder_commit(prefix.parent, label=prefix.name, manifest=False):  # the JSON and its plot together
        json_path, png_path = write_report(report, prefix)
    return report, json_path, png_path

