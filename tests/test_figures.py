"""Audit figures: valid SVG, the expected text, hostile names kept as text, no pyplot leaks."""

from __future__ import annotations

import gettext
import re
import xml.etree.ElementTree as ET

import matplotlib.pyplot as plt
import numpy as np
import pytest

from report import i18n
from report.figures import (
    confusion_matrix_svg,
    deletion_insertion_svg,
    mean_heatmaps_svg,
    reliability_svg,
    roc_svg,
    sanity_svg,
)
from report.measures import calibration, estimated_lung_fields, roc_curves

HOSTILE = "<b>x</b>"
SVG_NS = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> list[str]:
    """Parse the SVG (fails on invalid XML) and return the content of its <text> elements."""
    root = ET.fromstring(svg.encode())
    assert root.tag == f"{SVG_NS}svg"
    return ["".join(node.itertext()) for node in root.iter(f"{SVG_NS}text")]


def _has(texts: list[str], fragment: str) -> bool:
    return any(fragment in text for text in texts)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3))
    logits[np.arange(120), y_true] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probabilities


@pytest.fixture(autouse=True)
def no_pyplot_figures_left():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def test_roc_svg_lists_classes_with_auc(predictions):
    y_true, probabilities = predictions
    names = ["COVID-19", "Normal", HOSTILE, "absent"]
    curves = roc_curves(y_true, np.c_[probabilities, np.zeros(120)], names)

    texts = _texts(roc_svg(curves))

    for curve in curves[:3]:
        assert _has(texts, f"{curve.class_name} (AUC {curve.auc:.3f})")
    assert _has(texts, "absent (AUC n/a)")
    assert _has(texts, "chance")
    assert _has(texts, "False positive rate") and _has(texts, "True positive rate")


def test_roc_svg_with_many_classes_puts_the_legend_below(predictions):
    y_true, probabilities = predictions
    names = [f"_finding {i}" for i in range(9)]  # a leading "_" would hide a legend entry
    scores = np.c_[probabilities, np.zeros((120, 6))]

    texts = _texts(roc_svg(roc_curves(y_true, scores, names)))

    assert all(_has(texts, f"{name} (AUC") for name in names)


def test_reliability_svg_has_ece_in_the_title(predictions):
    y_true, probabilities = predictions
    result = calibration(y_true, probabilities)

    texts = _texts(reliability_svg(result))

    assert _has(texts, f"ECE = {result.ece:.3f}")
    assert _has(texts, "Accuracy") and _has(texts, "Confidence") and _has(texts, "Images")


def test_reliability_svg_without_images():
    texts = _texts(reliability_svg(calibration(np.array([], dtype=int), np.zeros((0, 2)))))
    assert _has(texts, "ECE = n/a")


def test_deletion_insertion_svg_labels_and_auc():
    fractions = np.linspace(0, 1, 11)
    curves = {"Grad-CAM deletion": 1 - fractions, "random deletion": np.full(11, 0.8),
              HOSTILE: fractions}

    texts = _texts(deletion_insertion_svg(fractions, curves, "Deletion <game>"))

    assert _has(texts, "Grad-CAM deletion (AUC 0.500)")
    assert _has(texts, "random deletion (AUC 0.800)")
    assert _has(texts, f"{HOSTILE} (AUC 0.500)")
    assert _has(texts, "Deletion <game>")
    assert _has(texts, "Fraction of pixels removed / inserted")


def test_deletion_insertion_svg_rejects_mismatched_curves():
    with pytest.raises(ValueError, match="shape"):
        deletion_insertion_svg(np.linspace(0, 1, 5), {"a": np.ones(4)}, "t")


def test_sanity_svg_stages_and_axis_label():
    stages = ["logits", "block5_conv3", HOSTILE]
    correlations = [np.array([0.9, 0.95]), np.array([0.4, 0.5, np.nan]), np.array([np.nan])]

    texts = _texts(sanity_svg(stages, correlations))

    assert all(_has(texts, stage) for stage in stages)
    assert _has(texts, "Spearman")


def test_sanity_svg_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="stages"):
        sanity_svg(["a", "b"], [np.ones(3)])


def test_mean_heatmaps_svg_panels_and_background():
    lungs = estimated_lung_fields((64, 64)).astype(float)
    maps = {"COVID-19": lungs * 0.5, "Normal": lungs, HOSTILE: 1 - lungs}

    svg = mean_heatmaps_svg(maps, "Mean Grad-CAM", background={"Normal": lungs})
    texts = _texts(svg)

    assert all(_has(texts, name) for name in maps)
    assert _has(texts, "Mean Grad-CAM")
    # The panels are embedded as raster images (small files), not as thousands of paths.
    assert svg.count("<image") == len(maps) + 1  # + the background under "Normal"
    assert len(svg) < 200_000


def test_mean_heatmaps_svg_all_zero_maps_still_draw():
    texts = _texts(mean_heatmaps_svg({"a": np.zeros((8, 8))}, "zeros"))
    assert _has(texts, "a")


def test_hostile_names_stay_text_in_every_figure(predictions):
    y_true, probabilities = predictions
    names = ["ok", "cost $5$", HOSTILE]
    svgs = [
        roc_svg(roc_curves(y_true, probabilities, names)),
        deletion_insertion_svg(np.array([0.0, 1.0]), {n: np.ones(2) for n in names}, HOSTILE),
        sanity_svg(names, [np.ones(2)] * 3),
        mean_heatmaps_svg({n: np.ones((4, 4)) for n in names}, HOSTILE),
        confusion_matrix_svg(np.eye(3, dtype=int), names),
    ]
    for svg in svgs:
        texts = _texts(svg)
        assert _has(texts, HOSTILE)
        assert _has(texts, "cost $5$")  # shown literally, not parsed as mathtext
        assert "<b>" not in svg and "&lt;b&gt;" in svg
        assert not re.search(r"<script", svg)


def test_deletion_insertion_svg_speaks_the_report_language(monkeypatch):
    fractions = np.linspace(0, 1, 11)
    curves = {"heatmap order": 1 - fractions, "random order": np.full(11, 0.8)}
    ticks = ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]

    english = deletion_insertion_svg(fractions, curves, "Deletion")

    # Exactly the text the figure had before it was translatable.
    assert _texts(english) == [*ticks, "Fraction of pixels removed / inserted", *ticks,
                               "Mean class score", "Deletion", "heatmap order (AUC 0.500)",
                               "random order (AUC 0.800)"]

    class Portuguese(gettext.NullTranslations):
        def gettext(self, message):
            return {"Mean class score": "Escore médio da classe"}.get(message, message)

    monkeypatch.setattr(i18n, "translations", lambda language: Portuguese())
    portuguese_curves = {"ordem do mapa": curves["heatmap order"],
                         "ordem aleatória": curves["random order"]}
    with i18n.use("pt-BR"):
        svg = deletion_insertion_svg(fractions, portuguese_curves, "Deleção",
                                     baselines={"ordem aleatória"})
    texts = _texts(svg)

    assert _has(texts, "Escore médio da classe") and not _has(texts, "Mean class score")
    assert _has(texts, "ordem do mapa (AUC 0,500)") and _has(texts, "ordem aleatória (AUC 0,800)")
    assert "0,2" in texts and "0.2" not in texts  # tick labels take the decimal comma
    # The baseline named in `baselines` is still dashed (line and legend handle).
    assert svg.count("stroke-dasharray") == english.count("stroke-dasharray") == 2
