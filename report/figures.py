"""Figures for the audit report, rendered to SVG text.

Figures are built on a bare ``matplotlib.figure.Figure`` with an explicit Agg canvas instead
of ``pyplot``: pyplot keeps every figure in a global registry (a leak in a long-lived process
unless closed) and picks a GUI backend from the environment. A bare Figure does neither, so
nothing needs closing and the backend is always Agg, whatever the caller configured.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

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
    display = ConfusionMatrixDisplay(confusion, display_labels=class_names)
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
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    return figure


def _figure_to_svg(figure: Figure) -> str:
    buffer = io.StringIO()
    # Text stays <text> (not glyph paths): it is searchable, selectable in the PDF and much
    # smaller. No date metadata, so identical inputs give byte-identical reports.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "report"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()
