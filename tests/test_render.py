"""Tests for the HTML/PDF report: self-contained, escaped, disclaimer on every PDF page."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from report.figures import confusion_matrix_svg
from report.render import (
    DISCLAIMER,
    DISCLAIMER_PT,
    ClassGrid,
    GridItem,
    ReportContext,
    render_html,
    write_pdf,
    write_report,
)

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_ID = "<img src=x onerror=alert(1)>"
CLASS_NAMES = ["COVID-19", "Normal", HOSTILE_CLASS]
ASSUMPTION = "Input size 224x224 assumed: the model signature has no image shape."

# Attributes through which a page can make the browser load something.
URL_ATTRIBUTES = {
    "src",
    "href",
    "srcset",
    "poster",
    "data",
    "action",
    "formaction",
    "background",
    "xlink:href",
    "cite",
    "longdesc",
    "manifest",
    "ping",
}
# Elements that load or run something outside the page, whatever their attributes.
FORBIDDEN_TAGS = {"script", "link", "iframe", "frame", "object", "embed", "base", "applet"}
CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)


# ---------- helpers ----------


def _png(color: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _item(image_id: str, true: str, predicted: str, confidence: float) -> GridItem:
    color = (200, 40, 40) if true != predicted else (40, 160, 60)
    return GridItem(image_id, true, predicted, confidence, true == predicted, _png(color))


class _PageScanner(HTMLParser):
    """Collects everything in a page that the sandboxed iframe would have to load or run."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []  # (tag, attributes)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        self.tags.append(tag)
        for name, value in attrs:
            self.attributes.append((tag, name, value or ""))
            if name == "style":
                self.css.append(value or "")
        self._in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.css.append(data)


def _scan(html: str) -> _PageScanner:
    scanner = _PageScanner()
    scanner.feed(html)
    scanner.close()
    return scanner


def _is_inline(reference: str) -> bool:
    reference = reference.strip()
    return reference.lower().startswith("data:") or reference.startswith("#")


def unloadable_references(html: str) -> list[str]:
    """Everything that a sandboxed, no-network iframe could not load (empty when self-contained)."""
    scanner = _scan(html)
    problems = [f"<{tag}>" for tag in scanner.tags if tag in FORBIDDEN_TAGS]
    problems += [
        f"{tag} {name}={value!r}"
        for tag, name, value in scanner.attributes
        if name in URL_ATTRIBUTES and not _is_inline(value)
    ]
    for css in scanner.css:
        problems += [
            f"url({match[2]})" for match in CSS_URL.finditer(css) if not _is_inline(match[2])
        ]
        problems += ["@import"] if "@import" in css.lower() else []
    return problems


class _TileCollector(HTMLParser):
    """Collects (css classes, visible text) of every <figure class="tile ...">."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tiles: list[tuple[set[str], str]] = []
        self._current: tuple[set[str], list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        if tag == "figure" and "tile" in classes:
            self._current = (classes, [])

    def handle_endtag(self, tag):
        if tag == "figure" and self._current is not None:
            classes, text = self._current
            self.tiles.append((classes, " ".join("".join(text).split())))
            self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self._current[1].append(data)


def _tiles(html: str) -> list[tuple[set[str], str]]:
    collector = _TileCollector()
    collector.feed(html)
    return collector.tiles


def _normalised(text: str) -> str:
    return " ".join(text.split())


# ---------- fixtures ----------


@pytest.fixture(scope="module")
def context() -> ReportContext:
    covid, normal, hostile = CLASS_NAMES
    grids = [
        ClassGrid(
            covid,
            [
                _item("covid-17.png", covid, normal, 0.81),
                _item("covid-02.png", covid, covid, 0.97),
                _item("covid-05.png", covid, covid, 0.66),
                _item("covid-09.png", covid, covid, 0.93),
            ],
            total=40,
            misclassified=3,
        ),
        ClassGrid(
            normal,
            [
                _item("normal-01.png", normal, normal, 0.88),
                _item("normal-04.png", normal, normal, 0.74),
            ],
            total=2,
            misclassified=0,
        ),
        ClassGrid(hostile, [_item(HOSTILE_ID, hostile, hostile, 0.55)], total=1, misclassified=0),
    ]
    return ReportContext(
        model_name="cxr-densenet",
        model_version="3",
        model_alias="champion",
        model_source="models:/m-abc123",
        data_source="synthetic (600 images, seed 0), test split",
        data_fingerprint="0123456789abcdef" * 4,
        run_id="f00dfeedcafe4242",
        created="2025-01-02T03:04:05+00:00",
        settings={"method": "Grad-CAM", "target layer": "conv5_block16_concat", "alpha": "0.4"},
        assumptions=[ASSUMPTION],
        class_names=CLASS_NAMES,
        n_images=43,
        accuracy=40 / 43,
        per_class=[
            {"class": name, "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": support}
            for name, support in zip(CLASS_NAMES, [40, 2, 1], strict=True)
        ],
        confusion=np.array([[37, 3, 0], [0, 2, 0], [0, 0, 1]]),
        grids=grids,
        skipped=[("data/test/broken.png", "cannot identify image file")],
        elapsed_seconds=12.5,
    )


@pytest.fixture(scope="module")
def html(context) -> str:
    return render_html(context)


@pytest.fixture(scope="module")
def pdf_pages(context, tmp_path_factory) -> list[str]:
    html_path, pdf_path = write_report(context, tmp_path_factory.mktemp("report"))
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert pdf_path.read_bytes().startswith(b"%PDF")
    return [page.extract_text() or "" for page in PdfReader(pdf_path).pages]


# ---------- (1) self-contained ----------


def test_html_has_no_reference_the_sandboxed_iframe_cannot_load(html):
    assert unloadable_references(html) == []
    assert "<img" in html and 'src="data:image/png;base64,' in html
    assert 'src="data:image/svg+xml;base64,' in html


@pytest.mark.parametrize(
    "bad_html",
    [
        '<img src="overlay.png">',
        '<a href="https://example.org">x</a>',
        "<link rel=stylesheet href=data:text/css,x>",
        "<script>1</script>",
        "<style>body { background: url('https://example.org/x.png') }</style>",
        '<div style="background:url(x.png)"></div>',
        "<style>@import 'data:text/css,';</style>",
        '<img srcset="a.png 2x">',
    ],
)
def test_reference_checker_catches_external_references(bad_html):
    # Guards the guard: the self-containment test is worthless if the checker sees nothing.
    assert unloadable_references(f"<html><body>{bad_html}</body></html>") != []


def test_pdf_renderer_fetches_nothing_but_data_uris(tmp_path):
    png_file = tmp_path / "local.png"
    png_file.write_bytes(_png((0, 0, 255)))
    data_uri = "data:image/png;base64," + base64.b64encode(png_file.read_bytes()).decode()

    def image_count(src: str, name: str) -> int:
        pdf = write_pdf(f'<html><body><img src="{src}"></body></html>', tmp_path / name)
        return len(PdfReader(pdf).pages[0].images)

    assert image_count(data_uri, "inline.pdf") == 1
    assert image_count(png_file.as_uri(), "local.pdf") == 0


# ---------- (2) content security policy ----------


def test_csp_meta_tag_is_present(html):
    policies = [
        attributes.get("content")
        for tag, attributes in _scan(html).elements
        if tag == "meta" and attributes.get("http-equiv", "").lower() == "content-security-policy"
    ]
    assert policies == ["default-src 'none'; style-src 'unsafe-inline'; img-src data:"]
    # A CSP meta tag only binds what comes after it, so it must precede the <style>.
    assert html.index("Content-Security-Policy") < html.index("<style>")


# ---------- (3) escaping ----------


def test_user_supplied_text_is_escaped(html):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html.lower()
    assert "<img src=x" not in html

    scanner = _scan(html)
    assert "script" not in scanner.tags
    event_handlers = [name for _, name, _ in scanner.attributes if name.startswith("on")]
    assert event_handlers == []


def test_hostile_names_survive_as_visible_text(html):
    # Escaped, not dropped: the reviewer must still see which class/image it is.
    visible_text = " ".join(text for _, text in _tiles(html))
    assert HOSTILE_ID in visible_text
    assert f"true: {HOSTILE_CLASS}" in visible_text


# ---------- (4) PDF ----------


def test_pdf_has_disclaimer_on_every_page(pdf_pages):
    # The grids start on a new page, so this is always a multi-page check.
    assert len(pdf_pages) >= 2
    for number, text in enumerate(pdf_pages, start=1):
        assert DISCLAIMER in _normalised(text), f"page {number} lacks the disclaimer"
        assert f"page {number} of {len(pdf_pages)}" in _normalised(text)


def test_pdf_contains_model_and_class_names(pdf_pages):
    text = _normalised(" ".join(pdf_pages))
    assert "Explanation audit report" in text
    assert "cxr-densenet" in text
    assert _normalised(DISCLAIMER_PT) in text
    for name in CLASS_NAMES:
        assert name in text


# ---------- (5) assumptions ----------


def test_assumptions_notice_lists_assumptions(html):
    assert "This model has no report metadata; assumed:" in html
    assert ASSUMPTION in html
    assert 'class="notice"' in html


def test_no_assumptions_notice_without_assumptions(context):
    html = render_html(dataclasses.replace(context, assumptions=[]))
    assert "no report metadata" not in html
    assert 'class="notice"' not in html


# ---------- (6) grids ----------


def test_misclassified_tiles_are_marked(html, context):
    tiles = _tiles(html)
    items = [item for grid in context.grids for item in grid.items]
    assert len(tiles) == len(items)
    for (classes, text), item in zip(tiles, items, strict=True):
        assert item.image_id in text
        if item.correct:
            assert "tile--correct" in classes and "tile--misclassified" not in classes
            assert "misclassified" not in text
        else:
            assert "tile--misclassified" in classes
            assert "misclassified" in text
        assert f"true: {item.true_label}" in text
        assert f"pred: {item.predicted_label} ({item.confidence:.0%})" in text


def test_grid_heading_counts_and_metadata_shown(html):
    text = _normalised(re.sub(r"<[^>]+>", " ", html))
    assert "True class: COVID-19 — 40 images, 3 misclassified (showing 4)" in text
    assert "True class: Normal — 2 images, 0 misclassified (showing 2)" in text
    assert "data/test/broken.png" in text and "cannot identify image file" in text
    assert "models:/m-abc123" in text and "f00dfeedcafe4242" in text
    assert "conv5_block16_concat" in text
    assert "93.0%" in text  # accuracy 40/43


def test_no_skipped_images_says_none(context):
    html = render_html(dataclasses.replace(context, skipped=[]))
    assert "data/test/broken.png" not in html
    assert ">None.<" in html


# ---------- (7) confusion matrix figure ----------


def test_confusion_matrix_svg_has_class_names_and_counts():
    names = ["COVID-19", "Normal", "Pneumonia"]
    confusion = np.array([[5, 1, 0], [2, 7, 3], [0, 4, 11]])
    figures_before = plt.get_fignums()

    svg = confusion_matrix_svg(confusion, names)

    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert set(names) <= texts
    assert {str(count) for count in confusion.ravel()} <= texts
    assert plt.get_fignums() == figures_before  # no figure left in pyplot's registry


def test_confusion_matrix_svg_escapes_class_names():
    svg = confusion_matrix_svg(np.eye(2, dtype=int), ["ok", HOSTILE_CLASS])
    assert "&lt;script&gt;" in svg
    assert "<script" not in svg


def test_confusion_matrix_svg_rejects_mismatched_shape():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix_svg(np.zeros((2, 2), dtype=int), ["a", "b", "c"])
