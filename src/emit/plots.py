"""Every figure emit draws, in one module: training curves and evaluation reports of both
workflows, as PNG bytes (the caller writes them, atomically, where they belong).

* :func:`plot_curves` -- a retrieval run's training loss and validation R@K (``training.png``);
* :func:`plot_evaluation` -- a retrieval evaluation report (``emit retrieval evaluate``);
* :func:`plot_pairing_curves` -- the loss and validation top-1 of a pairing model's members;
* :func:`plot_pairing_report` -- a pairing evaluation report, with Chinese tags (:func:`cjk_font`).

Figures use matplotlib's Agg canvas directly: no pyplot, no display, no global backend switch.
matplotlib is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emit.data.products import brief

log = logging.getLogger("emit")

# the two directions of a retrieval evaluation report (its JSON keys)
_DIRECTIONS = ("text_to_image", "image_to_text")
PLOT_CONFUSIONS = 15  # confusions shown in a pairing report's figure
PLOT_LABEL = 40  # characters of a tag shown in the plot: a huge tag must not break the render

# Families that cover simplified Chinese, most common first (Linux, then macOS/Windows).
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Noto Serif CJK SC",
    "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN", "PingFang SC", "Heiti SC",
    "Hiragino Sans GB", "Microsoft YaHei", "SimHei", "Arial Unicode MS",
)
CJK_FONT_HINT = "install a CJK font, e.g. Debian/Ubuntu: apt install fonts-noto-cjk"


# --------------------------------------------------------------------------- retrieval


def _record_tasks(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tasks a run's epoch records hold (``loss_<task>``), in their order."""
    return [k[len("loss_"):] for k in history[0] if k.startswith("loss_")] if history else []


def _record_ks(history: Sequence[Mapping[str, Any]]) -> list[int]:
    """The K of the validation R@K in a run's epoch records, in their order."""
    ks: dict[int, None] = {}
    for r in history:
        for scores in (r.get("val") or {}).values():
            if isinstance(scores, Mapping):
                ks.update((int(k[2:]), None) for k in scores if k.startswith("R@"))
    return list(ks)


def plot_curves(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> bytes:
    """PNG of the training loss (total and per task) and the validation R@K per task, from a
    retrieval run's epoch records (``model.info["history"]``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, val_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [int(r["epoch"]) for r in history]
    tasks = _record_tasks(history)
    loss_ax.plot(epochs, [r["loss"] for r in history], "o-", label="training loss (mean of tasks)")
    for name in tasks:
        loss_ax.plot(epochs, [r[f"loss_{name}"] for r in history], ".--", label=name)
    if history and all(r["loss"] > 0 for r in history):
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    shown = False
    for name in tasks:
        for k, style in zip(_record_ks(history), ("o-", "s--", "^:"), strict=False):
            ys = [(r.get("val") or {}).get(name, {}).get(f"R@{k}") for r in history]
            if any(y is not None for y in ys):
                val_ax.plot(epochs, [np.nan if y is None else y for y in ys], style, label=f"{name} R@{k}")
                shown = True
    if best_epoch is not None:
        for ax in (loss_ax, val_ax):
            ax.axvline(best_epoch, color="grey", alpha=0.3)
    val_ax.set(xlabel="epoch", ylabel="recall (%)", ylim=(0, 101),
               title="validation text -> image" + ("" if shown else " (no validation split)"))
    for ax in (loss_ax, val_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plot_evaluation(report: Mapping[str, Any]) -> bytes:
    """PNG of a retrieval evaluation report: R@K bars of both directions, and recall as K grows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    bars, curve = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    keys = [k for k in report["text_to_image"] if k.startswith("R@")]
    xs = np.arange(len(keys))
    width = 0.38
    for offset, direction in zip((-width / 2, width / 2), _DIRECTIONS, strict=True):
        values = [report[direction][k] for k in keys]
        rects = bars.bar(xs + offset, values, width, label=direction.replace("_", " → "))
        bars.bar_label(rects, fmt="%.1f", fontsize=7)
    bars.set_xticks(xs, keys)
    bars.set(ylabel="recall (%)", ylim=(0, 110),
             title=f"median rank: text→image {report['text_to_image']['median_rank']:g}, "
                   f"image→text {report['image_to_text']['median_rank']:g}")
    bars.legend(fontsize=8)
    rc = report["recall_curve"]
    for direction in _DIRECTIONS:
        curve.plot(rc["K"], rc[direction], label=direction.replace("_", " → "))
    if len(rc["K"]) > 1:
        curve.set_xscale("log")
    m = report["map_at_r"]
    maps = ", ".join(f"{m[d]:.3f}" for d in _DIRECTIONS if m[d] is not None) or "n/a"
    title = f"recall vs K; relevance by {m['relevance']}, t→i, i→t:\nMAP@R (Musgrave) {maps}"
    paper = report.get("map_at_r_paper")  # not in reports written before it
    if paper is not None:
        values = ", ".join(f"{paper[d]:.3f}" for d in _DIRECTIONS if paper[d] is not None) or "n/a"
        title += f"; mAP@{paper['R']} (Aggarwal eq. 5) {values}"
    curve.set(xlabel="K", ylabel="R@K (%)", ylim=(0, 101), title=title)
    curve.title.set_fontsize(9)
    curve.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# --------------------------------------------------------------------------- pairing


def plot_pairing_curves(members: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of the loss (log scale) and validation top-1 of every bag member of a pairing model,
    from the members' training records (``member.info``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, top1_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k, info in enumerate(members):
        (line,) = loss_ax.plot(info.get("train_loss", []), label=f"member {k} train")
        colour = line.get_color()
        if info.get("val_loss"):
            loss_ax.plot(info["val_loss"], "--", color=colour, label=f"member {k} val")
        if info.get("val_top1"):
            top1_ax.plot(info["val_top1"], color=colour, label=f"member {k}")
            top1_ax.axvline(info["best_epoch"] - 1, color=colour, alpha=0.3)
    loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss (dashed: validation)")
    top1_ax.set(xlabel="epoch", ylabel="share", ylim=(0, 1.02),
                title="validation images whose tag ranks first\n(vertical line: kept epoch)")
    for ax in (loss_ax, top1_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


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


def per_size(scores: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """A pairing report's per-size scores keyed by the product size (an int)."""
    # keys are int in memory but str after a JSON round trip
    return {int(k): v for k, v in scores.get("per_size", {}).items()}


def plot_pairing_report(report: Mapping[str, Any]) -> bytes:
    """A pairing report's figure as PNG bytes: (a) Acc/EM per system, (b) Acc by size, (c) confusions.

    A report with a ``confidence`` section gets one more panel beside (b), the risk-coverage
    curve (then (c), and the confusions become (d)); one without it renders as before.

    Without a CJK font, the missing-glyph warnings are suppressed and tags still label the bars.
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
        confidence = report.get("confidence")
        # the risk-coverage panel is a third column of the top row; the confusions span below
        columns = 3 if confidence else 2
        fig = Figure(figsize=(6 * columns, 9), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2, columns, height_ratios=[1.0, 1.2])
        _plot_scores(fig.add_subplot(grid[0, 0]), systems)
        _plot_sizes(fig.add_subplot(grid[0, 1]), systems)
        if confidence:
            _plot_risk_coverage(fig.add_subplot(grid[0, 2]), confidence)
        _plot_confusions(fig.add_subplot(grid[1, :]), report.get("confused_pairs", []),
                         "(d)" if confidence else "(c)")
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
    tables = [(name, per_size(s)) for name, s in systems]
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


def _plot_risk_coverage(ax: Any, confidence: Mapping[str, Any]) -> None:
    """Risk (1 - EM, and 1 - Acc) of the most confident products as more of them are kept."""
    rc = confidence.get("risk_coverage", {})
    aurc = rc.get("aurc")
    ece = confidence.get("calibration", {}).get("ece")
    title = "(c) risk vs coverage, most confident first"
    if aurc is not None and ece is not None:
        title += f"\nAURC {aurc:.3f}, ECE {ece:.3f}"
    ax.set_title(title)
    coverage = [100 * c for c in rc.get("coverage", [])]
    if not coverage:
        ax.text(0.5, 0.5, "no scored products", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(coverage, [100 * r for r in rc["risk"]], label="products: 1 − EM")
    ax.plot(coverage, [100 * r for r in rc["image_risk"]], "--", label="images: 1 − Acc")
    n = len(coverage)
    marked: set[int] = set()
    for row in confidence.get("coverage", []):
        # mark the 50/70/90 % levels on the curve (100 % is its end); on a few products two
        # levels can keep the same number, and one label there is enough
        k = int(row.get("products", 0))
        if row.get("coverage", 1.0) >= 1.0 or not 0 < k <= n or k in marked:
            continue
        marked.add(k)
        x, y = coverage[k - 1], 100 * rc["risk"][k - 1]
        ax.plot([x], [y], "o", color="black", markersize=4)
        ax.annotate(f"{100 * row['coverage']:g}%", (x, y), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    top = max(max(rc["risk"]), max(rc["image_risk"]))
    ax.set_xlim(0, 103)  # room for a level's label at the curve's end
    ax.set_ylim(0, max(5.0, 100 * top * 1.15))  # headroom for the labels; a flat 0 stays visible
    ax.set_xlabel("products kept, most confident first (%)")
    ax.set_ylabel("risk (%)")
    ax.legend(loc="upper left", fontsize=8)


def _plot_confusions(ax: Any, pairs: Sequence[Sequence[Any]], letter: str = "(c)") -> None:
    from matplotlib.ticker import MaxNLocator

    pairs = list(pairs)[:PLOT_CONFUSIONS]
    ax.set_title(f"{letter} most frequent confusions (true → predicted)")
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
