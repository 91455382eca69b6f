"""Figures for the audit report, rendered to SVG text.

Each figure is sized to be read at about half an A4 page width (~105 mm) with 8-9 pt text,
uses the Okabe-Ito colour-blind-safe palette (line styles take over once its colours run
out) and writes its text as SVG <text>, escaped by matplotlib. Labels that come from users
(class names, layer names) go through `_plain` so a ``$`` is shown, not parsed as mathtext.

Figures are built on a bare ``matplotlib.figure.Figure`` with an explicit Agg canvas instead
of ``pyplot``: pyplot keeps every figure in a global registry (a leak in a long-lived process
unless closed) and picks a GUI backend from the environment. A bare Figure does neither, so
nothing needs closing and the backend is always Agg, whatever the caller configured.

Every word drawn here is a gettext message (`report.i18n._`) and every number in a label is
formatted for the report's language (`report.i18n.decimal`), read when the figure is built:
call these functions inside `i18n.use(language)`. Axis tick numbers keep matplotlib's choice
of digits and only take the language's decimal separator (`_localised_ticks`). What callers
pass in (class names, layer names, curve labels, titles) is drawn as given: callers translate
their own titles and labels.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Collection
from decimal import Decimal

import cv2
import matplotlib
import numpy as np
from babel.numbers import get_decimal_symbol
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter
from sklearn.metrics import ConfusionMatrixDisplay

from report import i18n
from report.i18n import _, percent
from report.measures import Calibration, RocCurve

# Labels longer than this are rotated so neighbouring x tick labels do not overlap.
_ROTATE_LABELS_LONGER_THAN = 8


def confusion_matrix_svg(confusion: np.ndarray, class_names: list[str]) -> str:
    """Return an SVG document of the confusion matrix (rows = true, columns = predicted)."""
    confusion = np.asarray(confusion)
    n_classes = len(class_names)
    if confusion.shape != (n_classes, n_classes):
        raise ValueError(
            f"confusion matrix has shape {confusion.shape}, expected ({n_classes}, {n_classes})"
        )
    # The figure is shown at roughly 9 cm wide; matplotlib's 10 pt default ends up too small.
    with matplotlib.rc_context({"font.size": 11}):
        figure = _confusion_matrix_figure(confusion.astype(int), class_names)
    return _figure_to_svg(figure)


def _confusion_matrix_figure(confusion: np.ndarray, class_names: list[str]) -> Figure:
    # Grow with the class count so the cell counts stay legible for larger label sets.
    side = min(3.2 + 0.55 * len(class_names), 9.0)
    figure = Figure(figsize=(side, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rotate = any(len(name) > _ROTATE_LABELS_LONGER_THAN for name in class_names)
    display = ConfusionMatrixDisplay(confusion, display_labels=[_plain(n) for n in class_names])
    # The counts are written in every cell, so a colour bar would only repeat them.
    display.plot(
        ax=axes,
        cmap="Blues",
        colorbar=False,
        values_format="d",
        text_kw={"fontsize": 13},
        xticks_rotation=45 if rotate else "horizontal",
    )
    if rotate:
        for label in axes.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    axes.set_xlabel(_("Predicted class"))
    axes.set_ylabel(_("True class"))
    return figure


def _figure_to_svg(figure: Figure) -> str:
    buffer = io.StringIO()
    # Text stays <text> (not glyph paths): it is searchable, selectable in the PDF and much
    # smaller. No date metadata, so identical inputs give byte-identical reports.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "report"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    figure.clear()  # drop the artists now rather than whenever the figure is collected
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Audit figures: ROC, reliability, deletion/insertion, sanity check, mean heatmaps
# ---------------------------------------------------------------------------------------------

# Okabe & Ito (2008) colour-blind-safe palette, without its yellow (too faint on white).
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_LINE_STYLES = ("-", "--", "-.", ":")
_REFERENCE = {"color": "0.55", "linewidth": 0.9}
# Half an A4 page width (105 mm) is about 4.1 in; figures are drawn at that size so 9 pt
# text stays 9 pt in the report.
_HALF_PAGE_WIDTH = 4.2
_RC = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# With more legend entries than this the legend moves below the axes instead of covering them.
_LEGEND_INSIDE_MAX = 5
# At 8 pt, two legend columns of labels up to this long fit across a half-page figure.
_LEGEND_TWO_COLUMNS_MAX_CHARS = 26


def roc_svg(curves: list[RocCurve]) -> str:
    """One-vs-rest ROC curve per class with its AUC in the legend, chance diagonal dashed.

    Classes without an AUC (no positives or no negatives) are listed in the legend as n/a.
    Beyond five entries the legend moves below the axes.
    """
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, 3.9)
        axes = figure.add_subplot()
        handles, labels = [], []
        for index, curve in enumerate(curves):
            name = _plain(curve.class_name)
            if curve.auc is None:
                handles.append(Line2D([], [], linestyle="none"))
                labels.append(_auc_label(name, None))
                continue
            (line,) = axes.plot(curve.fpr, curve.tpr, linewidth=1.6, **_line_style(index))
            handles.append(line)
            labels.append(_auc_label(name, curve.auc))
        (chance,) = axes.plot([0, 1], [0, 1], linestyle="--", **_REFERENCE)
        handles.append(chance)
        # TRANSLATORS: legend entry of the diagonal of a ROC plot (a classifier that guesses).
        labels.append(_("chance (AUC %(auc)s)") % {"auc": _decimal(0.5, 1)})
        axes.set_xlim(-0.01, 1.01)
        axes.set_ylim(-0.01, 1.01)
        axes.set_aspect("equal")
        axes.set_xlabel(_("False positive rate (1 − specificity)"))
        axes.set_ylabel(_("True positive rate (sensitivity)"))
        axes.set_title(_("ROC curves, one class vs the rest"))
        _localised_ticks(axes)
        _legend(figure, axes, handles, labels, inside="lower right")
    return _figure_to_svg(figure)


def reliability_svg(calibration: Calibration) -> str:
    """Reliability diagram: accuracy per confidence bin against the diagonal, ECE in the title.

    Each marker sits at the bin's mean confidence, so its vertical distance from the diagonal
    is exactly the gap the ECE averages. Below, a light histogram of images per bin shows
    which markers rest on many images and which on a handful.
    """
    edges = np.asarray(calibration.bin_edges, dtype=float)
    filled = np.asarray(calibration.bin_count) > 0
    ece = _not_available() if math.isnan(calibration.ece) else _decimal(calibration.ece, 3)
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, 4.3)
        top, bottom = figure.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        (diagonal,) = top.plot([0, 1], [0, 1], linestyle="--", **_REFERENCE)
        (observed,) = top.plot(
            calibration.bin_confidence[filled],
            calibration.bin_accuracy[filled],
            marker="o",
            markersize=4.5,
            linewidth=1.4,
            color=_PALETTE[0],
        )
        top.set_ylim(-0.02, 1.02)
        top.set_ylabel(_("Accuracy"))
        # TRANSLATORS: ECE is the expected calibration error, a metric name kept as is.
        top.set_title(_("Reliability diagram (ECE = %(ece)s)") % {"ece": ece})
        top.legend(
            [observed, diagonal],
            # TRANSLATORS: legend of a reliability diagram: the model's line, the diagonal.
            [_("model"), _("perfect calibration")],
            loc="upper left",
        )
        bottom.bar(
            edges[:-1],
            calibration.bin_count,
            width=np.diff(edges),
            align="edge",
            color="0.82",
            edgecolor="white",
            linewidth=0.6,
        )
        bottom.set_xlim(0, 1)
        bottom.set_ylabel(_("Images"))
        bottom.set_xlabel(_("Confidence (top-class probability)"))
        _localised_ticks(top, bottom)
    return _figure_to_svg(figure)


def deletion_insertion_svg(
    fractions: np.ndarray,
    curves: dict[str, np.ndarray],
    title: str,
    baselines: Collection[str] | None = None,
) -> str:
    """Mean class-score curves as pixels are removed or inserted (RISE deletion/insertion).

    One line per entry with its area under the curve (trapezoids over ``fractions``) in the
    legend, which sits below the axes. The entries named in ``baselines`` are drawn dashed;
    without it, those whose label contains "random" (English labels: a translated label needs
    ``baselines``). Labels and title are drawn as given: the caller translates them.
    """
    fractions = np.asarray(fractions, dtype=float)
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, 3.0)
        axes = figure.add_subplot()
        handles, labels = [], []
        for index, (label, curve) in enumerate(curves.items()):
            curve = np.asarray(curve, dtype=float)
            if curve.shape != fractions.shape:
                raise ValueError(
                    f"curve {label!r} has shape {curve.shape}, fractions {fractions.shape}"
                )
            style = _line_style(index)
            baseline = label in baselines if baselines is not None else "random" in label.lower()
            if baseline:
                style["linestyle"] = "--"
            (line,) = axes.plot(fractions, curve, linewidth=1.6, **style)
            handles.append(line)
            labels.append(_auc_label(_plain(label), float(np.trapezoid(curve, fractions))))
        axes.set_xlim(0, 1)
        axes.set_xlabel(_("Fraction of pixels removed / inserted"))
        axes.set_ylabel(_("Mean class score"))
        axes.set_title(_plain(title))
        _localised_ticks(axes)
        # Deletion and insertion curves cross the whole plot, so the legend goes below it.
        _legend(figure, axes, handles, labels, inside=None)
    return _figure_to_svg(figure)


def sanity_svg(stages: list[str], correlations: list[np.ndarray]) -> str:
    """Mean ± sd Spearman correlation with the original maps per randomisation stage.

    The model-parameter randomisation test (Adebayo et al. 2018): a map that depends on the
    learnt weights should decorrelate (towards the reference line at 0) as more layers are
    randomised. Stages where every correlation is undefined are left out of the line.
    """
    if len(stages) != len(correlations):
        raise ValueError(f"{len(stages)} stages but {len(correlations)} correlation arrays")
    means = np.full(len(stages), np.nan)
    spread = np.full(len(stages), np.nan)
    for index, values in enumerate(correlations):
        values = np.asarray(values, dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            means[index] = values.mean()
            spread[index] = values.std()
    known = np.isfinite(means)
    low = float(np.min(means[known] - spread[known])) if known.any() else 0.0
    high = float(np.max(means[known] + spread[known])) if known.any() else 1.0
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, 3.6)
        axes = figure.add_subplot()
        axes.axhline(0, **_REFERENCE)
        positions = np.arange(len(stages))
        axes.errorbar(
            positions,
            means,
            yerr=spread,
            marker="o",
            markersize=4.5,
            linewidth=1.4,
            capsize=3,
            color=_PALETTE[0],
        )
        axes.set_xticks(positions, [_plain(stage) for stage in stages])
        for label in axes.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        if len(stages) > 12:
            axes.tick_params(axis="x", labelsize=6.5)
        axes.set_xlim(-0.5, len(stages) - 0.5)
        axes.set_ylim(min(-0.2, low - 0.05), max(1.05, high + 0.03))
        # TRANSLATORS: x axis of the sanity check; its ticks are layer names, output first.
        axes.set_xlabel(_("Randomised up to"))
        axes.set_ylabel(_("Spearman correlation with\nthe trained model's maps"))
        axes.set_title(_("Model-parameter randomisation (mean ± sd)"))
        _localised_ticks(axes)
    return _figure_to_svg(figure)


def mean_heatmaps_svg(
    maps: dict[str, np.ndarray], title: str, background: dict[str, np.ndarray] | None = None
) -> str:
    """One small panel per key (e.g. class name -> mean (H, W) map), on one shared scale.

    Viridis with a single colour bar, so panels compare directly. With ``background``, the
    key's grey image (e.g. the class's mean X-ray) is drawn under a half-transparent map.
    """
    if not maps:
        raise ValueError("no maps to draw")
    background = background or {}
    arrays = {key: np.asarray(value, dtype=float) for key, value in maps.items()}
    for key, value in arrays.items():
        if value.ndim != 2:
            raise ValueError(f"map {key!r} must be (H, W), got shape {value.shape}")
    arrays = {key: _shrunk(value) for key, value in arrays.items()}
    finite = [value[np.isfinite(value)] for value in arrays.values()]
    vmin = min([0.0] + [float(v.min()) for v in finite if v.size])
    vmax = max([vmin] + [float(v.max()) for v in finite if v.size])
    if vmax <= vmin:
        vmax = vmin + 1.0
    columns = min(len(arrays), 4)
    rows = math.ceil(len(arrays) / columns)
    panel = (_HALF_PAGE_WIDTH - 0.7) / columns
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, rows * (panel + 0.3) + 0.35)
        grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
        image = None
        for axes, (key, value) in zip(grid, arrays.items(), strict=False):
            height, width = value.shape
            extent = (0, width, height, 0)
            alpha = 1.0
            if key in background:
                grey = np.asarray(background[key], dtype=float)
                if grey.ndim == 3:
                    grey = grey.mean(axis=-1)
                axes.imshow(grey, cmap="gray", extent=extent, rasterized=True)
                alpha = 0.55
            image = axes.imshow(
                value,
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                alpha=alpha,
                extent=extent,
                rasterized=True,
            )
            axes.set_title(textwrap.fill(_plain(key), 18), fontsize=8)
            axes.set_axis_off()
        for axes in grid[len(arrays):]:
            axes.set_axis_off()
        colorbar = figure.colorbar(image, ax=list(grid), shrink=0.9, aspect=25 * rows)
        colorbar.set_label(_("Mean map value"))
        colorbar.formatter = _LocalisedFormatter()
        colorbar.outline.set_visible(False)
        figure.suptitle(_plain(title), fontsize=9.5)
    return _figure_to_svg(figure)


def hidden_films_svg(examples, class_names, titles: dict[str, str]) -> str:
    """One row per film: as the model saw it, then with each region hidden
    (`checks.HiddenExample`), each panel titled with its column and the predicted class and
    probability. Every film's panels share its own grey scale, so a fill is seen as the
    model saw it, neither brighter nor darker."""
    if not examples:
        raise ValueError("no films to draw")
    conditions = list(examples[0].hidden)
    columns = ["before", *conditions]
    panel = (_HALF_PAGE_WIDTH - 0.2) / len(columns)
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH, len(examples) * (panel + 0.45) + 0.1)
        grid = figure.subplots(len(examples), len(columns), squeeze=False)
        for row, example in zip(grid, examples, strict=True):
            films = {"before": example.model_input, **example.hidden}
            probabilities = {"before": example.probabilities, **example.hidden_probabilities}
            low, high = _grey_range(example.model_input)
            for axes, column in zip(row, columns, strict=True):
                grey = _shrunk(np.asarray(films[column], dtype=float).mean(axis=-1))
                axes.imshow(grey, cmap="gray", vmin=low, vmax=high, rasterized=True)
                predicted = int(np.argmax(probabilities[column]))
                axes.set_title(
                    f"{_plain(titles[column])}\n"
                    f"{_plain(textwrap.shorten(str(class_names[predicted]), 18))} "
                    f"{percent(float(probabilities[column][predicted]), 0)}", fontsize=7.5)
                axes.set_axis_off()
    return _figure_to_svg(figure)


def _grey_range(model_input: np.ndarray) -> tuple[float, float]:
    grey = np.asarray(model_input, dtype=float).mean(axis=-1)
    low, high = float(grey.min()), float(grey.max())
    return low, (high if high > low else low + 1.0)


# Mean-map panels are about an inch wide: a larger raster only costs drawing time and bytes.
_PANEL_PIXELS = 128


def _shrunk(value: np.ndarray) -> np.ndarray:
    """Area-averaged down to at most _PANEL_PIXELS on the longer side (NaN-free maps)."""
    scale = _PANEL_PIXELS / max(value.shape)
    if scale >= 1 or not np.isfinite(value).all():
        return value
    size = (max(1, round(value.shape[1] * scale)), max(1, round(value.shape[0] * scale)))
    return cv2.resize(value, size, interpolation=cv2.INTER_AREA)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _line_style(index: int) -> dict:
    """Okabe-Ito colours first; once they run out, the same colours with other dashes."""
    return {
        "color": _PALETTE[index % len(_PALETTE)],
        "linestyle": _LINE_STYLES[(index // len(_PALETTE)) % len(_LINE_STYLES)],
    }


def _legend(figure: Figure, axes, handles: list, labels: list[str], inside: str | None) -> None:
    """Legend inside the axes at ``inside`` when short, else below them (also if None).

    A legend below the axes makes the figure taller by its height, so the axes keep theirs.
    """
    # Explicit handles and labels: a label starting with "_" would otherwise be dropped.
    if inside is not None and len(labels) <= _LEGEND_INSIDE_MAX:
        axes.legend(handles, labels, loc=inside)
        return
    # Two columns only when two labels fit side by side across the figure.
    columns = 2 if max(len(label) for label in labels) <= _LEGEND_TWO_COLUMNS_MAX_CHARS else 1
    figure.legend(handles, labels, loc="outside lower center", ncols=columns)
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + 0.15 + 0.2 * math.ceil(len(labels) / columns))


def _plain(text) -> str:
    """Show ``text`` literally: escape the dollar signs matplotlib would parse as mathtext."""
    return str(text).replace("$", r"\$")


def _not_available() -> str:
    # TRANSLATORS: in place of a number that cannot be computed (e.g. an AUC without positives).
    return _("n/a")


def _decimal(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals in the report's language (`i18n.decimal`).

    Rounded from the float's exact binary value, as ``f"{value:.3f}"`` does, so English labels
    stay as they were (Babel rounds a float's shortest repr half-even: 0.0125 would be "0.012"
    where the f-string gives "0.013").
    """
    return i18n.decimal(Decimal(value), digits)


def _auc_label(name: str, auc: float | None) -> str:
    """A legend entry: "Normal (AUC 0.912)", "absent (AUC n/a)"."""
    shown = _not_available() if auc is None else _decimal(auc, 3)
    # TRANSLATORS: a legend entry; label is a class or curve name, AUC a metric name.
    return _("%(label)s (AUC %(auc)s)") % {"label": name, "auc": shown}


class _LocalisedFormatter(ScalarFormatter):
    """Matplotlib's tick numbers (its digits, its minus sign) with the language's decimal
    separator: "0.25" in English, "0,25" in Brazilian Portuguese. The separator is read when
    the formatter is made, i.e. inside the caller's `i18n.use`."""

    def __init__(self) -> None:
        super().__init__()
        self._separator = get_decimal_symbol(i18n.locale_name(i18n.current()))

    def __call__(self, x, pos=None) -> str:
        return self._localised(super().__call__(x, pos))

    def get_offset(self) -> str:
        return self._localised(super().get_offset())

    def _localised(self, text: str) -> str:
        return text if self._separator == "." else text.replace(".", self._separator)


def _localised_ticks(*axes_list) -> None:
    """Give numeric (linear) axes tick labels with the language's decimal separator.

    Only matplotlib's own ScalarFormatter is replaced: class-name ticks (fixed labels) and
    log axes keep theirs. Call after the ticks and scales are set.
    """
    for axes in axes_list:
        for axis in (axes.xaxis, axes.yaxis):
            if type(axis.get_major_formatter()) is ScalarFormatter:
                axis.set_major_formatter(_LocalisedFormatter())


def agreement_svg(class_names: list[str], spearman: list[np.ndarray],
                  iou: list[np.ndarray]) -> str:
    """Per class, the distribution over images of two agreements between two models' maps of
    the same image: Spearman rank correlation (left) and IoU of their top regions (right).
    Box: quartiles; whiskers: 1.5 IQR; NaN (a flat map) left out."""
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH * 2, 3.2)
        panels = figure.subplots(1, 2, sharey=True)
        for axes, values, title, low in (
            (panels[0], spearman, _("Spearman rank correlation of the maps"), -1.0),
            # TRANSLATORS: IoU is intersection over union; share is e.g. "15%".
            (panels[1], iou, _("IoU of the top-%(share)s regions") % {"share": percent(0.15, 0)},
             0.0),
        ):
            finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in values]
            positions = np.arange(len(class_names))
            shown = [v if v.size else np.array([np.nan]) for v in finite]
            axes.boxplot(shown, positions=positions, vert=False, widths=0.5,
                         medianprops={"color": _PALETTE[0], "linewidth": 1.6},
                         flierprops={"markersize": 2.5})
            axes.set_yticks(positions, [_plain(name) for name in class_names])
            axes.set_xlim(low - 0.05, 1.05)
            axes.axvline(0 if low < 0 else 1, **_REFERENCE)
            axes.set_title(title)
        panels[0].set_ylabel(_("True class"))
        _localised_ticks(*panels)
    return _figure_to_svg(figure)


def methods_svg(names: list[str], cost_ms: list[float], road_gap: list[float],
                baseline: list[bool]) -> str:
    """Each method's ROAD gap (faithfulness, higher is better) against its cost per image
    (log scale): the methods worth using sit up and to the left. Baselines are grey squares,
    and the best baseline's gap is a dashed line a method must clear."""
    with matplotlib.rc_context(_RC):
        figure = _new_figure(_HALF_PAGE_WIDTH * 1.6, 3.2)
        axes = figure.add_subplot()
        for index, (name, x, y, is_baseline) in enumerate(
                zip(names, cost_ms, road_gap, baseline, strict=True)):
            style = ({"color": _REFERENCE["color"], "marker": "s"} if is_baseline
                     else {"color": _PALETTE[index % len(_PALETTE)], "marker": "o"})
            axes.scatter([x], [y], s=28, zorder=3, **style)
            axes.annotate(_plain(name), (x, y), xytext=(4, 3), textcoords="offset points",
                          fontsize=7.5, color=style["color"])
        floors = [y for y, is_baseline in zip(road_gap, baseline, strict=True) if is_baseline]
        if floors:
            axes.axhline(max(floors), linestyle="--", **_REFERENCE)
        axes.set_xscale("log")
        axes.set_xlabel(_("Cost per image (ms, log scale)"))
        # TRANSLATORS: ROAD, LeRF, MoRF and AUC are metric names, kept as they are.
        axes.set_ylabel(_("ROAD gap (LeRF - MoRF AUC)"))
        axes.set_title(_("Faithfulness against cost"))
        _localised_ticks(axes)
    return _figure_to_svg(figure)
