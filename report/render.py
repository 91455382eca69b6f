"""Render the audit report: one Jinja2 template gives the HTML page and, via WeasyPrint, the PDF.

The HTML is shown by the MLflow UI inside an iframe sandboxed without same-origin, so it must be
fully self-contained: CSS inlined, images as ``data:`` URIs, no scripts, nothing fetched.
Everything that comes from users (class names, image ids, file paths) is escaped by Jinja2's
autoescaping; nothing in the template is marked ``|safe``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import numpy as np

from report import i18n
from report.figures import confusion_matrix_svg
from report.measures import ShownClasses, shown_classes

# Installed (pip install of a clone or a wheel), the templates ship inside the package as
# report/templates; in a checkout (PYTHONPATH or an editable install) they are the top-level
# templates/ folder, which pyproject.toml maps to report.templates when building.
PACKAGE_TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CHECKOUT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATES_DIR = (
    PACKAGE_TEMPLATES_DIR if PACKAGE_TEMPLATES_DIR.is_dir() else CHECKOUT_TEMPLATES_DIR
)
TEMPLATE_NAME = "report.html.j2"

# Both wordings are shown in every language (the Portuguese one first in a Portuguese report).
DISCLAIMER = "Not for clinical use. These results are exploratory and have no diagnostic value."
DISCLAIMER_PT = "Os resultados não apresentam caráter clínico, mas sim exploratório."

# Enough hex digits to tell data sets apart at a glance; the full digest is in the HTML title.
FINGERPRINT_SHOWN_CHARS = 12
MISSING = "—"


@dataclass(frozen=True)
class GridItem:
    image_id: str
    true_label: str
    predicted_label: str
    confidence: float  # probability of the predicted class, 0..1
    correct: bool
    overlay: bytes  # the overlay image, encoded, label bar already drawn on it
    media_type: str = "image/png"  # or "image/jpeg" with overlay_format=jpeg


@dataclass(frozen=True)
class ClassGrid:
    class_name: str  # the true class
    items: list[GridItem]  # already ordered by the caller: misclassified first
    total: int  # how many images of this true class were explained (items may be fewer)
    misclassified: int  # how many of those were misclassified


# Verdict markers are text, not only colour: they survive greyscale printing and screen readers.
FINDING_MARKERS = {"pass": "✓ PASS", "warn": "⚠ WARN", "info": "ℹ INFO"}
FINDING_LEVELS = tuple(FINDING_MARKERS)


@dataclass(frozen=True)
class Finding:
    """A plain-language sentence and its verdict, shown as text: ✓ PASS, ⚠ WARN, ℹ INFO."""

    level: str  # "pass" | "warn" | "info"
    text: str  # e.g. "Heatmaps point at the lesion in 87% of images (random maps: 12%)."

    def __post_init__(self) -> None:
        # A typo would otherwise render a finding without its verdict.
        if self.level not in FINDING_LEVELS:
            raise ValueError(f"finding level {self.level!r} is not one of {FINDING_LEVELS}")


@dataclass(frozen=True)
class Figure:
    title: str
    svg: str  # SVG document text (matplotlib); embedded as a data: URI, never inline markup
    caption: str = ""


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]  # already formatted; first column left-aligned, the others right
    title: str = ""  # shown above the table where a section has several

    def __post_init__(self) -> None:
        for number, row in enumerate(self.rows, start=1):
            if len(row) != len(self.headers):
                raise ValueError(
                    f"table row {number} has {len(row)} cells, expected {len(self.headers)}"
                )


@dataclass(frozen=True)
class Section:
    """One question of the "Can the heatmaps be trusted?" part."""

    key: str  # html id / anchor, e.g. "faithfulness"
    title: str  # e.g. "Faithfulness: do the highlighted pixels matter to the model?"
    reading: str  # a short plain-language paragraph: how to read the numbers below
    findings: list[Finding] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class ReportContext:
    model_name: str
    model_version: str
    model_alias: str | None
    model_source: str
    data_source: str
    data_fingerprint: str
    run_id: str
    created: str
    settings: dict[str, str]
    assumptions: list[str]
    class_names: list[str]
    n_images: int
    accuracy: float
    per_class: list[dict]  # {"class", "precision", "recall", "f1", "support"}
    confusion: np.ndarray  # (C, C) int, rows = true class, columns = predicted class
    grids: list[ClassGrid]
    skipped: list[tuple[str, str]]  # (file path or id, reason)
    elapsed_seconds: float | None = None
    summary: Sequence[Finding] = ()  # 3-5 lines a reviewer reads first; no box when empty
    sections: Sequence[Section] = ()  # the "Can the heatmaps be trusted?" part, in order
    # Small tile rows under the classification results, e.g. ("Highest-confidence wrong", items).
    extremes: Sequence[tuple[str, Sequence[GridItem]]] = ()
    flagged: Sequence[tuple[str, str, str]] = ()  # (image id, true class, flags)
    figures: Sequence[Figure] = ()  # classification figures: ROC curves, reliability diagram
    data: Table | None = None  # per source and class: files found, used, skipped (and why)
    language: str = "en"  # the report's language: i18n.LANGUAGES ("en" | "pt-BR")


def render_html(context: ReportContext) -> str:
    """Render the self-contained HTML report (also the input of the PDF), in its language.

    The template's messages are translated as it renders (`_`, `ngettext` read the language
    set here); titles, readings and findings arrive already translated."""
    template = _environment().get_template(TEMPLATE_NAME)
    with i18n.use(context.language):
        shown = shown_of(context)
        names, confusion = shown_confusion(context)
        grids = _shown_grids(context, shown)
        return template.render(
            report=context,
            disclaimer=DISCLAIMER,
            disclaimer_pt=DISCLAIMER_PT,
            finding_markers=FINDING_MARKERS,
            fingerprint_short=context.data_fingerprint[:FINGERPRINT_SHOWN_CHARS],
            per_class=[context.per_class[i] for i in shown.indices],
            left_out=shown,
            n_classes=len(context.class_names),
            grids=grids,
            grids_left_out=len(context.class_names) - len(grids),
            grid_images_left_out=sum(row["support"] for row in context.per_class)
            - sum(grid.total for grid in grids),
            confusion_svg_uri=_data_uri(
                "image/svg+xml", confusion_matrix_svg(confusion, names).encode()),
        )


def shown_of(context: ReportContext) -> ShownClasses:
    """The classes the report shows one by one: all of them up to measures.MAX_CLASSES_SHOWN,
    else those with the most images (measures.shown_classes)."""
    return shown_classes([row["support"] for row in context.per_class],
                         np.asarray(context.confusion).sum(axis=0))


def other_classes_label(count: int) -> str:
    """The name of the pooled row (and confusion-matrix column) of the classes left out."""
    # TRANSLATORS: a table row or matrix label pooling the classes not shown one by one.
    return i18n.ngettext("%(count)s other class", "%(count)s other classes", count) % {
        "count": i18n.number(count)}


def shown_confusion(context: ReportContext) -> tuple[list[str], np.ndarray]:
    """The confusion matrix over the shown classes, the classes left out pooled into one
    last row and column: at most MAX_CLASSES_SHOWN + 1 labels, whatever the class count."""
    confusion = np.asarray(context.confusion)
    shown = shown_of(context)
    if not shown.left_out:
        return list(context.class_names), confusion
    return ([context.class_names[i] for i in shown.indices]
            + [other_classes_label(shown.left_out)], pooled_confusion(confusion, shown))


def pooled_confusion(confusion: np.ndarray, shown: ShownClasses) -> np.ndarray:
    """(K + 1, K + 1) counts: the K shown classes, then every other class as one."""
    kept = np.asarray(shown.indices)
    rest = np.setdiff1d(np.arange(len(confusion)), kept)
    pooled = np.zeros((len(kept) + 1, len(kept) + 1), dtype=confusion.dtype)
    pooled[:-1, :-1] = confusion[np.ix_(kept, kept)]
    pooled[:-1, -1] = confusion[np.ix_(kept, rest)].sum(axis=1)
    pooled[-1, :-1] = confusion[np.ix_(rest, kept)].sum(axis=0)
    pooled[-1, -1] = confusion[np.ix_(rest, rest)].sum()
    return pooled


def _shown_grids(context: ReportContext, shown: ShownClasses) -> list[ClassGrid]:
    """The heatmap grids of the shown classes, in the order they are shown; past
    MAX_CLASSES_SHOWN classes, only those with images (an empty grid says nothing)."""
    if not shown.left_out:
        return list(context.grids)
    by_name = {grid.class_name: grid for grid in context.grids}
    names = (context.class_names[i] for i in shown.indices)
    return [by_name[name] for name in names if name in by_name and by_name[name].total]


def write_pdf(html: str, path: Path) -> Path:
    """Render ``html`` to a PDF at ``path`` with WeasyPrint."""
    # Imported here: WeasyPrint loads Pango/Cairo-era native libraries, which the HTML-only
    # path (and its tests) should not pay for or depend on.
    weasyprint = _import_weasyprint()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Only data: URIs may be resolved: the report must not read local files or the network,
    # whatever ends up in the HTML.
    fetcher = weasyprint.urls.URLFetcher(allowed_protocols={"data"})
    weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(path)
    return path


def _import_weasyprint():
    """WeasyPrint sets PIL's process-wide LOAD_TRUNCATED_IMAGES when imported, which would
    make the next audit in this process decode truncated films instead of skipping them. The
    report's own images are complete, so PIL's strict default is put back."""
    from PIL import ImageFile

    strict = ImageFile.LOAD_TRUNCATED_IMAGES
    import weasyprint
    import weasyprint.urls

    ImageFile.LOAD_TRUNCATED_IMAGES = strict
    return weasyprint


def write_report(context: ReportContext, out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.pdf`` and return both paths."""
    return write_html_and_pdf(render_html(context), Path(out_dir), "report")


def write_html_and_pdf(html: str, folder: Path, name: str) -> tuple[Path, Path]:
    """``folder/<name>.html`` and its PDF ``folder/<name>.pdf`` (every report page does it)."""
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / f"{name}.html"
    html_path.write_text(html, encoding="utf-8")
    return html_path, write_pdf(html, folder / f"{name}.pdf")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        # "j2" must be listed: select_autoescape matches the end of the name, "report.html.j2".
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "j2"]),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails loudly, not blank
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    # `_` and `ngettext` read the language when called (i18n.use), so this one cached
    # environment serves every language. Newstyle: placeholders are named and autoescaped,
    # `{{ _("True class: %(name)s", name=grid.class_name) }}`.
    environment.install_gettext_callables(gettext=i18n._, ngettext=i18n.ngettext, newstyle=True)
    environment.filters.update(
        overlay_data_uri=lambda item: _data_uri(item.media_type, item.overlay),
        svg_data_uri=lambda svg: _data_uri("image/svg+xml", svg.encode("utf-8")),
        percent=_format_percent,
        decimal=_format_decimal,
        number=i18n.number,
        # Data that may be a catalog message (figure titles, Settings labels and wordings,
        # marked N_ where declared): translated, then autoescaped like any other value.
        # Not `_(value)`: newstyle gettext marks its result safe and %-formats it.
        translate=_translate,
        page_label=_page_label,
        b64=lambda payload: base64.b64encode(payload).decode("ascii"),
    )
    return environment


def _data_uri(media_type: str, payload: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(payload).decode('ascii')}"


def _format_percent(value: float | None, digits: int = 1) -> str:
    """0.932 -> "93.2%" ("93,2%" in Portuguese); "—" when missing (None or NaN)."""
    return i18n.percent(value, digits)


def _format_decimal(value: float | None, digits: int = 3) -> str:
    # Precision is undefined (NaN) for a class that is never predicted.
    return i18n.decimal(value, digits)


def _translate(message: str) -> str:
    """A data string in the report's language when the catalog has it, else as it is."""
    return i18n._(message) if message else message


def _page_label(label: str) -> list[str]:
    """The PDF footer's "page N of M", translated with its two numbers replaced by NUL, as the
    texts before, between and after the page counters (CSS counters cannot be message
    placeholders). A translation that lost a number still gives three parts."""
    parts = str(label).split("\x00", 2)
    return parts + [""] * (3 - len(parts))
