"""Evaluate a pairing result (``final_json.json``) against the true tags, and show it.

:func:`evaluate_pairing` aligns predictions to the truth images *by image name*, reports
every mismatch (missing product or image, unknown image, tag outside ``optional_tags``)
in a :class:`ProblemLog` and scores such images as wrong, so a bad prediction file can
lower the score but never silently raise it. Named baselines (e.g. the paper's
single-class colour baseline) are scored the same way, for a side-by-side comparison.

:func:`write_report` writes the report as JSON plus a PNG, both atomically;
:func:`format_report` gives the short text summary for the command line.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emit.config import versions
from emit.data.products import Product, brief, read_truth
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.metrics import confused_pairs, pairing_scores
from emit.problems import EmitError, ProblemLog

log = logging.getLogger("emit")

Predictions = str | os.PathLike[str] | Mapping[str, Any]

REPORT_NAME = "pairing_report"  # file stem used when write_report is given a folder
TOP_CONFUSIONS = 20  # kept in the JSON; the plot shows the first PLOT_CONFUSIONS
PLOT_CONFUSIONS = 15
_SURROGATE = re.compile("[\ud800-\udfff]")  # from a broken \\uXXXX escape
PLOT_LABEL = 40  # characters of a tag shown in the plot: a huge tag must not break the render
SCORE_KEYS = ("accuracy", "exact_match", "images", "correct", "products", "exact", "per_size")

# Families that cover simplified Chinese, most common first (Linux, then macOS/Windows).
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Noto Serif CJK SC",
    "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN", "PingFang SC", "Heiti SC",
    "Hiragino Sans GB", "Microsoft YaHei", "SimHei", "Arial Unicode MS",
)
CJK_FONT_HINT = "install a CJK font, e.g. Debian/Ubuntu: apt install fonts-noto-cjk"


# --------------------------------------------------------------------------- evaluation


def evaluate_pairing(
    pred_path_or_dict: Predictions,
    truth: Mapping[str, Product] | str | os.PathLike[str],
    baselines: Mapping[str, Predictions] | None = None,
    *,
    name: str = "method",
    problems: ProblemLog | None = None,
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
    Raises :class:`EmitError` if the truth has no known tag at all.
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


def _load_aligned(
    pred: Predictions, truth: Mapping[str, Product], label: str, problems: ProblemLog
) -> tuple[str, dict[str, list[str | None]]]:
    """Load predictions and align them to the truth images; return (source, aligned tags)."""
    if isinstance(pred, Mapping):
        source, data = label, pred
    else:
        source = str(pred)
        data = read_json(pred)  # unreadable or malformed file: EmitError naming it
        if not isinstance(data, dict):
            raise EmitError(f"{source}: expected an object {{product_id: profile}}, "
                            f"got {type(data).__name__}")
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
    atomic_write_bytes(png_path, render_png(report))
    return json_path, png_path


@functools.lru_cache(maxsize=1)
def _register_packaged_cjk_font(font_manager: Any) -> None:
    """Noto Sans CJK ships as a PyPI dependency (cvttf-notosanscjk-regular), so plots show
    Chinese tags on machines without system CJK fonts; matplotlib does not look there itself."""
    try:
        import cvttf_NotoSansCJK_Regular as packaged
    except ImportError:
        return
    path = Path(packaged.__file__).with_name("NotoSansCJKtc-Regular.otf")
    if path.is_file() and all(f.fname != str(path) for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(path))


def cjk_font() -> str | None:
    """Name of a font matplotlib can use for Chinese tags, or None if none is installed."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    _register_packaged_cjk_font(font_manager)
    fonts = font_manager.fontManager.ttflist
    names = {f.name for f in fonts}
    for family in CJK_FAMILIES:
        if family in names:
            return family
    for f in fonts:  # any other font that has the glyphs (e.g. a vendor font)
        if f.name.startswith("Last Resort"):  # matplotlib's placeholder-box font
            continue
        try:
            if all(FT2Font(f.fname).get_char_index(ord(c)) for c in "黑色"):
                return f.name
        except (OSError, RuntimeError, ValueError):
            continue
    log.warning("no CJK font found by matplotlib; Chinese tags in plots will show as boxes "
                "-- %s", CJK_FONT_HINT)
    return None


def _pct(value: float | None) -> float:
    return 0.0 if value is None else 100.0 * value


def _per_size(scores: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    # keys are int in memory but str after a JSON round trip
    return {int(k): v for k, v in scores.get("per_size", {}).items()}


def render_png(report: Mapping[str, Any]) -> bytes:
    """The report figure as PNG bytes: (a) Acc/EM per system, (b) Acc by size, (c) confusions.

    Uses the Agg canvas directly (no pyplot, no display, no global backend switch). Without
    a CJK font, the missing-glyph warnings are suppressed and tags still label the bars.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    font = cjk_font()
    rc: dict[str, Any] = {}
    if font is not None:
        rc = {"font.family": "sans-serif",
              "font.sans-serif": [font, *matplotlib.rcParams["font.sans-serif"]]}
    systems: list[tuple[str, Mapping[str, Any]]] = [(str(report.get("name", "method")), report)]
    systems += list(report.get("baselines", {}).items())

    with matplotlib.rc_context(rc), warnings.catch_warnings():
        # one warning per missing glyph per draw would flood the log; the title says it once
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from", UserWarning)
        fig = Figure(figsize=(12, 9), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.2])
        _plot_scores(fig.add_subplot(grid[0, 0]), systems)
        _plot_sizes(fig.add_subplot(grid[0, 1]), systems)
        _plot_confusions(fig.add_subplot(grid[1, :]), report.get("confused_pairs", []))
        title = (f"Pairing: {report.get('products', 0)} products, "
                 f"{report.get('images', 0)} images scored")
        if font is None:
            title += "\n(no CJK font found: Chinese tags show as boxes; " + CJK_FONT_HINT + ")"
        fig.suptitle(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _plot_scores(ax: Any, systems: list[tuple[str, Mapping[str, Any]]]) -> None:
    x = list(range(len(systems)))
    width = 0.38
    for offset, key, label in ((-width / 2, "accuracy", "Acc"), (width / 2, "exact_match", "EM")):
        bars = ax.bar([i + offset for i in x], [_pct(s.get(key)) for _, s in systems],
                      width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [name for name, _ in systems])
    ax.set_ylim(0, 119)  # headroom above 100 for the legend
    ax.set_ylabel("%")
    ax.set_title("(a) accuracy and exact match")
    ax.legend(loc="upper right", ncols=2, fontsize=8)


def _plot_sizes(ax: Any, systems: list[tuple[str, Mapping[str, Any]]]) -> None:
    tables = [(name, _per_size(s)) for name, s in systems]
    sizes = sorted({size for _, t in tables for size in t})
    if not sizes:
        ax.text(0.5, 0.5, "no scored products", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("(b) accuracy by product size")
        return
    width = 0.8 / len(tables)
    for j, (name, table) in enumerate(tables):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(sizes))]
        bars = ax.bar(xs, [_pct(table.get(s, {}).get("accuracy")) for s in sizes], width,
                      label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)  # a 0 % bar is otherwise invisible
    counts = tables[0][1]
    ax.set_xticks(range(len(sizes)),
                  [f"{s}\n({counts.get(s, {}).get('products', 0)} prod.)" for s in sizes])
    ax.set_ylim(0, 119)
    ax.set_xlabel("images per product")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("(b) accuracy by product size")
    if len(tables) > 1:
        ax.legend(loc="upper right", ncols=min(len(tables), 3), fontsize=8)


def _plot_confusions(ax: Any, pairs: Sequence[Sequence[Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    pairs = list(pairs)[:PLOT_CONFUSIONS]
    ax.set_title("(c) most frequent confusions (true → predicted)")
    if not pairs:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [f"{brief(t, PLOT_LABEL)} → {brief(p, PLOT_LABEL)}" for t, p, _ in pairs]
    counts = [int(n) for _, _, n in pairs]
    bars = ax.barh(range(len(pairs)), counts)
    ax.bar_label(bars, fontsize=8)
    ax.set_yticks(range(len(pairs)), labels)
    ax.invert_yaxis()  # most frequent on top
    ax.set_xlim(0, max(counts) * 1.08)  # room for the count labels
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images")


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
    sizes = _per_size(report)
    if sizes:
        lines.append("  by size: " + "  ".join(
            f"{k}: {pct(v.get('accuracy')).strip()} (n={v.get('products', 0)})"
            for k, v in sorted(sizes.items())))
    pairs = list(report.get("confused_pairs", []))[:confusions]
    if pairs:
        lines.append("  top confusions: " + "; ".join(
            f"{brief(t, PLOT_LABEL)} -> {brief(p, PLOT_LABEL)} x{n}" for t, p, n in pairs))
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
