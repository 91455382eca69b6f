"""What an audit returns: numbers, tables, sentences and figures, plus the files it streamed.

An `Audit` is computed once (report.core) and handed to sinks: `to_html` and `to_pdf` render
it, `log_to_mlflow` logs it. Nothing here computes a metric.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from report.artifacts import CamMaps, unescape_predictions
from report.render import Figure, Finding, ReportContext, Section


@dataclass
class Audit:
    """The result of `report.audit(...)`.

    Attributes:
        metrics: every number under the MLflow metric name it is logged with
            (`accuracy`, `precision.<class>`, `faithfulness.deletion_auc`, ...).
        params: the MLflow run params that describe the audit (model, data, settings).
        findings: the "Read this first" sentences, each with a verdict (pass/warn/info).
        sections: the "Can the heatmaps be trusted?" sections (findings, tables, figures).
        figures: every figure of the report (SVG text), classification figures first.
        artifacts_dir: the run's artifact files as they will be logged: predictions.csv,
            overlays/<TRUE_CLASS>/<image_id>.png, cams/cams.npz (or, with backend=spark,
            one shard per partition, cams/part-NNNNN.npz; `maps` reads either).
        context: everything the HTML/PDF template shows.
        shortcut_classes: the classes flagged as possibly reading a shortcut.
    """

    metrics: dict[str, float]
    params: dict[str, str]
    findings: list[Finding]
    sections: list[Section]
    figures: list[Figure]
    artifacts_dir: Path
    context: ReportContext
    # Classes whose salient maps lie past the shortcut thresholds (the Shortcuts section).
    shortcut_classes: list[str] = field(default_factory=list)
    # Owns the artifacts folder when the caller gave none: removed with the Audit.
    _workspace: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def predictions(self) -> pd.DataFrame:
        """predictions.csv as a DataFrame: one row per image found (skipped ones included,
        with empty probabilities), probabilities as floats, `correct` as True/False/None."""
        table = unescape_predictions(pd.read_csv(
            self.artifacts_dir / "predictions.csv", dtype=str, keep_default_na=False))
        for column in table.columns:
            if column.startswith("prob_"):
                table[column] = pd.to_numeric(table[column].replace("", np.nan))
        table["correct"] = table["correct"].map({"true": True, "false": False, "": None})
        return table

    @cached_property
    def maps(self) -> CamMaps:
        """Raw maps (float32, feature-map resolution, before the colormap) by image id, read
        from the archive when asked for."""
        return CamMaps(self.artifacts_dir / "cams")

    def to_html(self, path) -> Path:
        """Write the self-contained HTML report to `path`."""
        from report import sinks

        return sinks.write_html(self, Path(path))

    def to_pdf(self, path) -> Path:
        """Write the PDF report (disclaimer in every page's footer) to `path`."""
        from report import sinks

        return sinks.write_pdf(self, Path(path))

    def log_to_mlflow(self, run_id: str | None = None) -> str:
        """Log params, metrics, artifacts, figures and the report into a run: `run_id`, else
        the active run, else a new run in the experiment named by MLFLOW_EXPERIMENT_NAME
        (default cxr-gradcam-report). Returns the run id."""
        from report import sinks

        return sinks.log_audit(self, run_id)
