"""Evaluate a pairing result (``final_json.json``) against the true tags, and show it.

:func:`evaluate_pairing` aligns predictions to the truth images *by image name*, reports
every mismatch (missing product or image, unknown image, tag outside ``optional_tags``)
in a :class:`ProblemLog` and scores such images as wrong, so a bad prediction file can
lower the score but never silently raise it. Named baselines (e.g. the paper's
single-class colour baseline) are scored the same way, for a side-by-side comparison.
Given the per-product confidences that predict writes beside its output
(:func:`confidence_path`), the report also says how good the most confident products are
(scores at 50/70/90/100 % coverage, the risk-coverage curve) and how well calibrated the
confidences are.

:func:`write_report` writes the report as JSON plus a PNG (:func:`emit.plots.plot_pairing_report`),
both atomically;
:func:`format_report` gives the short text summary for the command line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emit.config import versions
from emit.data.products import Product, brief, read_truth
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.metrics import (
    calibration_error,
    confused_pairs,
    coverage_scores,
    exact_matches,
    pairing_scores,
    risk_coverage_curve,
)
from emit.pairing.confidence import as_probability
from emit.plots import PLOT_LABEL, per_size, plot_pairing_report
from emit.problems import EmitError, ProblemLog

log = logging.getLogger("emit")

Predictions = str | os.PathLike[str] | Mapping[str, Any]
Confidences = str | os.PathLike[str] | Mapping[str, float]

REPORT_NAME = "pairing_report"  # file stem used when write_report is given a folder
TOP_CONFUSIONS = 20  # kept in the JSON; the plot shows the first emit.plots.PLOT_CONFUSIONS
_SURROGATE = re.compile("[\ud800-\udfff]")  # from a broken \\uXXXX escape
SCORE_KEYS = ("accuracy", "exact_match", "images", "correct", "products", "exact", "per_size")


def confidence_path(pred_path: str | os.PathLike[str]) -> Path:
    """Where predict writes the per-product confidences, beside final_json.json
    (``final_json.confidence.json``: ``{product_id: P(all its images are tagged right)}``)."""
    p = Path(pred_path)
    return p.with_name(p.stem + ".confidence.json")


# --------------------------------------------------------------------------- evaluation


def evaluate_pairing(
    pred_path_or_dict: Predictions,
    truth: Mapping[str, Product] | str | os.PathLike[str],
    baselines: Mapping[str, Predictions] | None = None,
    *,
    name: str = "method",
    problems: ProblemLog | None = None,
    confidence: Confidences | None = None,
) -> dict[str, Any]:
    """Score predictions against the true tags; return a JSON-ready report dict.

    ``pred_path_or_dict`` is a ``final_json.json`` path or its loaded ``{product_id: profile}``
    dict; a value may also be a list of tags aligned with the truth product's images (the
    ``predictions`` form that :func:`emit.data.products.write_final_json` takes). ``truth``
    is ``{product_id: Product}`` as :func:`read_truth` returns, or a path passed to it.
    ``baselines`` maps a display name to predictions in the same forms.

    The report holds the method's ``accuracy``, ``exact_match``, counts, ``per_size`` and
    ``missing_products`` (see :func:`emit.metrics.pairing_scores`), ``confused_pairs``,
    ``baselines`` (same scores per name), ``problems`` and the versions that made it.

    ``confidence`` is ``{product_id: probability that all its images are right}``, or the
    path of such a JSON file (:func:`confidence_path`). With it the report gains
    ``confidence``: ``{"source", "products_without_confidence", "coverage"
    (:func:`emit.metrics.coverage_scores`), "calibration" (:func:`emit.metrics.calibration_error`
    against exact match), "risk_coverage" (:func:`emit.metrics.risk_coverage_curve`)}``. A bad
    entry is a problem and skipped; a scored product without a confidence is a problem and
    ranks as confidence 0 (least confident).
    Raises :class:`EmitError` if the truth has no known tag at all, or a file is unusable.
    """
    problems = problems if problems is not None else ProblemLog()
    if not isinstance(truth, Mapping):
        truth = read_truth(truth, problems)
    true_tags = {pid: list(p.tags) for pid, p in truth.items() if p.labelled}
    if not true_tags:
        raise EmitError(
            "the truth has no known tags (all imgs_tags are empty); give the labelled "
            "profiles, not the data to predict"
        )

    source, aligned = _load_aligned(pred_path_or_dict, truth, "predictions", problems)
    scores = pairing_scores(aligned, true_tags)
    report: dict[str, Any] = {
        "kind": "emit.pairing.report",
        "name": name,
        "predictions": source,
        "truth_products": len(truth),
        "unlabelled_products": len(truth) - len(true_tags),
        **{k: scores[k] for k in SCORE_KEYS},
        "missing_products": scores["missing_products"],
        "confused_pairs": [list(c) for c in confused_pairs(aligned, true_tags, TOP_CONFUSIONS)],
        "baselines": {},
    }
    if confidence is not None:
        report["confidence"] = _confidence_report(confidence, aligned, true_tags, problems)
    for bname, bpred in (baselines or {}).items():
        bsource, baligned = _load_aligned(bpred, truth, f"baseline {bname}", problems)
        bscores = pairing_scores(baligned, true_tags)
        report["baselines"][bname] = {
            "predictions": bsource,
            **{k: bscores[k] for k in SCORE_KEYS},
            "missing_products": bscores["missing_products"],
        }
    report["problems"] = problems.to_json()
    report["versions"] = versions()
    return report


def _confidence_report(
    confidence: Confidences, aligned: Mapping[str, list[str | None]],
    true_tags: Mapping[str, list[str | None]], problems: ProblemLog,
) -> dict[str, Any]:
    """The report's ``confidence`` section: coverage, calibration and risk-coverage curve."""
    source, values = _load_confidence(confidence, problems)
    outcome = exact_matches(aligned, true_tags)  # the scored products, each exactly right or not
    missing = sorted(pid for pid in outcome if pid not in values)
    if missing:  # one problem, not one per product, like the extra products of the predictions
        problems.add(source, f"{len(missing)} product(s)",
                     f"no confidence (e.g. {', '.join(brief(pid) for pid in missing[:5])}); "
                     "ranked least confident (confidence 0)",
                     "give a confidence for every predicted product (predict writes them all)")
    # only the scored products: a predicted-but-unscored product has nothing to be right about
    scored = {pid: values.get(pid, 0.0) for pid in outcome}
    return {
        "source": source,
        "products_without_confidence": len(missing),
        "coverage": coverage_scores(scored, aligned, true_tags),
        "calibration": calibration_error(list(scored.values()), list(outcome.values())),
        "risk_coverage": risk_coverage_curve(scored, aligned, true_tags),
    }


def _json_object(given: Predictions | Confidences, label: str, value: str, fix: str = ""
                 ) -> tuple[str, Mapping[str, Any]]:
    """``(source, {product_id: <value>})`` from a loaded mapping (named ``label``) or a JSON file."""
    if isinstance(given, Mapping):
        return label, given
    data = read_json(given)  # unreadable or malformed file: EmitError naming it
    if not isinstance(data, dict):
        raise EmitError(f"{given}: expected an object {{product_id: {value}}}, "
                        f"got {type(data).__name__}{fix}")
    return str(given), data


def _load_confidence(confidence: Confidences, problems: ProblemLog) -> tuple[str, dict[str, float]]:
    """``(source, {product_id: confidence})``; entries that are not a number in [0, 1] are
    reported and left out."""
    source, data = _json_object(confidence, "confidence", "confidence",
                                "; write predict's .confidence.json")
    values: dict[str, float] = {}
    for pid, value in data.items():
        p = as_probability(value)
        if p is None:
            problems.add(source, brief(str(pid)), f"confidence {brief(value)} is not a number "
                         "in [0, 1]; skipped", "write a probability between 0 and 1")
            continue
        values[str(pid)] = p
    return source, values


def _load_aligned(
    pred: Predictions, truth: Mapping[str, Product], label: str, problems: ProblemLog
) -> tuple[str, dict[str, list[str | None]]]:
    """Load predictions and align them to the truth images; return (source, aligned tags)."""
    source, data = _json_object(pred, label, "profile")
    aligned: dict[str, list[str | None]] = {}
    for pid, product in truth.items():
        if not product.labelled:
            continue
        if pid not in data:
            # pairing_scores counts it as all wrong and lists it under missing_products
            problems.add(source, pid, "product missing from the predictions; all its images "
                         "count as wrong", "predict every product of the evaluated set")
            continue
        aligned[pid] = _align_product(pid, data[pid], product, source, problems)
    extra = sorted(str(pid) for pid in data if pid not in truth)
    if extra:  # one problem, not one per product: a whole other split would flood the log
        problems.add(source, f"{len(extra)} product(s)",
                     f"not in the truth (e.g. {', '.join(brief(pid) for pid in extra[:5])}); ignored",
                     "check that the predictions and the truth are the same split")
    return source, aligned


def _align_product(
    pid: str, entry: Any, product: Product, source: str, problems: ProblemLog
) -> list[str | None]:
    """Predicted tag per truth image (None where unusable), reporting every mismatch."""
    n = len(product.images)
    if isinstance(entry, Sequence) and not isinstance(entry, str) and all(
        t is None or isinstance(t, str) for t in entry
    ):
        if len(entry) != n:
            problems.add(source, pid, f"{len(entry)} predicted tags for {n} images; all count "
                         "as wrong", "give one tag per image, in the order of the profile")
            return [None] * n
        by_name = dict(zip(product.images, entry, strict=True))
    elif isinstance(entry, Mapping) and isinstance(entry.get("imgs_tags"), list):
        by_name = _tags_by_name(pid, entry, product, source, problems)
    else:
        problems.add(source, pid, "prediction is neither a profile with an imgs_tags list "
                     "nor a list of tags; all its images count as wrong",
                     'write {"optional_tags": [...], "imgs_tags": [{"<image>": "<tag>"}, ...]}')
        return [None] * n

    tags: list[str | None] = []
    for image in product.images:
        if image not in by_name:
            problems.add(source, f"{pid} image {image}", "image missing from the predictions; "
                         "counts as wrong", "predict every image of the product")
            tags.append(None)
            continue
        tag = by_name[image] or None
        if tag is None:
            problems.add(source, f"{pid} image {image}", "no tag predicted (empty); counts as "
                         "wrong", "fill every imgs_tags value")
        elif _SURROGATE.search(tag):
            # a lone surrogate (a broken \u escape): not text, and the report could not be written
            problems.add(source, f"{pid} image {image}",
                         f"predicted tag {brief(repr(tag))} holds a lone surrogate, which is not "
                         "Unicode text; counts as wrong", "fix the \\u escape in the predictions")
            tag = None
        elif tag not in product.optional_tags:
            # kept as predicted: it cannot equal the true tag, and shows in the confusions
            problems.add(source, f"{pid} image {image}",
                         f"predicted tag {brief(repr(tag))} is not one of optional_tags "
                         f"{brief(product.optional_tags)}; counts as wrong",
                         "predict one of the product's own option tags")
        tags.append(tag)
    return tags


def _tags_by_name(
    pid: str, profile: Mapping[str, Any], product: Product, source: str, problems: ProblemLog
) -> dict[str, str | None]:
    """``{image name: tag}`` from a profile's imgs_tags; bad entries reported and left out."""
    pred_opts = profile.get("optional_tags")
    if isinstance(pred_opts, list) and set(map(str, pred_opts)) != set(product.optional_tags):
        problems.add(source, pid, "optional_tags differ from the truth's "
                     f"({brief(pred_opts)} vs {brief(product.optional_tags)})",
                     "check that the predictions were made for the same products")
    by_name: dict[str, str | None] = {}
    for k, item in enumerate(profile["imgs_tags"]):
        if not (isinstance(item, Mapping) and len(item) == 1):
            problems.add(source, f"{pid} imgs_tags[{k}]", "entry is not a one-key object; "
                         "skipped", 'write {"<image>.jpg": "<tag>"}')
            continue
        ((key, tag),) = item.items()
        image = str(key)
        if tag is not None and not isinstance(tag, str):
            problems.add(source, f"{pid} image {brief(image)}", f"tag {brief(tag)} is not a string; "
                         "counts as wrong", "write the tag as a string")
            tag = None
        if image in by_name:
            problems.add(source, f"{pid} image {brief(image)}", "image listed twice; the first "
                         "prediction is used", "list each image once")
            continue
        by_name[image] = tag
    unknown = [name for name in by_name if name not in product.images]
    if unknown:
        problems.add(source, pid, f"predicted images not in the truth: {brief(unknown)}; ignored",
                     "check that the predictions were made for the same images")
    return by_name


# --------------------------------------------------------------------------- output


def _out_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A folder (existing, or written with a trailing slash) or a path prefix -> two paths."""
    text = os.fspath(out)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        base = path / REPORT_NAME
    elif path.suffix.lower() in (".json", ".png"):
        base = path.with_suffix("")
    else:
        base = path  # a prefix such as runs/exp1/val -> val.json, val.png
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".png")


def write_report(report: Mapping[str, Any], out_dir_or_prefix: str | os.PathLike[str]
                 ) -> tuple[Path, Path]:
    """Write ``report`` as JSON and as a PNG figure, each atomically; return both paths.

    ``out_dir_or_prefix`` is a folder (``<folder>/pairing_report.{json,png}``) or a prefix
    (``runs/val`` -> ``runs/val.json`` and ``runs/val.png``).
    """
    json_path, png_path = _out_paths(out_dir_or_prefix)
    atomic_write_json(json_path, report)  # first: the numbers matter more than the picture
    atomic_write_bytes(png_path, plot_pairing_report(report))
    return json_path, png_path


def _format_confidence(conf: Mapping[str, Any], pct: Callable[[float | None], str]) -> list[str]:
    """Lines for a report's ``confidence`` section: one per coverage level, then calibration."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = []
    for row in conf.get("coverage", []):
        least = row.get("min_confidence")
        lines.append(f"  most confident {100 * row['coverage']:3g}%: {row.get('products', 0)} "
                     f"products  Acc {pct(row.get('accuracy'))}  EM {pct(row.get('exact_match'))}"
                     + ("" if least is None else f"  (confidence >= {least:.2f})"))
    cal = conf.get("calibration", {})
    lines.append(f"  calibration: ECE {num(cal.get('ece'))}, Brier {num(cal.get('brier'))}, "
                 f"AURC {num(conf.get('risk_coverage', {}).get('aurc'))}")
    return lines


def format_report(report: Mapping[str, Any], *, confusions: int = 5) -> str:
    """A short text summary of a report (from :func:`evaluate_pairing` or its JSON)."""

    def pct(v: float | None) -> str:
        return "  n/a " if v is None else f"{100 * v:5.1f}%"

    lines = [f"Pairing: {report.get('products', 0)} products, {report.get('images', 0)} images "
             f"scored ({report.get('unlabelled_products', 0)} unlabelled products skipped)"]
    systems = [(str(report.get("name", "method")), report), *report.get("baselines", {}).items()]
    width = max(len(name) for name, _ in systems)
    for name, s in systems:
        lines.append(f"  {name:<{width}}  Acc {pct(s.get('accuracy'))}  "
                     f"EM {pct(s.get('exact_match'))}  ({s.get('correct', 0)}/{s.get('images', 0)}"
                     f" images, {s.get('exact', 0)}/{s.get('products', 0)} products)")
    sizes = per_size(report)
    if sizes:
        lines.append("  by size: " + "  ".join(
            f"{k}: {pct(v.get('accuracy')).strip()} (n={v.get('products', 0)})"
            for k, v in sorted(sizes.items())))
    pairs = list(report.get("confused_pairs", []))[:confusions]
    if pairs:
        lines.append("  top confusions: " + "; ".join(
            f"{brief(t, PLOT_LABEL)} -> {brief(p, PLOT_LABEL)} x{n}" for t, p, n in pairs))
    conf = report.get("confidence")
    if conf:
        lines += _format_confidence(conf, pct)
    missing = list(report.get("missing_products", []))
    if missing:
        lines.append(f"  missing products: {len(missing)} (e.g. {', '.join(missing[:5])})")
    found = list(report.get("problems", []))
    if found:
        first = found[0]
        lines.append(f"  problems: {len(found)} (first: {first['where']}: {first['record']}: "
                     f"{first['what']})")
    else:
        lines.append("  problems: none")
    return "\n".join(lines)
