"""The comparison report: "Read this first" sentences, tables and figures from a
`compare.Comparison`, rendered into one self-contained HTML page and its PDF, in the audit
report's style (templates/compare.html.j2, report.css).

Worded in the report's language (`language=en|pt-BR`, report.i18n) like the audit report:
every sentence here is a gettext message with named placeholders, every number goes through
the locale's formatters; class names, model names and metric names stay as they are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from babel.numbers import get_decimal_symbol

from report import figures, i18n, measures, paired, render
from report.comparison import (
    BETTER,
    DRIFT_SPEARMAN,
    LEAST_AGREEING_SHOWN,
    RESAMPLES,
    SAME,
    TRUST_METRICS,
    WORSE,
    finite_median,
    overlay_of,
)
from report.i18n import _, decimal, ngettext, number, percent
from report.measures import MAX_CLASSES_SHOWN
from report.render import Finding, Table, other_classes_label

TEMPLATE_NAME = "compare.html.j2"


@dataclass(frozen=True)
class Pair:
    """Two overlays of one image, for the side-by-side grids."""

    image_id: str
    caption: str
    overlays: tuple[bytes | None, bytes | None]


def findings(comparison) -> list[Finding]:
    """The verdict first, then drift and shortcuts: what a reviewer must read (in the
    language set around the call, `i18n.use`)."""
    a, b = comparison.baseline.label, comparison.candidate.label
    acc, test = comparison.accuracy, comparison.mcnemar
    # TRANSLATORS: the evidence of the verdict; fixed and broken are the two phrases below.
    evidence = _("accuracy %(accuracy)s (95%% CI %(accuracy_low)s to %(accuracy_high)s), "
                 "macro-F1 %(macro_f1)s (95%% CI %(macro_f1_low)s to %(macro_f1_high)s); "
                 "McNemar's exact test p = %(p)s on %(fixed)s and %(broken)s") % {
        "accuracy": _signed_percent(acc.estimate), "accuracy_low": _signed_percent(acc.low),
        "accuracy_high": _signed_percent(acc.high),
        "macro_f1": i18n.signed(comparison.macro_f1.estimate),
        "macro_f1_low": i18n.signed(comparison.macro_f1.low),
        "macro_f1_high": i18n.signed(comparison.macro_f1.high),
        "p": _p_value(test.p_value),
        # TRANSLATORS: images the candidate gets right and the baseline wrong.
        "fixed": ngettext("%(count)s image fixed", "%(count)s images fixed", test.fixed)
        % {"count": number(test.fixed)},
        # TRANSLATORS: images the candidate gets wrong and the baseline right.
        "broken": ngettext("%(count)s broken", "%(count)s broken", test.broken)
        % {"count": number(test.broken)},
    }
    verdict = comparison.verdict
    level = {BETTER: "pass", WORSE: "warn", SAME: "info"}[verdict]
    if level == "pass" and comparison.newly_flagged:
        level = "info"  # better by the numbers, yet not to be promoted: no green mark
    wording = {
        BETTER: _("The candidate %(candidate)s is better than the baseline %(baseline)s: "
                  "%(evidence)s."),
        WORSE: _("The candidate %(candidate)s is worse than the baseline %(baseline)s: "
                 "%(evidence)s."),
        SAME: _("The candidate %(candidate)s is not significantly different from the "
                "baseline %(baseline)s: %(evidence)s."),
    }[verdict]
    lines = [Finding(level, wording % {"candidate": b, "baseline": a, "evidence": evidence})]
    spearman = decimal(finite_median(comparison.spearman), 2)
    if comparison.drifted:
        lines.append(Finding("warn", _(
            "The explanations drifted: the two models' maps of the same image have a median "
            "rank correlation of %(spearman)s (below %(threshold)s); they look at different "
            "places.") % {"spearman": spearman, "threshold": decimal(DRIFT_SPEARMAN, 1)}))
    else:
        lines.append(Finding("pass", _(
            "The explanations agree: median rank correlation %(spearman)s between the two "
            "models' maps of the same image.") % {"spearman": spearman}))
    if comparison.newly_flagged:
        lines.append(Finding("warn", ngettext(
            "A new shortcut in the candidate: %(classes)s is flagged for the candidate and "
            "not for the baseline. Do not promote it on accuracy alone.",
            "A new shortcut in the candidate: %(classes)s are flagged for the candidate and "
            "not for the baseline. Do not promote it on accuracy alone.",
            len(comparison.newly_flagged))
            % {"classes": ", ".join(_capped(comparison.newly_flagged))}))
    else:
        lines.append(Finding("pass", _("No class is newly flagged for a shortcut in the "
                                       "candidate.")))
    return lines


def render_html(comparison, run_id: str | None = None, language: str = "en") -> str:
    """The self-contained HTML comparison report (also the input of the PDF), in `language`
    (i18n.LANGUAGES): findings, tables and captions are worded, and the template translated,
    inside `i18n.use(language)`."""
    template = render._environment().get_template(TEMPLATE_NAME)
    with i18n.use(language):
        a, b = comparison.baseline, comparison.candidate
        shown = shown_classes(comparison)
        names = [comparison.class_names[i] for i in shown.indices]
        if shown.left_out:
            names.append(other_classes_label(shown.left_out))
        by_class = _agreement_by_class(comparison, shown)
        roles = {"baseline": _("Baseline"), "candidate": _("Candidate")}
        return template.render(
            language=language,
            # TRANSLATORS: the report's title, candidate and baseline are model names.
            title=_("%(candidate)s against %(baseline)s") % {"candidate": b.label,
                                                              "baseline": a.label},
            baseline=a.label, candidate=b.label,
            baseline_source=a.loaded.source, candidate_source=b.loaded.source,
            data_source=a.audit.context.data_source, run_id=run_id,
            created=i18n.timestamp(datetime.now(UTC)),
            n_images=len(comparison.pairs),
            resamples=RESAMPLES,
            findings=findings(comparison),
            disclaimer=render.DISCLAIMER,
            disclaimer_pt=render.DISCLAIMER_PT,
            summary=_summary_table(comparison),
            per_class=_per_class_table(comparison, shown),
            confusions=[(roles[side.role], _svg_uri(figures.confusion_matrix_svg(
                _shown_confusion(side.audit.context.confusion, shown), names)))
                for side in (a, b)],
            fixed=_flip_pairs(comparison.fixed), broken=_flip_pairs(comparison.broken),
            n_fixed=len(comparison.fixed), n_broken=len(comparison.broken),
            agreement=Table([_("Class"), _("Images"), _("Median Spearman"),
                             _("Median IoU (top 15%)")], [
                [name, number(len(rho)), _number(finite_median(rho)),
                 _number(finite_median(iou))]
                for name, (rho, iou) in by_class.items()]),
            agreement_svg=_svg_uri(figures.agreement_svg(
                list(by_class), [v[0] for v in by_class.values()],
                [v[1] for v in by_class.values()])),
            least_agreeing=_least_agreeing(comparison),
            trust=_trust_table(comparison, shown),
            flagged=[(roles[side.role], _capped(side.audit.shortcut_classes))
                     for side in (a, b)],
            newly_flagged=_capped(comparison.newly_flagged),
        )


def write(comparison, folder: Path, run_id: str | None = None,
          language: str = "en") -> tuple[Path, Path]:
    """`folder/compare.html` and `folder/compare.pdf`, in `language`."""
    return render.write_html_and_pdf(render_html(comparison, run_id, language), Path(folder),
                                     "compare")


def _summary_table(comparison) -> Table:
    pairs = comparison.pairs
    rows = [
        [_("Accuracy"), _percent(pairs.baseline_correct.mean()),
         _percent(pairs.candidate_correct.mean()), _interval(comparison.accuracy, percent=True)],
        ["Macro-F1", _number(_macro_f1(comparison, "baseline")),
         _number(_macro_f1(comparison, "candidate")), _interval(comparison.macro_f1)],
    ]
    return Table(["", _("Baseline"), _("Candidate"), _("Difference (95% CI)")], rows)


def shown_classes(comparison) -> measures.ShownClasses:
    """The classes the comparison shows one by one: all up to MAX_CLASSES_SHOWN, else those
    with the most compared images, then the most predicted by either model."""
    n_classes = len(comparison.class_names)
    pairs = comparison.pairs

    def counts(column: str) -> np.ndarray:
        return np.bincount(pairs[column].to_numpy(dtype=int), minlength=n_classes)

    return measures.shown_classes(counts("true_class"),
                                  counts("baseline_class") + counts("candidate_class"))


def _capped(names: list[str]) -> list[str]:
    """At most MAX_CLASSES_SHOWN class names, then how many more there are."""
    if len(names) <= MAX_CLASSES_SHOWN:
        return list(names)
    more = len(names) - MAX_CLASSES_SHOWN
    return [*names[:MAX_CLASSES_SHOWN],
            ngettext("and %(count)s more class", "and %(count)s more classes", more)
            % {"count": number(more)}]


def _shown_confusion(confusion, shown: measures.ShownClasses) -> np.ndarray:
    confusion = np.asarray(confusion)
    return render.pooled_confusion(confusion, shown) if shown.left_out else confusion


def _per_class_table(comparison, shown: measures.ShownClasses) -> Table:
    a = {row["class"]: row for row in comparison.baseline.audit.context.per_class}
    b = {row["class"]: row for row in comparison.candidate.audit.context.per_class}
    metrics = {"precision": _("precision"), "recall": _("recall"), "f1": "F1"}
    rows = []
    for index in shown.indices:
        name = comparison.class_names[index]
        for metric, label in metrics.items():
            interval = comparison.per_class[metric][index]
            rows.append([name if metric == "precision" else "", label,
                         _number(a.get(name, {}).get(metric)),
                         _number(b.get(name, {}).get(metric)), _interval(interval)])
    if shown.left_out:
        # TRANSLATORS: the cell of a pooled row: how many compared images its classes have.
        images = shown.left_out_support
        rows.append([other_classes_label(shown.left_out),
                     ngettext("%(count)s image", "%(count)s images", images)
                     % {"count": number(images)}, i18n.MISSING, i18n.MISSING, i18n.MISSING])
    return Table([_("Class"), _("Metric"), _("Baseline"), _("Candidate"),
                  _("Difference (95% CI)")], rows)


def _trust_table(comparison, shown: measures.ShownClasses) -> Table:
    a, b = comparison.baseline.audit.metrics, comparison.candidate.audit.metrics
    # The labels are declared (N_) in comparison.TRUST_METRICS, translated here.
    rows = [[_(label), _number(a.get(key)), _number(b.get(key))]
            for key, label in TRUST_METRICS if key in a or key in b]
    for name in (comparison.class_names[i] for i in shown.indices):
        for key, words in (
                ("border_energy", _("%(name)s: salient share in the border band")),
                ("outside_lung_energy", _("%(name)s: salient share outside the lungs"))):
            metric = f"shortcut.{key}.{name}"
            if metric in a or metric in b:
                rows.append([words % {"name": name}, _number(a.get(metric)),
                             _number(b.get(metric))])
    return Table([_("Check"), _("Baseline"), _("Candidate")], rows)


def _agreement_by_class(comparison, shown: measures.ShownClasses
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per shown class with images, its images' agreements; the other classes' images
    pooled under one label."""
    classes = comparison.pairs.true_class.to_numpy(dtype=int)
    by_class = {comparison.class_names[c]: (comparison.spearman[classes == c],
                                            comparison.iou[classes == c])
                for c in shown.indices if (classes == c).any()}
    others = ~np.isin(classes, shown.indices)
    if others.any():
        count = len(np.unique(classes[others]))
        by_class[other_classes_label(count)] = (comparison.spearman[others],
                                                comparison.iou[others])
    return by_class


def _least_agreeing(comparison) -> list[Pair]:
    order = np.argsort(np.where(np.isfinite(comparison.spearman), comparison.spearman, 2.0),
                       kind="stable")[:LEAST_AGREEING_SHOWN]
    pairs = comparison.pairs.iloc[order]
    sides = (comparison.baseline, comparison.candidate)
    # TRANSLATORS: an image id, its true class, and the two models' map agreement.
    caption = _("%(image)s (%(label)s): Spearman %(spearman)s, IoU %(iou)s")
    return [Pair(row.image_id, caption % {
                     "image": row.image_id, "label": row.true_label,
                     "spearman": decimal(comparison.spearman[i], 2),
                     "iou": decimal(comparison.iou[i], 2)},
                 tuple(overlay_of(side.audit, row.true_label, row.image_id) for side in sides))
            for i, (_row_index, row) in zip(order, pairs.iterrows(), strict=True)]


def _flip_pairs(flips) -> list[Pair]:
    # TRANSLATORS: an image id, its true class, and each model's prediction and confidence.
    caption = _("%(image)s, true %(true)s: baseline %(baseline)s (%(baseline_confidence)s), "
                "candidate %(candidate)s (%(candidate_confidence)s)")
    return [Pair(flip.image_id, caption % {
                     "image": flip.image_id, "true": flip.true_label,
                     "baseline": flip.baseline_label,
                     "baseline_confidence": percent(flip.baseline_confidence, 0),
                     "candidate": flip.candidate_label,
                     "candidate_confidence": percent(flip.candidate_confidence, 0)},
                 flip.overlays)
            for flip in flips if flip.overlays[0] is not None or flip.overlays[1] is not None]


def _macro_f1(comparison, role: str) -> float:
    pairs = comparison.pairs
    return paired.macro_f1(len(comparison.class_names))(pairs.true_class.to_numpy(),
                                                        pairs[f"{role}_class"].to_numpy())


def _interval(interval, percent: bool = False) -> str:
    """A difference and its interval: "+3.3% (-1.7% to +8.3%)", "+0.012 (…)"."""
    shown = _signed_percent if percent else i18n.signed
    if not np.isfinite(interval.estimate):
        return i18n.MISSING
    # TRANSLATORS: a difference and its 95% confidence interval, e.g. "+3.3% (-1.7% to +8.3%)".
    return _("%(estimate)s (%(low)s to %(high)s)") % {
        "estimate": shown(interval.estimate), "low": shown(interval.low),
        "high": shown(interval.high)}


def _signed_percent(value: float, digits: int = 1) -> str:
    """A difference in percentage points with its sign even when positive: "+35.8%"
    ("+35,8%"), as `f"{value:+.1%}"` wrote it in English."""
    shown = percent(value, digits)
    return shown if shown.startswith(("-", "−", i18n.MISSING)) else "+" + shown


def _p_value(value: float) -> str:
    """Three significant digits, as `f"{value:.3g}"` ("0.0312", "1.23e-05"), with the
    locale's decimal sign."""
    return f"{value:.3g}".replace(".", get_decimal_symbol(i18n.locale_name(i18n.current())))


def _svg_uri(svg: str) -> str:
    return render._data_uri("image/svg+xml", svg.encode("utf-8"))


def _percent(value) -> str:
    return render._format_percent(float(value))


def _number(value) -> str:
    return render._format_decimal(None if value is None else float(value), 2)


def run_note(comparison, language: str = "en") -> str:
    """The comparison run's description: the disclaimer, then the verdict lines, in
    `language`."""
    with i18n.use(language):
        return _run_note(comparison, language)


def _run_note(comparison, language: str) -> str:
    from report.sinks import _markdown_text

    lines = "\n".join(f"- {_markdown_text(finding.text)}" for finding in findings(comparison))
    disclaimer = render.DISCLAIMER_PT if language == "pt-BR" else render.DISCLAIMER
    count = len(comparison.pairs)
    return (f"**{disclaimer}**\n\n"
            + ngettext("Comparison of **%(candidate)s** (candidate) against **%(baseline)s** "
                       "(baseline) on %(count)s image.",
                       "Comparison of **%(candidate)s** (candidate) against **%(baseline)s** "
                       "(baseline) on %(count)s images.", count)
            % {"candidate": _markdown_text(comparison.candidate.label),
               "baseline": _markdown_text(comparison.baseline.label), "count": number(count)}
            + f"\n\n{lines}\n\n"
            + _("Full report: artifacts `report/compare.html` and `report/compare.pdf`."))
