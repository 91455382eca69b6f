"""The comparison report: "Read this first" sentences, tables and figures from a
`compare.Comparison`, rendered into one self-contained HTML page and its PDF, in the audit
report's style (templates/compare.html.j2, report.css)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from report import figures, paired, render
from report.comparison import (
    BETTER,
    DRIFT_SPEARMAN,
    LEAST_AGREEING_SHOWN,
    SAME,
    TRUST_METRICS,
    WORSE,
    finite_median,
    overlay_of,
)
from report.render import Finding, Table

TEMPLATE_NAME = "compare.html.j2"


@dataclass(frozen=True)
class Pair:
    """Two overlays of one image, for the side-by-side grids."""

    image_id: str
    caption: str
    overlays: tuple[bytes | None, bytes | None]


def findings(comparison) -> list[Finding]:
    """The verdict first, then drift and shortcuts: what a reviewer must read."""
    a, b = comparison.baseline.label, comparison.candidate.label
    acc, test = comparison.accuracy, comparison.mcnemar
    evidence = (f"accuracy {acc.estimate:+.1%} (95% CI {acc.low:+.1%} to {acc.high:+.1%}), "
                f"macro-F1 {comparison.macro_f1.estimate:+.3f} (95% CI "
                f"{comparison.macro_f1.low:+.3f} to {comparison.macro_f1.high:+.3f}); "
                f"McNemar's exact test p = {test.p_value:.3g} on {test.fixed} images fixed "
                f"and {test.broken} broken")
    verdict = comparison.verdict
    level = {BETTER: "pass", WORSE: "warn", SAME: "info"}[verdict]
    if level == "pass" and comparison.newly_flagged:
        level = "info"  # better by the numbers, yet not to be promoted: no green mark
    wording = {BETTER: f"The candidate {b} is better than the baseline {a}",
               WORSE: f"The candidate {b} is worse than the baseline {a}",
               SAME: f"The candidate {b} is not significantly different from the baseline {a}"}
    lines = [Finding(level, f"{wording[verdict]}: {evidence}.")]
    spearman = finite_median(comparison.spearman)
    if comparison.drifted:
        lines.append(Finding("warn", f"The explanations drifted: the two models' maps of the "
                             f"same image have a median rank correlation of {spearman:.2f} "
                             f"(below {DRIFT_SPEARMAN}); they look at different places."))
    else:
        lines.append(Finding("pass", f"The explanations agree: median rank correlation "
                             f"{spearman:.2f} between the two models' maps of the same image."))
    if comparison.newly_flagged:
        lines.append(Finding("warn", "A new shortcut in the candidate: "
                             f"{', '.join(comparison.newly_flagged)} "
                             + ("is" if len(comparison.newly_flagged) == 1 else "are")
                             + " flagged for the candidate and not for the baseline. Do not "
                             "promote it on accuracy alone."))
    else:
        lines.append(Finding("pass", "No class is newly flagged for a shortcut in the "
                             "candidate."))
    return lines


def render_html(comparison, run_id: str | None = None) -> str:
    a, b = comparison.baseline, comparison.candidate
    names = list(comparison.class_names)
    by_class = _agreement_by_class(comparison)
    template = render._environment().get_template(TEMPLATE_NAME)
    return template.render(
        title=f"{b.label} against {a.label}",
        baseline=a.label, candidate=b.label,
        baseline_source=a.loaded.source, candidate_source=b.loaded.source,
        data_source=a.audit.context.data_source, run_id=run_id,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        n_images=len(comparison.pairs),
        findings=findings(comparison),
        finding_markers=render.FINDING_MARKERS,
        disclaimer=render.DISCLAIMER,
        disclaimer_pt=render.DISCLAIMER_PT,
        summary=_summary_table(comparison),
        per_class=_per_class_table(comparison),
        confusions=[(label, _svg_uri(figures.confusion_matrix_svg(side.audit.context.confusion,
                                                                  names)))
                    for label, side in (("Baseline", a), ("Candidate", b))],
        fixed=_flip_pairs(comparison.fixed), broken=_flip_pairs(comparison.broken),
        n_fixed=len(comparison.fixed), n_broken=len(comparison.broken),
        agreement=Table(["Class", "Images", "Median Spearman", "Median IoU (top 15%)"], [
            [name, str(len(rho)), _number(finite_median(rho)), _number(finite_median(iou))]
            for name, (rho, iou) in by_class.items()]),
        agreement_svg=_svg_uri(figures.agreement_svg(
            list(by_class), [v[0] for v in by_class.values()],
            [v[1] for v in by_class.values()])),
        least_agreeing=_least_agreeing(comparison),
        trust=_trust_table(comparison),
        flagged=[("Baseline", a.audit.shortcut_classes), ("Candidate", b.audit.shortcut_classes)],
        newly_flagged=comparison.newly_flagged,
    )


def write(comparison, folder: Path, run_id: str | None = None) -> tuple[Path, Path]:
    """`folder/compare.html` and `folder/compare.pdf`."""
    return render.write_html_and_pdf(render_html(comparison, run_id), Path(folder), "compare")


def _summary_table(comparison) -> Table:
    pairs = comparison.pairs
    rows = [
        ["Accuracy", _percent(pairs.baseline_correct.mean()),
         _percent(pairs.candidate_correct.mean()), _interval(comparison.accuracy, percent=True)],
        ["Macro-F1", _number(_macro_f1(comparison, "baseline")),
         _number(_macro_f1(comparison, "candidate")), _interval(comparison.macro_f1)],
    ]
    return Table(["", "Baseline", "Candidate", "Difference (95% CI)"], rows)


def _per_class_table(comparison) -> Table:
    a = {row["class"]: row for row in comparison.baseline.audit.context.per_class}
    b = {row["class"]: row for row in comparison.candidate.audit.context.per_class}
    rows = []
    for index, name in enumerate(comparison.class_names):
        for metric in ("precision", "recall", "f1"):
            interval = comparison.per_class[metric][index]
            rows.append([name if metric == "precision" else "", metric.replace("f1", "F1"),
                         _number(a.get(name, {}).get(metric)),
                         _number(b.get(name, {}).get(metric)), _interval(interval)])
    return Table(["Class", "Metric", "Baseline", "Candidate", "Difference (95% CI)"], rows)


def _trust_table(comparison) -> Table:
    a, b = comparison.baseline.audit.metrics, comparison.candidate.audit.metrics
    rows = [[label, _number(a.get(key)), _number(b.get(key))]
            for key, label in TRUST_METRICS if key in a or key in b]
    for name in comparison.class_names:
        for key, words in (("border_energy", "in the border band"),
                           ("outside_lung_energy", "outside the lungs")):
            metric = f"shortcut.{key}.{name}"
            if metric in a or metric in b:
                rows.append([f"{name}: salient share {words}", _number(a.get(metric)),
                             _number(b.get(metric))])
    return Table(["Check", "Baseline", "Candidate"], rows)


def _agreement_by_class(comparison) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    classes = comparison.pairs.true_label.to_numpy()
    return {name: (comparison.spearman[classes == name], comparison.iou[classes == name])
            for name in comparison.class_names if (classes == name).any()}


def _least_agreeing(comparison) -> list[Pair]:
    order = np.argsort(np.where(np.isfinite(comparison.spearman), comparison.spearman, 2.0),
                       kind="stable")[:LEAST_AGREEING_SHOWN]
    pairs = comparison.pairs.iloc[order]
    sides = (comparison.baseline, comparison.candidate)
    return [Pair(row.image_id, f"{row.image_id} ({row.true_label}): Spearman "
                 f"{comparison.spearman[i]:.2f}, IoU {comparison.iou[i]:.2f}",
                 tuple(overlay_of(side.audit, row.true_label, row.image_id) for side in sides))
            for i, (_, row) in zip(order, pairs.iterrows(), strict=True)]


def _flip_pairs(flips) -> list[Pair]:
    return [Pair(flip.image_id,
                 f"{flip.image_id}, true {flip.true_label}: baseline {flip.baseline_label} "
                 f"({flip.baseline_confidence:.0%}), candidate {flip.candidate_label} "
                 f"({flip.candidate_confidence:.0%})", flip.overlays)
            for flip in flips if flip.overlays[0] is not None or flip.overlays[1] is not None]


def _macro_f1(comparison, role: str) -> float:
    pairs = comparison.pairs
    return paired.macro_f1(len(comparison.class_names))(pairs.true_class.to_numpy(),
                                                        pairs[f"{role}_class"].to_numpy())


def _interval(interval, percent: bool = False) -> str:
    shown = (lambda v: f"{v:+.1%}") if percent else (lambda v: f"{v:+.3f}")
    if not np.isfinite(interval.estimate):
        return "—"
    return f"{shown(interval.estimate)} ({shown(interval.low)} to {shown(interval.high)})"


def _svg_uri(svg: str) -> str:
    return render._data_uri("image/svg+xml", svg.encode("utf-8"))


def _percent(value) -> str:
    return render._format_percent(float(value))


def _number(value) -> str:
    return render._format_decimal(None if value is None else float(value), 2)



def run_note(comparison) -> str:
    """The comparison run's description: the disclaimer, then the verdict lines."""
    from report.sinks import _markdown_text

    lines = "\n".join(f"- {_markdown_text(finding.text)}" for finding in findings(comparison))
    return (f"**{render.DISCLAIMER}**\n\n"
            f"Comparison of **{_markdown_text(comparison.candidate.label)}** (candidate) against "
            f"**{_markdown_text(comparison.baseline.label)}** (baseline) on "
            f"{len(comparison.pairs)} images.\n\n{lines}\n\n"
            "Full report: artifacts `report/compare.html` and `report/compare.pdf`.")
