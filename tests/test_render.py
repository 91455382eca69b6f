"""Tests for the HTML/PDF report: self-contained, escaped, disclaimer on every PDF page."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from html import unescape
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
    FINDING_MARKERS,
    ClassGrid,
    Figure,
    Finding,
    GridItem,
    ReportContext,
    Section,
    Table,
    render_html,
    write_pdf,
    write_report,
)

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_ID = "<img src=x onerror=alert(1)>"
CLASS_NAMES = ["COVID-19", "Normal", HOSTILE_CLASS]
ASSUMPTION = "Input size 224x224 assumed: the model signature has no image shape."
# Findings, flags and table cells are data too: each of these must come out as visible text.
HOSTILE_FINDING = "Heatmaps <b onmouseover=alert(2)>point</b> at the lesion & more."
HOSTILE_FLAG = "text marker 41% <iframe src=https://example.org/x>"
HOSTILE_CELL = '"><svg onload=alert(3)>'
HOSTILE_FIGURE_TITLE = 'ROC "curves" <em>per</em> class'
SECTION_TITLES = [
    "Faithfulness: do the highlighted pixels matter to the model?",
    "Localisation: do the heatmaps point at the lesion?",
]

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


def _svg(label: str, script: bool = False) -> str:
    """A tiny valid SVG document; ``script`` adds markup that must never reach the page inline."""
    extra = "<script>alert(4)</script>" if script else ""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60" viewBox="0 0 120 60">'
        f'<rect width="120" height="60" fill="#369"/><text x="4" y="34">{label}</text>{extra}</svg>'
    )


class _ElementCollector(HTMLParser):
    """Elements with a class or an id, in document order: (tag, classes, attributes, text)."""

    VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr", "col", "area"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, set[str], dict[str, str], str]] = []
        self._open: list[tuple[str, int | None, list[str]]] = []  # (tag, index, text parts)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attributes = {name: value or "" for name, value in attrs}
        classes = set(attributes.get("class", "").split())
        index = None
        if classes or "id" in attributes:
            index = len(self.elements)
            self.elements.append((tag, classes, attributes, ""))
        self._open.append((tag, index, []))

    def handle_endtag(self, tag):
        if not any(name == tag for name, _, _ in self._open):
            return
        while True:
            name, index, parts = self._open.pop()
            text = "".join(parts)
            if index is not None:
                element = self.elements[index]
                self.elements[index] = (*element[:3], " ".join(text.split()))
            if self._open:
                self._open[-1][2].append(text)
            if name == tag:
                return

    def handle_data(self, data):
        if self._open:
            self._open[-1][2].append(data)


def _elements(html: str) -> list[tuple[str, set[str], dict[str, str], str]]:
    collector = _ElementCollector()
    collector.feed(html)
    collector.close()
    return collector.elements


def _texts(html: str, css_class: str) -> list[str]:
    """Visible text of every element with ``css_class``, in document order."""
    return [text for _, classes, _, text in _elements(html) if css_class in classes]


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
        summary=[
            Finding("pass", "Accuracy is 93% on 43 test images."),
            Finding("warn", HOSTILE_FINDING),
        ],
        sections=[
            Section(
                key="faithfulness",
                title=SECTION_TITLES[0],
                reading="Pixels go in heatmap order; a faithful map makes confidence fall fast.",
                findings=[
                    Finding("pass", "Removing the top 10% of pixels drops confidence by 0.41."),
                    Finding("info", "Deletion area 0.21 against 0.66 for random order."),
                ],
                tables=[
                    Table(
                        ["Class", "Deletion AUC", "Random AUC"],
                        [["COVID-19", "0.18", "0.64"], [hostile, HOSTILE_CELL, "0.65"]],
                    )
                ],
                figures=[
                    Figure("Deletion curve", _svg("deletion"), "Probability as pixels go."),
                    Figure("Randomisation check", _svg("random", script=True)),
                ],
            ),
            Section(
                key="localisation",
                title=SECTION_TITLES[1],
                reading="A hit means the brightest pixel falls inside the annotated box.",
                findings=[Finding("warn", "41% of Normal maps peak outside the lungs.")],
                tables=[Table(["Class", "Hit rate"], [["COVID-19", "87%"]])],
                figures=[Figure("Pointing game", _svg("pointing"), "Hits by class.")],
            ),
        ],
        extremes=[
            (
                "Lowest-confidence correct",
                [
                    _item("normal-07.png", normal, normal, 0.38),
                    _item("covid-11.png", covid, covid, 0.41),
                ],
            ),
            ("Highest-confidence wrong", [_item("covid-23.png", covid, normal, 0.97)]),
            ("Wrong with the heatmap outside the lungs", []),
        ],
        flagged=[
            ("normal-13.png", normal, "text marker 55%"),
            (HOSTILE_ID, hostile, HOSTILE_FLAG),
        ],
        figures=[
            Figure(HOSTILE_FIGURE_TITLE, _svg("roc"), "Area under the curve in the legend."),
            Figure(
                "Reliability diagram",
                _svg("reliability"),
                "Bars under the diagonal: over-confident.",
            ),
        ],
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
    # The extremes rows (under the classification results) come before the class grids.
    items = [item for _, group in context.extremes for item in group]
    items += [item for grid in context.grids for item in grid.items]
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
    assert _texts(html, "skipped") == ["Skipped images None."]


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


# ---------- (8) "Read this first", trust sections, figures, extremes, flagged ----------


def _marked(finding: Finding) -> str:
    return f"{FINDING_MARKERS[finding.level]} {finding.text}"


def _body(html: str) -> str:
    """The page without its <head>: the inlined CSS names the classes and parts too."""
    return html.split("</head>", 1)[1]


def _classes(html: str) -> list[set[str]]:
    return [classes for _, classes, _, _ in _elements(html)]


def _table_rows(fragment: str) -> list[list[str]]:
    """Unescaped cell texts of every row in ``fragment`` (header row included)."""
    return [
        [unescape(cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", fragment, re.S)
    ]


def _svg_sources(html: str) -> list[str]:
    """The SVG documents of every chart figure, decoded from their data: URIs, in order."""
    prefix = "data:image/svg+xml;base64,"
    sources = []
    for tag, attributes in _scan(html).elements:
        if tag == "img" and attributes.get("src", "").startswith(prefix):
            sources.append(base64.b64decode(attributes["src"][len(prefix) :]).decode("utf-8"))
    return sources


def test_finding_markers_are_text_not_only_colour():
    assert FINDING_MARKERS["pass"] == "✓ PASS"
    assert FINDING_MARKERS["warn"] == "⚠ WARN"
    assert set(FINDING_MARKERS) == {"pass", "warn", "info"}


def test_read_this_first_lists_the_summary_with_markers(html, context):
    boxes = [text for _, classes, _, text in _elements(html) if "read-first" in classes]
    expected = " ".join(_marked(finding) for finding in context.summary)
    assert boxes == [f"Read this first {expected}"]
    assert "✓ PASS Accuracy is 93% on 43 test images." in boxes[0]
    assert f"⚠ WARN {HOSTILE_FINDING}" in boxes[0]
    levels = [
        classes for tag, classes, _, _ in _elements(html) if tag == "li" and "finding" in classes
    ][: len(context.summary)]
    assert [{"finding", f"finding--{f.level}"} for f in context.summary] == levels


def test_read_this_first_comes_before_everything_but_title_and_disclaimer(html):
    html = _body(html)
    box = html.index('class="read-first"')
    assert html.index('class="disclaimer"') < box
    assert box < html.index("<h2>Model and data</h2>")
    assert box < html.index('class="notice"')
    assert box < html.index('id="faithfulness"')


def test_empty_summary_gives_no_box(context):
    html = render_html(dataclasses.replace(context, summary=()))
    assert not any("read-first" in classes for classes in _classes(html))
    assert "Read this first" not in _body(html)
    assert "Model and data" in html  # the rest of the report is still there


def test_sections_in_order_with_ids_and_headings(html, context):
    html = _body(html)
    elements = _elements(html)
    assert "Can the heatmaps be trusted?" in re.findall(r"<h2>(.*?)</h2>", html)
    headings = [
        (attributes["id"], text)
        for tag, _, attributes, text in elements
        if tag in {"h2", "h3"} and "id" in attributes
    ]
    assert headings == [(section.key, section.title) for section in context.sections]
    assert html.index("<h2>Can the heatmaps be trusted?</h2>") < html.index('id="faithfulness"')
    # Everything of a section follows its heading and precedes the next one.
    first, second = (html.index(f'id="{section.key}"') for section in context.sections)
    assert first < html.index("Removing the top 10% of pixels") < second
    assert second < html.index("41% of Normal maps peak outside the lungs.")


def test_section_reading_and_findings(html, context):
    readings = _texts(html, "reading")
    assert readings == [section.reading for section in context.sections]
    section_findings = _texts(html, "finding")[len(context.summary) :]
    assert section_findings == [
        _marked(finding) for section in context.sections for finding in section.findings
    ]
    assert "ℹ INFO Deletion area 0.21 against 0.66 for random order." in section_findings


def test_section_tables_keep_every_cell_as_text(html, context):
    tables = []
    for tag, classes, _, _ in _elements(html):
        if tag == "table" and "data-table" in classes:
            tables.append(classes)
    assert len(tables) == sum(len(section.tables) for section in context.sections)
    assert all("metrics" in classes for classes in tables)  # styled like per-class metrics

    fragments = re.findall(r'<table class="metrics data-table">(.*?)</table>', html, re.S)
    expected = [section.tables for section in context.sections]
    expected = [[table.headers, *table.rows] for tables in expected for table in tables]
    assert [_table_rows(fragment) for fragment in fragments] == expected
    assert "&#34;&gt;&lt;svg onload=alert(3)&gt;" in fragments[0]
    # First column is a row header (left-aligned), the numbers are plain cells.
    assert '<th scope="row">COVID-19</th><td>0.18</td><td>0.64</td>' in html


def test_figures_are_embedded_as_svg_data_uris(html, context):
    expected = [figure.svg for figure in context.figures]
    expected += [figure.svg for section in context.sections for figure in section.figures]
    charts = _svg_sources(html)[1:]  # the first is the confusion matrix
    assert charts == expected
    assert "<svg" not in html  # never inline markup, only data: URIs
    titles = _texts(html, "chart__title")
    assert titles[:2] == [HOSTILE_FIGURE_TITLE, "Reliability diagram"]
    assert titles[2:] == ["Deletion curve", "Randomisation check", "Pointing game"]
    chart_texts = _texts(html, "chart")
    assert "Deletion curve Probability as pixels go." in chart_texts
    assert "Randomisation check" in chart_texts  # no caption, no empty figcaption
    assert "<figcaption></figcaption>" not in html


def test_classification_figures_follow_the_confusion_matrix(html):
    html = _body(html)
    confusion = html.index('class="confusion"')
    roc = html.index("ROC &#34;curves&#34; &lt;em&gt;per&lt;/em&gt; class")
    assert confusion < roc < html.index("Lowest-confidence correct")
    assert html.index("Lowest-confidence correct") < html.index("Can the heatmaps be trusted?")


def test_extremes_rows_reuse_tiles_and_say_none_when_empty(html, context):
    extremes = _texts(html, "extremes")
    assert len(extremes) == len(context.extremes)
    for (title, items), text in zip(context.extremes, extremes, strict=True):
        assert text.startswith(title)
        for item in items:
            assert item.image_id in text
    assert extremes[1].startswith("Highest-confidence wrong ✗ misclassified covid-23.png")
    assert extremes[2] == "Wrong with the heatmap outside the lungs None."
    small = [classes for tag, classes, _, _ in _elements(html) if "tiles--small" in classes]
    assert len(small) == 2  # one row per non-empty group


def test_flagged_images_table_after_the_sections(html, context):
    html = _body(html)
    assert len(_texts(html, "flagged")) == 1
    (fragment,) = re.findall(r'<table class="flagged__table">(.*?)</table>', html, re.S)
    rows = [["Image", "True class", "Flags"], *map(list, context.flagged)]
    assert _table_rows(fragment) == rows
    assert html.index('id="localisation"') < html.index("Flagged images")
    assert html.index("Flagged images") < html.index("Heatmaps by true class")


def test_no_flagged_image_says_so(context):
    html = render_html(dataclasses.replace(context, flagged=()))
    assert _texts(html, "flagged") == ["Flagged images No image was flagged."]
    assert not any("flagged__table" in classes for classes in _classes(html))


def test_findings_flags_and_cells_are_escaped(html):
    assert (
        "Heatmaps &lt;b onmouseover=alert(2)&gt;point&lt;/b&gt; at the lesion &amp; more." in html
    )
    assert "text marker 41% &lt;iframe src=https://example.org/x&gt;" in html
    assert "&lt;svg onload=alert(3)&gt;" in html
    for raw in (HOSTILE_FINDING, HOSTILE_FLAG, HOSTILE_CELL, HOSTILE_FIGURE_TITLE):
        assert raw not in html
    scanner = _scan(html)
    assert "ROC &#34;curves&#34; &lt;em&gt;per&lt;/em&gt; class" in html
    assert not {"b", "iframe", "svg"} & set(scanner.tags)
    assert [name for _, name, _ in scanner.attributes if name.startswith("on")] == []


def test_report_without_the_new_parts_renders_as_before(context):
    # Callers that predate the trust checks pass none of the new fields.
    required = {
        f.name: getattr(context, f.name)
        for f in dataclasses.fields(ReportContext)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    html = render_html(ReportContext(**required))
    body = _body(html)
    assert "Read this first" not in body
    assert "Can the heatmaps be trusted?" not in body
    assert "Flagged images" not in body  # no check ran: do not claim that nothing was flagged
    assert not {"read-first", "charts", "extremes", "check"} & set().union(*_classes(html))
    assert len(_svg_sources(html)) == 1  # the confusion matrix only
    assert unloadable_references(html) == []


def test_finding_level_and_table_shape_are_checked():
    with pytest.raises(ValueError, match="level"):
        Finding("fail", "Not a level.")
    with pytest.raises(ValueError, match="row 2 has 1 cells, expected 2"):
        Table(["a", "b"], [["1", "2"], ["3"]])


def test_pdf_has_summary_and_section_titles(pdf_pages, context):
    text = _normalised(" ".join(pdf_pages))
    assert "Read this first" in text
    assert "Can the heatmaps be trusted?" in text
    for title in SECTION_TITLES:
        assert title in text
    assert "✓ PASS Accuracy is 93% on 43 test images." in text
    assert "⚠ WARN 41% of Normal maps peak outside the lungs." in text
    assert "Flagged images" in text and "text marker 55%" in text
    positions = [text.index(title) for title in SECTION_TITLES]
    assert (
        text.index("Read this first") < text.index("Model and data") < positions[0] < positions[1]
    )


def test_data_accounting_table_is_shown_when_given(context):
    table = Table(["Source", "Class", "Found", "Used", "Skipped", "Reasons"],
                  [["folder", "<b>NORMAL</b>", "5", "4", "1", "empty file (1)"]])
    html = render_html(dataclasses.replace(context, data=table))
    assert "<h2>Data</h2>" in html and "&lt;b&gt;NORMAL&lt;/b&gt;" in html
    assert "<h2>Data</h2>" not in render_html(context)
