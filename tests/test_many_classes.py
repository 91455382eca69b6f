"""Models with many classes: per-class tables and figures are bounded (measures.
MAX_CLASSES_SHOWN), the rest are summarised, and nothing costs classes x classes per image."""

from __future__ import annotations

import re

import keras
import mlflow
import numpy as np
import pytest
from keras import layers

import report
from report import measures, paired
from report.measures import MAX_CLASSES_SHOWN
from tests.conftest import synthetic_films

SIZE = 32
MANY = 1000


def _classifier(n_classes: int, name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(4, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(n_classes, activation="softmax"),
    ], name=name)


def _names(n_classes: int) -> list[str]:
    return [f"class_{index:04d}" for index in range(n_classes)]


def _films(names: list[str]):
    """Eight films: three of the last class, two of names[5], one each of three others, so
    the support order is known."""
    images, _ = synthetic_films(8, SIZE)
    chosen = [-1, -1, -1, 5, 5, 1, 2, 3]
    return images, [names[index] for index in chosen]


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """A 1,000-class model saved as an MLflow model folder, audited on eight films, its
    report written to HTML and PDF."""
    folder = tmp_path_factory.mktemp("many")
    names = _names(MANY)
    mlflow.keras.save_model(_classifier(MANY, "thousand"), str(folder / "model"),
                            save_exported_model=False, metadata={
                                "class_names": names,
                                "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb",
                                                  "scale": 1 / 255}})
    audit = report.audit(str(folder / "model"), _films(names), output_dir=folder / "out")
    html = audit.to_html(folder / "report.html")
    pdf = audit.to_pdf(folder / "report.pdf")
    return audit, html.read_text(encoding="utf-8"), pdf


def _in_memory_report(n_classes: int, tmp_path) -> tuple[report.Audit, str]:
    names = _names(n_classes)
    # quality=off: the trust sections' bounds are checked on the 1,000-class model.
    audit = report.audit(_classifier(n_classes, f"c{n_classes}"), _films(names),
                         class_names=names, quality="off", output_dir=tmp_path)
    return audit, audit.to_html(tmp_path / "report.html").read_text(encoding="utf-8")


def _per_class_rows(html: str) -> list[str]:
    table = html.split('per-class">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<th scope="row">(.*?)</th>', table, flags=re.S)


def _grid_titles(html: str) -> list[str]:
    return re.findall(r'<section class="grid">\s*<h3>(.*?)</h3>', html, flags=re.S)


def test_a_thousand_class_model_finishes_with_its_report(thousand):
    audit, html, pdf = thousand
    assert pdf.stat().st_size > 0 and html
    assert audit.context.n_images == 8


def test_the_report_names_the_classes_with_most_images_and_summarises_the_rest(thousand):
    _, html, _ = thousand
    rows = _per_class_rows(html)
    # The classes with images first, most images first; then those without, by index.
    assert rows[:5] == ["class_0999", "class_0005", "class_0001", "class_0002", "class_0003"]
    assert len(rows) == MAX_CLASSES_SHOWN + 1
    hidden = MANY - MAX_CLASSES_SHOWN
    assert rows[-1] == f"{hidden} other classes"
    assert f"the other {hidden} classes" in html
    assert f"This model has {MANY} classes" in html


def test_per_class_parts_of_the_report_are_bounded(thousand):
    audit, html, _ = thousand
    assert len(_grid_titles(html)) <= MAX_CLASSES_SHOWN
    for prefix in ("precision.", "recall.", "f1.", "roc_auc.class"):
        assert len([k for k in audit.metrics if k.startswith(prefix)]) <= MAX_CLASSES_SHOWN
    assert audit.metrics["classes.left_out"] == MANY - MAX_CLASSES_SHOWN
    # Each table of the trust sections: at most the shown classes, an "All" row and a
    # pooled row.
    for section in audit.sections:
        for table in section.tables:
            assert len(table.rows) <= MAX_CLASSES_SHOWN + 2, section.key
    roc = next(f for f in audit.figures if f.title.startswith("ROC"))
    assert len(re.findall(r"\(AUC ", roc.svg)) <= MAX_CLASSES_SHOWN + 1


def test_confusion_matrix_pools_the_classes_left_out(thousand):
    audit, html, _ = thousand
    from report.render import shown_confusion

    names, confusion = shown_confusion(audit.context)
    assert len(names) == MAX_CLASSES_SHOWN + 1
    assert confusion.shape == (MAX_CLASSES_SHOWN + 1, MAX_CLASSES_SHOWN + 1)
    assert confusion.sum() == audit.context.n_images


def test_at_the_threshold_every_class_is_shown_as_before(tmp_path):
    audit, html = _in_memory_report(MAX_CLASSES_SHOWN, tmp_path)
    # Model order, every class, and no word of classes left out.
    assert _per_class_rows(html) == _names(MAX_CLASSES_SHOWN)
    assert len(_grid_titles(html)) == MAX_CLASSES_SHOWN
    assert "other classes" not in html and "classes.left_out" not in audit.metrics
    assert len([k for k in audit.metrics if k.startswith("precision.")]) == MAX_CLASSES_SHOWN


def test_one_class_past_the_threshold_is_summarised(tmp_path):
    audit, html = _in_memory_report(MAX_CLASSES_SHOWN + 1, tmp_path)
    rows = _per_class_rows(html)
    assert len(rows) == MAX_CLASSES_SHOWN + 1 and rows[-1] == "1 other class"
    assert "the other class" in html
    assert audit.metrics["classes.left_out"] == 1


@pytest.mark.parametrize(("support", "predicted", "expected"), [
    ([3, 0, 5], [0, 0, 0], [0, 1, 2]),  # at most the threshold: all, in model order
    ([0] * 30, [0] * 30, list(range(MAX_CLASSES_SHOWN))),  # no images: by index
    ([1] * 25 + [4], [0] * 26, [25, *range(MAX_CLASSES_SHOWN - 1)]),
    ([0] * 24 + [2, 2], [0] * 23 + [7, 0, 0], [24, 25, 23, *range(MAX_CLASSES_SHOWN - 3)]),
])
def test_shown_classes_are_the_most_supported_then_the_most_predicted(support, predicted,
                                                                      expected):
    shown = measures.shown_classes(np.array(support), np.array(predicted))
    assert shown.indices == expected
    assert shown.left_out == len(support) - len(expected)
    assert shown.left_out_support == sum(support) - sum(support[i] for i in expected)


@pytest.mark.parametrize("n_classes", [3, 400, 5000])
def test_per_class_bootstrap_costs_classes_not_classes_squared(n_classes):
    rng = np.random.default_rng(1)
    y_true, pred_a, pred_b = (rng.integers(0, 3, 12) for _ in range(3))
    result = paired.per_class_bootstrap(y_true, pred_a, pred_b, n_classes, resamples=500)
    assert len(result["f1"]) == n_classes
    small = paired.per_class_bootstrap(y_true, pred_a, pred_b, 3, resamples=500)
    # The classes with images get the same intervals; the others are zero everywhere.
    assert result["f1"][:3] == small["f1"]
    assert all(i == paired.Interval(0.0, 0.0, 0.0) for i in result["precision"][3:])
    macro = paired.paired_bootstrap(y_true, pred_a, pred_b, paired.macro_f1(n_classes),
                                    resamples=500)
    assert np.isfinite(macro.low) and macro.low <= macro.estimate <= macro.high


def test_the_comparison_report_of_many_classes_is_bounded(tmp_path):
    n_classes = 3 * MAX_CLASSES_SHOWN
    names = _names(n_classes)
    baseline = _classifier(n_classes, "baseline")
    candidate = _classifier(n_classes, "candidate")
    comparison = report.compare(baseline, candidate, _films(names), class_names=names,
                                quality="off", output_dir=tmp_path)
    html = comparison.to_html(tmp_path / "compare.html").read_text(encoding="utf-8")
    per_class = html.split("<h3>Per class</h3>", 1)[1].split("</table>", 1)[0]
    named = re.findall(r'<th scope="row">(class_\d+)</th>', per_class)
    assert named[:2] == ["class_0059", "class_0005"]
    assert len(named) == MAX_CLASSES_SHOWN
    hidden = n_classes - MAX_CLASSES_SHOWN
    assert f"{hidden} other classes" in per_class
    # Both confusion matrices: the shown classes and one pooled label.
    for svg in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)[:2]:
        import base64

        text = base64.b64decode(svg).decode()
        assert f"{hidden} other classes" in text
        assert "class_0059" in text and len(re.findall(r"class_\d{4}", text)) <= 2 * (
            MAX_CLASSES_SHOWN + 1)


def test_classes_left_out_with_images_are_pooled_and_still_counted(tmp_path):
    n_classes, n_images = 30, MAX_CLASSES_SHOWN + 6
    names = _names(n_classes)
    images, _ = synthetic_films(n_images, SIZE)
    # One image per class for the first 26 classes; class_0000 gets a second one (the
    # last film), so it is the best-supported class.
    labels = [names[i] for i in range(n_images - 1)] + [names[0]]
    audit = report.audit(_classifier(n_classes, "pooled"), (images, labels),
                         class_names=names, output_dir=tmp_path)
    html = audit.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert _per_class_rows(html)[0] == "class_0000"
    # 25 classes have images; 20 are shown, so 5 with one image each are pooled.
    shortcut = next(table for table in next(s for s in audit.sections if s.key == "shortcuts")
                    .tables if "Outside lungs" in table.headers)  # the location table
    assert [row[0] for row in shortcut.rows][-2:] == ["5 other classes", "random maps"]
    assert len(shortcut.rows) == MAX_CLASSES_SHOWN + 2
    data = audit.context.data
    pooled = [row for row in data.rows if row[1] == "5 other classes"]
    assert len(pooled) == 1 and pooled[0][2:5] == ["5", "5", "0"]
    assert sum(int(row[2]) for row in data.rows) == n_images  # every file still counted
    assert "The heatmaps of the other 10 classes (5 images)" in html
