"""Whole pairing jobs on folders and files: what ``emit pair ...`` runs.

Each job reads its inputs, reports bad records (and keeps going), writes its outputs
atomically, and returns a small summary dict for the command line to print.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from emit import distributed
from emit.commit import FolderCommit, folder_commit, write_problems
from emit.config import PairingConfig
from emit.data.products import Product, read_products, read_truth, write_final_json
from emit.devices import local_device, resolve_device
from emit.files import atomic_write_bytes, recover_folder
from emit.pairing.assign import AssignMode
from emit.pairing.ensemble import CombineMode
from emit.pairing.model import PairingModel
from emit.pairing.pipeline import ProductDecision, check_backbone, predict_products, train_pairing
from emit.pairing.report import evaluate_pairing, write_report
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
              progress: bool = True, device: str = "cpu") -> dict[str, Any]:
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
    backbone = create_backbone(config.backbone, weights=config.weights)
    cache = cache_dir or default_cache_dir()
    if config.tune_full_model:
        from emit.pairing.finetune import finetune_backbone

        backbone.model.to(where)
        backbone = finetune_backbone(products, backbone, config, Path(out), problems=problems,
                                     progress=progress)
    model = train_pairing(products, config, backbone=backbone, cache_dir=cache, problems=problems,
                          progress=progress, device=device)
    png = write_model_folder(out, model, problems)
    return {"model": str(out), "products": len(products),
            "images": sum(len(p.images) for p in products), "labels": len(model.vocab.labels),
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
                device: str = "cpu") -> dict[str, Any]:
    start = time.perf_counter()
    resolve_device(device)
    model, backbone = load_pairing_model(model_dir)
    problems = ProblemLog()
    products, _ = read_products(data, image_root=image_root, problems=problems, keep_missing=True)
    if not products:
        raise EmitError(f"{data}: no usable products; see the problems above")
    decisions = predict_products(model, backbone, products, cache_dir=cache_dir or default_cache_dir(),
                                 problems=problems, progress=progress, assign_mode=assign,
                                 combine_mode=combine, device=device)
    unreadable = sum(t is None for d in decisions for t in d.tags)
    write_predictions(out, products, decisions, problems)
    return {"predictions": str(out), "baseline": str(baseline_path(out)),
            "products": len(products), "images": sum(len(p.images) for p in products),
            "unassigned_images": unreadable, "problems": len(problems),
            "assign": assignment_used(model, assign, combine),
            "combine": combine or model.config.bag_combine,
            "seconds": round(time.perf_counter() - start, 2)}


def write_predictions(out: str | os.PathLike[str], products: list[Product],
                      decisions: list[ProductDecision], problems: ProblemLog) -> Path:
    """``final_json.json``, its baseline and its problems as one commit: all from this run."""
    out = Path(out)
    outputs = [out, baseline_path(out), problems_path(out)]
    with folder_commit(out.parent, label=out.name, manifest=False, only=[p.name for p in outputs]):
        write_final_json(out, products, {d.product_id: d.tags for d in decisions})
        write_final_json(baseline_path(out), products, {d.product_id: d.baseline_tags for d in decisions})
        write_problems(problems, problems_path(out))
    return out


def evaluate_job(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
                 baseline: str | os.PathLike[str] | None = None,
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
    report = evaluate_pairing(pred, truth_products, baselines, problems=problems)
    prefix = Path(out) if out else Path(pred).with_name(Path(pred).stem + "_report")
    with folder_commit(prefix.parent, label=prefix.name, manifest=False):  # the JSON and its plot together
        json_path, png_path = write_report(report, prefix)
    return report, json_path, png_path

