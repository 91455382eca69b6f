"""Where a finished Audit goes: report files (HTML, PDF) and an MLflow run. Sinks never
compute; they only write what the Audit holds."""

from __future__ import annotations

import io
import tempfile
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from report import i18n, render, tracking
from report.data.ids import safe_id
from report.result import Audit

CHARTED_OVERLAYS = 4  # per class, as MLflow image charts


def context_for(audit: Audit, run_id: str | None) -> render.ReportContext:
    return replace(audit.context, run_id=run_id)


def write_html(audit: Audit, path: Path, run_id: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render.render_html(context_for(audit, run_id)), encoding="utf-8")
    return path


def write_pdf(audit: Audit, path: Path, run_id: str | None = None) -> Path:
    return render.write_pdf(render.render_html(context_for(audit, run_id)), path)


def write_report(audit: Audit, folder: Path, run_id: str | None = None) -> tuple[Path, Path]:
    """`folder/report.html` and `folder/report.pdf`."""
    return render.write_report(context_for(audit, run_id), folder)


def log_audit(audit: Audit, run_id: str | None = None,
              report_files: tuple[Path, Path] | None = None) -> str:
    """Params, metrics, artifacts, figures, overlay charts, the two report files and the run
    description, into `run_id` (else the active run, else a new one). `report_files` are
    already rendered copies for this run; without them they are rendered here."""
    run_name = f"report-{audit.context.model_name}"
    if not tracking.active_run_id():
        tracking.configure_store()  # the project's store in a checkout, as the CLI uses
    with tracking.run_for(run_id, run_name) as run, \
            tempfile.TemporaryDirectory(prefix="cxr-report-") as scratch:
        logged_id = run.info.run_id
        html, pdf = report_files or write_report(audit, Path(scratch), logged_id)
        tracking.log_new_params(audit.params)
        tracking.log_metrics(audit.metrics)
        tracking.log_artifacts(audit.artifacts_dir)
        for figure in audit.figures:
            tracking.log_text(figure.svg, f"figures/{safe_id(figure.title.lower())}.svg")
        tracking.log_overlay_charts(_charted_overlays(audit), CHARTED_OVERLAYS)
        tracking.log_artifact(html, "report")
        tracking.log_artifact(pdf, "report")
        tracking.set_note(run_note(context_for(audit, logged_id)))
    return logged_id


def _charted_overlays(audit: Audit) -> dict[str, list[np.ndarray]]:
    return {grid.class_name: [_decoded(item.overlay) for item in grid.items[:CHARTED_OVERLAYS]]
            for grid in audit.context.grids}


def _decoded(overlay: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(overlay)).convert("RGB"))


# Characters that make Markdown (CommonMark and GitHub's tables and strikethrough) out of
# text; escaped with a backslash, they show as themselves.
MARKDOWN_ACTIVE = "\\`*_[]|#~!"
# Line and paragraph breaks, other control and format characters (a right-to-left override)
# and undecodable bytes: shown as escapes, so the text stays on its one line and reads as it is.
INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")


def _markdown_text(text: str) -> str:
    """Data-derived text (a data path, class names, model names) as literal text on one
    line of the run description: the MLflow UI renders it as Markdown through a sanitiser
    that would drop a `<script>` class name together with the rest of the table, and a
    newline in a data path would start a heading or a list of its own."""
    one_line = "".join(_visible(c) for c in str(text))
    escaped = one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"\\{c}" if c in MARKDOWN_ACTIVE else c for c in escaped)


def _visible(character: str) -> str:
    if unicodedata.category(character) not in INVISIBLE_CATEGORIES:
        return character
    return character.encode("unicode_escape", "backslashreplace").decode("ascii")


def run_note(context: render.ReportContext) -> str:
    """The run description (`mlflow.note.content`): the disclaimer first, then the gist, in
    the report's language."""
    with i18n.use(context.language):
        return _run_note(context)


def _run_note(context: render.ReportContext) -> str:
    _ = i18n._
    rows = "\n".join(
        f"| {_markdown_text(row['class'])} | {i18n.decimal(row['precision'], 2)} | "
        f"{i18n.decimal(row['recall'], 2)} | {i18n.decimal(row['f1'], 2)} | "
        f"{i18n.number(row['support'])} |"
        for row in context.per_class
    )
    alias = f" (@{context.model_alias})" if context.model_alias else ""
    settings = context.settings
    disclaimer = render.DISCLAIMER_PT if context.language == "pt-BR" else render.DISCLAIMER
    return (
        f"**{disclaimer}**\n\n"
        + _("%(method)s report for **%(model)s** on %(data)s.") % {
            "method": settings["Method"],
            "model": _markdown_text(f"{context.model_name} v{context.model_version}{alias}"),
            "data": _markdown_text(context.data_source)}
        + "\n\n- "
        + _("Images explained: %(explained)s; skipped: %(skipped)s") % {
            "explained": i18n.number(context.n_images),
            "skipped": i18n.number(len(context.skipped))}
        + "\n- " + _("Accuracy: %(accuracy)s") % {"accuracy": i18n.percent(context.accuracy)}
        + "\n- "
        + _("Target layer: %(layer)s; class score: %(score)s; normalisation: "
            "%(normalisation)s") % {
            "layer": _markdown_text(settings["Target layer"]),
            "score": _(settings["Class score"]),
            "normalisation": _(settings["Normalisation"])}
        + "\n\n| " + " | ".join([_("class"), _("precision"), _("recall"), _("F1"),
                                  _("support")])
        + " |\n|---|---|---|---|---|\n"
        + f"{rows}\n\n"
        + _("Full report: artifacts `report/report.html` and `report/report.pdf`.")
    )
