"""Quality results -> what a reviewer reads: MLflow metrics with stable names, the summary
lines at the top of the report, and one section per question with a plain-language reading.

Every number is put next to its reference (random maps scored the same way, or chance), since
a localisation score of 0.4 means nothing until one knows random maps score 0.1.
"""

from __future__ import annotations

import numpy as np

from report import checks, counterfactual, figures, measures
from report.checks import (
    BORDER_FLAG,
    IMAGE_FLAG,
    OUTSIDE_LUNGS_FLAG,
    SANITY_PASS,
    QualityResults,
    ShortcutVerdict,
)
from report.i18n import N_, _, decimal, ngettext, number, percent
from report.measures import MAX_CLASSES_SHOWN, ShownClasses
from report.render import Figure, Finding, Section, Table, other_classes_label

ROBUST_SPEARMAN = 0.7  # a map this far from its original moved more than the film did

# --- classification -------------------------------------------------------------------------


def shown_classes(results: QualityResults) -> ShownClasses:
    """The classes every per-class table, figure and metric shows one by one: all of them up
    to MAX_CLASSES_SHOWN, else those with the most images (measures.shown_classes)."""
    n_classes = len(results.class_names)
    return measures.shown_classes(
        np.bincount(np.asarray(results.y_true, dtype=int), minlength=n_classes),
        np.bincount(np.asarray(results.y_pred, dtype=int), minlength=n_classes))


def classification_metrics(roc_curves: list[measures.RocCurve],
                           calibration: measures.Calibration | None,
                           shown: ShownClasses | None = None) -> dict[str, float]:
    """roc_auc.<class> for the `shown` classes (default: all), roc_auc.macro over every
    class with an AUC, and the ECE."""
    aucs = [curve.auc for curve in roc_curves if curve.auc is not None]
    metrics = {f"roc_auc.{roc_curves[i].class_name}": roc_curves[i].auc
               for i in _indices(shown, len(roc_curves)) if roc_curves[i].auc is not None}
    if aucs:
        metrics["roc_auc.macro"] = float(np.mean(aucs))
    if calibration is not None:
        metrics["ece"] = calibration.ece
    return metrics


def _indices(shown: ShownClasses | None, n_curves: int) -> list[int]:
    """The shown classes' positions among `n_curves` curves (none without images)."""
    if shown is None:
        return list(range(n_curves))
    return [i for i in shown.indices if i < n_curves]


def classification_figures(roc_curves: list[measures.RocCurve],
                           calibration: measures.Calibration | None,
                           shown: ShownClasses | None = None) -> list[Figure]:
    """The ROC curves of the `shown` classes (default: all) and the reliability diagram."""
    if calibration is None:
        return []
    caption = _("Area under each curve in the legend; the dashed diagonal is chance.")
    if shown is not None and shown.left_out:
        caption += " " + ngettext(
            "The curve of %(count)s other class is not drawn.",
            "The curves of %(count)s other classes are not drawn.", shown.left_out,
        ) % {"count": number(shown.left_out)}
    drawn = [roc_curves[i] for i in _indices(shown, len(roc_curves))]
    # Figure titles stay in English: they name the figures' MLflow artifact files (N_ only
    # puts them in the catalog, for a translated display title).
    return [
        Figure(N_("ROC curves (one class vs the rest)"), figures.roc_svg(drawn), caption),
        Figure(N_("Reliability diagram"), figures.reliability_svg(calibration),
               _("Expected calibration error %(ece)s: how far the stated confidence is from "
                 "the observed accuracy, averaged over images.")
               % {"ece": decimal(calibration.ece, 3)}),
    ]


# --- explanation quality --------------------------------------------------------------------


def explanation_metrics(results: QualityResults) -> dict[str, float]:
    metrics = {}
    loc = results.localisation
    for key, name in (("pointing", "pointing_game"), ("energy", "energy_in_lesion"),
                      ("iou", "iou_15"), ("otsu_iou", "otsu_iou")):
        for prefix, suffix in (("", ""), ("random ", "_random")):
            values = loc.array(prefix + key)
            if len(values):
                metrics[f"localisation.{name}{suffix}"] = float(np.nanmean(values))
    metrics.update(_chexlocalize_metrics(results))
    short = results.shortcut
    for key, name in (("border", "border_energy"), ("outside_lungs", "outside_lung_energy")):
        if len(short.array(key)):
            metrics[f"shortcut.{name}"] = float(np.nanmean(short.array(key)))
            metrics[f"shortcut.{name}_random"] = float(np.nanmean(short.array("random " + key)))
            shown = shown_classes(results)
            for index, class_mean in checks.class_location(results, key).items():
                if index in shown:
                    metrics[f"shortcut.{name}.{results.class_names[index]}"] = class_mean
    if len(short.array("border")):
        metrics["shortcut.flagged_classes"] = float(len(checks.flagged_classes(results)))
    faith = results.faithfulness
    if faith:
        for curve in ("deletion", "insertion"):
            metrics[f"faithfulness.{curve}_auc"] = _mean_auc(faith.curves[curve])
            metrics[f"faithfulness.{curve}_auc_random"] = _mean_auc(faith.curves[f"random {curve}"])
        for key, suffix in (("cam", ""), ("random", "_random")):
            metrics[f"faithfulness.average_drop{suffix}"] = faith.average_drop[key]
            metrics[f"faithfulness.increase_in_confidence{suffix}"] = (
                faith.increase_in_confidence[key])
    if results.baselines:
        metrics.update(results.baselines.metrics())
        for name in ("road_gap",):
            metrics[f"faithfulness.{name}"] = results.baselines.values["method"][name]
    if results.robustness:
        metrics.update(results.robustness.metrics())
    if results.counterfactual:
        metrics.update(results.counterfactual.metrics())
    if results.markers:
        metrics.update(results.markers.metrics())
    if results.sanity and results.sanity.correlations:
        metrics["sanity.final_spearman"] = results.sanity.final_correlation
        metrics["sanity.passed"] = float(results.sanity.passed)
        for step, correlation in enumerate(results.sanity.correlations, start=1):
            metrics[f"sanity.spearman.stage_{step}"] = float(np.nanmean(correlation))
    return metrics


def _mean_auc(curves: np.ndarray) -> float:
    return float(np.mean(measures.curve_auc(curves)))


# --- what the reviewer reads ----------------------------------------------------------------


def summary(results: QualityResults, metrics: dict[str, float], accuracy: float,
            n_images: int, n_flagged: int) -> list[Finding]:
    """The "Read this first" lines, from the metrics already computed."""
    lines = [_classification_line(metrics, accuracy, n_images)]
    if "localisation.pointing_game" in metrics:
        lines.append(_localisation_line(metrics, len(results.localisation.array("pointing"))))
    if "faithfulness.deletion_auc" in metrics:
        lines.append(_faithfulness_line(metrics))
    if results.sanity and results.sanity.correlations:
        lines.append(_sanity_line(results))
    if results.baselines:
        lines.append(_baselines_line(results.baselines))
    if results.robustness:
        lines.append(_robustness_line(results.robustness))
    if "shortcut.border_energy" in metrics:
        lines.append(_shortcut_line(results, n_flagged))
    if results.markers and results.markers.films:
        lines.append(_marker_line(results.markers))
    if not results.plan.explanation_metrics:
        lines.append(Finding("info", _("Explanation quality was not measured (quality=off).")))
    return lines


def _classification_line(metrics, accuracy: float, n_images: int) -> Finding:
    ece = metrics.get("ece")
    values = {"accuracy": percent(accuracy, 1), "count": number(n_images)}
    if ece is None:
        text = ngettext("Accuracy %(accuracy)s on %(count)s image.",
                        "Accuracy %(accuracy)s on %(count)s images.", n_images)
    else:
        text = ngettext("Accuracy %(accuracy)s on %(count)s image; calibration error (ECE) "
                        "%(ece)s.",
                        "Accuracy %(accuracy)s on %(count)s images; calibration error (ECE) "
                        "%(ece)s.", n_images)
        values["ece"] = decimal(ece, 3)
    return Finding("info", text % values)


def _localisation_line(metrics, n_images: int) -> Finding:
    hit = metrics["localisation.pointing_game"]
    chance = metrics["localisation.pointing_game_random"]
    energy = metrics["localisation.energy_in_lesion"]
    energy_random = metrics["localisation.energy_in_lesion_random"]
    good = hit > chance + 0.1 and energy > energy_random
    return Finding(
        "pass" if good else "warn",
        ngettext("Heatmaps peak inside the lesion in %(hit)s of the %(count)s image correctly "
                 "classified with a lesion mask (random maps: %(hit_random)s); %(energy)s of "
                 "their energy lies in the lesion (random: %(energy_random)s).",
                 "Heatmaps peak inside the lesion in %(hit)s of the %(count)s images correctly "
                 "classified with a lesion mask (random maps: %(hit_random)s); %(energy)s of "
                 "their energy lies in the lesion (random: %(energy_random)s).", n_images)
        % {"hit": percent(hit, 0), "count": number(n_images), "hit_random": percent(chance, 0),
           "energy": percent(energy, 0), "energy_random": percent(energy_random, 0)},
    )


def _faithfulness_line(metrics) -> Finding:
    deletion, deletion_random = (metrics["faithfulness.deletion_auc"],
                                 metrics["faithfulness.deletion_auc_random"])
    insertion, insertion_random = (metrics["faithfulness.insertion_auc"],
                                   metrics["faithfulness.insertion_auc_random"])
    good = deletion < deletion_random and insertion > insertion_random
    values = {"deletion": decimal(deletion, 2), "deletion_random": decimal(deletion_random, 2),
              "insertion": decimal(insertion, 2), "insertion_random": decimal(insertion_random, 2)}
    if good:
        return Finding("pass", _(
            "Highlighted pixels matter to the model: deleting them first gives a deletion AUC "
            "of %(deletion)s (random order: %(deletion_random)s; lower is better), inserting "
            "them first %(insertion)s (random: %(insertion_random)s; higher is better).")
            % values)
    return Finding("warn", _(
        "Highlighted pixels do not clearly matter more than random ones: deleting them first "
        "gives a deletion AUC of %(deletion)s (random order: %(deletion_random)s; lower is "
        "better), inserting them first %(insertion)s (random: %(insertion_random)s; higher is "
        "better).") % values)


def _sanity_line(results: QualityResults) -> Finding:
    final = decimal(results.sanity.final_correlation, 2)
    if results.sanity.passed:
        return Finding("pass", _(
            "Sanity check passed: with the weights randomised the maps change (rank "
            "correlation %(correlation)s with the originals), so they depend on what the model "
            "learned.") % {"correlation": final})
    return Finding("warn", _(
        "Sanity check failed: with the weights randomised the maps barely change (rank "
        "correlation %(correlation)s ≥ %(threshold)s); they may show the image's edges rather "
        "than the model's reasoning.")
        % {"correlation": final, "threshold": _as_written(SANITY_PASS)})


def _shortcut_line(results: QualityResults, n_flagged: int) -> Finding:
    """The verdict rests on the counterfactual test where it ran; location decides only for
    classes it could not test (and everywhere when it did not run)."""
    verdicts = checks.shortcut_verdicts(results)
    flagged = [verdict for verdict in verdicts if verdict.flagged]
    if not flagged:
        return _no_shortcut_line(results, verdicts, n_flagged)
    named = "; ".join(_flagged_reason(verdict) for verdict in flagged[:MAX_CLASSES_SHOWN])
    if len(flagged) > MAX_CLASSES_SHOWN:
        more = len(flagged) - MAX_CLASSES_SHOWN
        named += "; " + ngettext("and %(count)s more class", "and %(count)s more classes",
                                 more) % {"count": number(more)}
    return Finding("warn", _(
        "Possible shortcut — %(classes)s. The model may read markers, text or edges instead of "
        "the lungs (see Shortcuts).") % {"classes": named})


def _no_shortcut_line(results: QualityResults, verdicts: list[ShortcutVerdict],
                      n_flagged: int) -> Finding:
    tested = [v for v in verdicts if v.basis == "effect"]
    if not tested:
        return Finding("pass", ngettext(
            "No class puts more than %(border)s of its salient map in the image border or more "
            "than %(outside)s outside the lungs (%(count)s image flagged on its own).",
            "No class puts more than %(border)s of its salient map in the image border or more "
            "than %(outside)s outside the lungs (%(count)s images flagged on their own).",
            n_flagged) % {"border": percent(BORDER_FLAG, 0),
                          "outside": percent(OUTSIDE_LUNGS_FLAG, 0), "count": number(n_flagged)})
    return Finding("pass", ngettext(
        "Hiding everything outside the lungs, or the image border, changes the predictions of "
        "no class much more than hiding an equal area inside the lungs (%(count)s class "
        "tested on %(films)s sample films).",
        "Hiding everything outside the lungs, or the image border, changes the predictions of "
        "no class much more than hiding an equal area inside the lungs (%(count)s classes "
        "tested on %(films)s sample films).",
        len(tested)) % {"count": number(len(tested)),
                        "films": number(results.counterfactual.sample_images)})


def _flagged_reason(verdict: ShortcutVerdict) -> str:
    if verdict.basis == "location":
        return _("%(class_name)s: %(border)s of its salient map in the border, %(outside)s "
                 "outside the lungs") % {"class_name": verdict.class_name,
                                         "border": percent(verdict.border, 0),
                                         "outside": percent(verdict.outside_lungs, 0)}
    strongest = max((verdict.effect.condition(name) for name in verdict.flagged_by),
                    key=lambda condition: condition.flip_effect.estimate)
    return _("%(class_name)s: hiding %(region)s changes %(flips)s of its predictions, hiding "
             "an equal area inside the lungs %(control)s (difference %(effect)s, 95%% CI "
             "%(low)s to %(high)s)") % {
        "class_name": verdict.class_name, "region": _(REGION_NAMES[strongest.condition]),
        "flips": percent(strongest.flip_rate, 0),
        "control": percent(strongest.control_flip_rate, 0),
        "effect": _signed_points(strongest.flip_effect.estimate),
        "low": _signed_points(strongest.flip_effect.low),
        "high": _signed_points(strongest.flip_effect.high)}


# What each hidden region is called in sentences and in tables (counterfactual.CONDITIONS).
REGION_NAMES = {"outside_lungs": N_("everything outside the lungs"),
                "border": N_("the image border")}
REGION_SHORT_NAMES = {"outside_lungs": N_("outside lungs"), "border": N_("border")}


def _marker_line(markers) -> Finding:
    warned = [c for c in markers.classes if c.warned]
    if not warned:
        return Finding("pass" if not markers.marked else "info", ngettext(
            "Burned-in markers (bright, sharp-edged marks near the film's edge: tags, text, "
            "rulers) were found on %(marked)s of %(count)s film, no more often in one class "
            "than in the others.",
            "Burned-in markers (bright, sharp-edged marks near the film's edge: tags, text, "
            "rulers) were found on %(marked)s of %(count)s films, no more often in one class "
            "than in the others.", markers.films) % {
            "marked": number(markers.marked), "count": number(markers.films)})
    named = "; ".join(
        _("%(class_name)s %(share)s against %(rest)s of the other classes' films "
          "(%(p)s)") % {"class_name": c.class_name, "share": percent(c.prevalence, 0),
                        "rest": percent(c.rest_prevalence, 0), "p": _p_phrase(c.p_value)}
        for c in warned[:MAX_CLASSES_SHOWN])
    return Finding("warn", _(
        "Burned-in markers (bright, sharp-edged marks near the film's edge: tags, text, "
        "rulers) are far more common in one class: %(classes)s. The data alone lets a model "
        "tell the class by its markers, before any model is trained.") % {"classes": named})


def _p_phrase(p: float) -> str:
    """"p < 0.001" or "p = 0.012" (Fisher's exact test)."""
    shown = _p_value(p)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def _p_value(p: float) -> str:
    if not np.isfinite(p):
        return "—"
    return "< " + decimal(0.001, 3) if p < 0.001 else decimal(p, 3)


def _as_written(threshold: float) -> str:
    """A threshold with as many decimals as its constant is written with: 0.5 -> "0.5"."""
    written = repr(float(threshold))
    digits = len(written.split(".")[1]) if "." in written and "e" not in written else 3
    return decimal(threshold, 0 if written.endswith(".0") else digits)


# The trust-check sections, in report order, each built from the quality results alone.
_SECTIONS = {
    "localisation": lambda results, n_flagged: _localisation_section(results),
    "faithfulness": lambda results, n_flagged: _faithfulness_section(results),
    "sanity": lambda results, n_flagged: _sanity_section(results),
    "baselines": lambda results, n_flagged: _baselines_section(results),
    "robustness": lambda results, n_flagged: _robustness_section(results),
    "shortcuts": lambda results, n_flagged: _shortcut_section(results, n_flagged),
}


def section(name: str, results: QualityResults, n_flagged: int) -> Section | None:
    """One trust-check section, as soon as the results it rests on exist (`localisation`
    and `shortcuts` need only the stream; `faithfulness` and `sanity` their checks)."""
    return _SECTIONS[name](results, n_flagged)


def sections(results: QualityResults, n_flagged: int,
             built: dict[str, Section | None] | None = None) -> list[Section]:
    """The trust-check sections in report order; `built`: those made already."""
    if not results.plan.explanation_metrics:
        return []
    built = built or {}
    made = [built[name] if name in built else section(name, results, n_flagged)
            for name in _SECTIONS]
    return [item for item in made if item is not None]


def _localisation_section(results: QualityResults) -> Section | None:
    loc = results.localisation
    title = _("Localisation: do the heatmaps point at the lesion?")
    if not len(loc.array("pointing")):
        return Section(
            "localisation", title,
            _("The data source has no lesion masks or boxes, so localisation was not "
              "measured."))
    rows = [_localisation_row(_("All"), loc, slice(None))]
    labels = np.asarray(loc.labels)
    shown, others, n_others = _split_by_class(labels, shown_classes(results))
    for c in shown:
        rows.append(_localisation_row(results.class_names[c], loc, labels == c))
    if n_others:
        rows.append(_localisation_row(other_classes_label(n_others), loc, others))
    return Section(
        "localisation", title,
        _("Pointing game: share of images whose heatmap maximum lies inside the lesion. "
          "Energy: share of the heatmap's total mass inside the lesion. IoU: overlap of the "
          "heatmap thresholded at 15%% of its maximum with the lesion. Random maps of the same "
          "smoothness are scored the same way as a reference. Correctly classified images with "
          "a lesion mask only. The second table follows the CheXlocalize protocol (Saporta et "
          "al. 2022): each map thresholded by Otsu's method, mIoU and hit rate per class with "
          "bootstrap 95%% intervals over images.") % {},
        tables=[Table([_("Class"), _("Images"), _("Pointing"), _("(random)"), _("Energy"),
                       _("(random)"), _("IoU@15%"), _("(random)")], rows),
                _chexlocalize_table(results)],
    )


def _chexlocalize(results: QualityResults) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per class with lesion masks: mIoU of the Otsu-thresholded maps and hit rate (the
    pointing game), each with its 1,000-resample bootstrap 95% interval (Saporta et al.
    2022)."""
    loc = results.localisation
    labels = np.asarray(loc.labels)
    shown, _others, _n_others = _split_by_class(labels, shown_classes(results))
    return {results.class_names[c]: _chexlocalize_scores(loc, labels == c) for c in shown}


def _chexlocalize_scores(loc, chosen) -> dict[str, tuple[float, float, float]]:
    return {"miou": measures.mean_interval(loc.array("otsu_iou")[chosen]),
            "hit_rate": measures.mean_interval(loc.array("pointing")[chosen])}


def _chexlocalize_metrics(results: QualityResults) -> dict[str, float]:
    metrics = {}
    for name, scores in _chexlocalize(results).items():
        for key, (mean, low, high) in scores.items():
            metrics[f"localisation.{key}.{name}"] = mean
            metrics[f"localisation.{key}_low.{name}"] = low
            metrics[f"localisation.{key}_high.{name}"] = high
    return metrics


def _chexlocalize_table(results: QualityResults) -> Table:
    def shown(interval) -> str:
        mean, low, high = interval
        # TRANSLATORS: a mean and its 95% confidence interval, e.g. "0.42 (0.35-0.49)".
        return _("%(mean)s (%(low)s-%(high)s)") % {
            "mean": decimal(mean, 2), "low": decimal(low, 2), "high": decimal(high, 2)}

    loc = results.localisation
    labels = np.asarray(loc.labels)
    classes, others, n_others = _split_by_class(labels, shown_classes(results))
    groups = [(results.class_names[c], labels == c, None) for c in classes]
    scores = _chexlocalize(results)
    if n_others:  # the classes left out: one bootstrap over their images together
        groups.append((other_classes_label(n_others), others,
                       _chexlocalize_scores(loc, others)))
    rows = []
    for name, chosen, pooled in groups:
        row_scores = pooled or scores[name]
        rows.append([name, number(int(chosen.sum())), shown(row_scores["miou"]),
                     decimal(np.nanmean(loc.array("random otsu_iou")[chosen]), 2),
                     shown(row_scores["hit_rate"]),
                     decimal(np.nanmean(loc.array("random pointing")[chosen]), 2)])
    return Table([_("Class"), _("Images"), _("mIoU, Otsu (95% CI)"), _("(random)"),
                  _("Hit rate (95% CI)"), _("(random)")], rows)


def _localisation_row(name, loc, selection) -> list[str]:
    def mean(key):
        return float(np.nanmean(loc.array(key)[selection]))

    return [name, number(len(loc.array("pointing")[selection]))] + [
        decimal(mean(prefix + key), 2)
        for key in ("pointing", "energy", "iou") for prefix in ("", "random ")
    ]


def _faithfulness_section(results: QualityResults) -> Section | None:
    faith = results.faithfulness
    if faith is None:
        return None
    rows = [_faithfulness_row(_("All"), faith, slice(None))]
    shown, others, n_others = _split_by_class(faith.labels, shown_classes(results))
    for c in shown:
        rows.append(_faithfulness_row(results.class_names[c], faith, faith.labels == c))
    if n_others:
        rows.append(_faithfulness_row(other_classes_label(n_others), faith, others))
    mean = {name: curve.mean(axis=0) for name, curve in faith.curves.items()}
    n = len(faith.labels)
    reading = " ".join([
        ngettext("On a sample of %(count)s image, pixels are removed (set to black) or "
                 "inserted (into a blurred copy) in the order of the heatmap, most important "
                 "first, and the probability of the explained class is tracked (Petsiuk et al. "
                 "2018).",
                 "On a sample of %(count)s images, pixels are removed (set to black) or "
                 "inserted (into a blurred copy) in the order of the heatmap, most important "
                 "first, and the probability of the explained class is tracked (Petsiuk et al. "
                 "2018).", n) % {"count": number(n)},
        _("A faithful map makes deletion fall fast (low AUC) and insertion rise fast (high "
          "AUC), compared with random maps. Average Drop: mean %% of the probability lost when "
          "only the map-weighted image is shown (lower is better); Increase in Confidence: %% "
          "of images whose probability rises (Chattopadhyay et al. 2018).") % {},
    ])
    # The checks give Average Drop and Increase in Confidence in percent (0-100).
    drop, increase = faith.average_drop, faith.increase_in_confidence
    heatmap_order, random_order = _("heatmap order"), _("random order")
    # Figure titles stay in English (artifact file names; N_ only marks them for the
    # catalog); the titles passed to the SVG functions are drawn, so translated.
    return Section(
        "faithfulness", _("Faithfulness: do the highlighted pixels matter to the model?"),
        reading,
        findings=[
            Finding("info", _("Average Drop %(drop)s (random maps %(drop_random)s); Increase "
                              "in Confidence %(increase)s (random %(increase_random)s).")
                    % {"drop": percent(drop["cam"] / 100, 1),
                       "drop_random": percent(drop["random"] / 100, 1),
                       "increase": percent(increase["cam"] / 100, 1),
                       "increase_random": percent(increase["random"] / 100, 1)}),
        ],
        tables=[Table([_("Class"), _("Images"), _("Deletion AUC"), _("(random)"),
                       _("Insertion AUC"), _("(random)")], rows)],
        figures=[
            Figure(N_("Deletion"), figures.deletion_insertion_svg(
                faith.fractions, {heatmap_order: mean["deletion"],
                                  random_order: mean["random deletion"]}, _("Deletion"),
                baselines=[random_order]),
                   _("Mean class probability as pixels are removed; lower is better.")),
            Figure(N_("Insertion"), figures.deletion_insertion_svg(
                faith.fractions, {heatmap_order: mean["insertion"],
                                  random_order: mean["random insertion"]}, _("Insertion"),
                baselines=[random_order]),
                   _("Mean class probability as pixels are restored; higher is better.")),
        ],
    )


def _faithfulness_row(name, faith, selection) -> list[str]:
    aucs = [float(np.mean(measures.curve_auc(faith.curves[key][selection])))
            for key in ("deletion", "random deletion", "insertion", "random insertion")]
    return [name, number(len(faith.labels[selection]))] + [decimal(v, 3) for v in aucs]


def _sanity_section(results: QualityResults) -> Section | None:
    sanity = results.sanity
    if sanity is None or not sanity.correlations:
        return None
    stages = [_("down to %(layer)s") % {"layer": layer} for layer in sanity.stages]
    rows = [[stage, decimal(np.nanmean(c), 2), decimal(np.nanstd(c), 2)]
            for stage, c in zip(stages, sanity.correlations, strict=True)]
    return Section(
        "sanity", _("Sanity check: do the maps depend on the model?"),
        _("The model's weights are re-initialised layer by layer from the output down "
          "(cascading randomisation, Adebayo et al. 2018) and each stage's maps are compared "
          "with the original ones by Spearman rank correlation. Maps of a trustworthy method "
          "lose their resemblance (correlation well below %(threshold)s); maps that survive "
          "the destruction of the model show the image, not the model. The registered model is "
          "untouched: weights are restored afterwards.")
        % {"threshold": _as_written(SANITY_PASS)},
        findings=[_sanity_line(results)],
        tables=[Table([_("Randomised"), _("Spearman (mean)"), _("(sd)")], rows)],
        figures=[Figure(N_("Rank correlation per stage"),
                        figures.sanity_svg(stages, sanity.correlations),
                        _("Correlation of the maps with the originals as more layers are "
                          "randomised."))],
    )


def _shortcut_section(results: QualityResults, n_flagged: int) -> Section | None:
    short = results.shortcut
    if not len(short.array("border")):
        return None
    verdicts = {verdict.index: verdict for verdict in checks.shortcut_verdicts(results)}
    random_border = np.nanmean(short.array("random border"))
    tables = [_effect_table(results)] if results.counterfactual else []
    tables.append(_location_table(results, verdicts))
    if results.markers and results.markers.films:
        tables.append(_marker_table(results))
    lines = [_shortcut_line(results, n_flagged)]
    if results.markers and results.markers.films:
        lines.append(_marker_line(results.markers))
    return Section(
        "shortcuts", _("Shortcuts: does the model look at the lungs?"),
        _shortcut_reading(results, random_border),
        findings=lines,
        tables=tables,
        figures=_hidden_figures(results) + _mean_map_figures(results),
    )


def _shortcut_reading(results: QualityResults, random_border: float) -> str:
    reading = _(
        "Models trained on pooled COVID-19 data sets have been shown to score well by reading "
        "hospital text markers, laterality tokens and image borders instead of the lungs "
        "(DeGrave et al. 2021). Where a heatmap lies does not settle it: a marker of another "
        "size or place passes any threshold on location. So the verdict rests on what the "
        "model does when the suspect region is gone.")
    if results.counterfactual:
        reading += " " + _(
            "On %(count)s sample films spread over the run, everything outside the lung "
            "fields is hidden, and separately the border band (8%% of the image side). The "
            "hidden region is filled from the film's own kept pixels and the median of the "
            "sample's films without a marker, never black: no marker survives, and the film "
            "keeps its brightness. The control hides an equal area inside the lungs (all of "
            "the lungs when they are smaller). A class is flagged when hiding the region "
            "changes its predictions more often than hiding the control, by more than "
            "%(threshold)s percentage points at the lower end of a 95%% paired bootstrap "
            "interval; classes predicted for fewer than %(minimum)s sample films are judged "
            "by location alone.") % {
            "count": number(results.counterfactual.sample_images),
            "threshold": number(round(100 * results.counterfactual.threshold)),
            "minimum": number(counterfactual.MIN_IMAGES)}
    return reading + " " + _(
        "As supporting evidence, the salient part of each heatmap (values at least half the "
        "map's maximum) is located: its share in the border band (random maps put "
        "%(random_border)s there) and outside the lung fields (classes past %(class_border)s "
        "or %(class_outside)s; single images past %(image_border)s / %(image_outside)s are "
        "listed). Lung fields: %(lung_fields)s. Burned-in markers are counted per class on "
        "every film, without the model.") % {
        "random_border": percent(random_border, 0),
        "class_border": percent(BORDER_FLAG, 0),
        "class_outside": percent(OUTSIDE_LUNGS_FLAG, 0),
        "image_border": percent(IMAGE_FLAG, 0),
        "image_outside": percent(OUTSIDE_LUNGS_FLAG, 0),
        # checks.QualityAccumulator's wording; translated when marked there (N_).
        "lung_fields": _(results.lung_source)}


def _effect_table(results: QualityResults) -> Table:
    """What happens when everything outside the lungs (or the border) is hidden, per class
    predicted on the sample: at most MAX_CLASSES_SHOWN classes, those with the most films."""
    # Flagged classes first, then those with the most films: what a reviewer must see first.
    effects = sorted(results.counterfactual.classes,
                     key=lambda e: (not e.flagged, -e.images, e.index))
    rows = []
    for effect in effects[:MAX_CLASSES_SHOWN]:
        if not effect.tested:
            rows.append([effect.class_name, number(effect.images), "—", "—", "—", "—",
                         _("too few films")])
            continue
        for condition in effect.conditions:
            rows.append([
                effect.class_name, number(effect.images),
                _(REGION_SHORT_NAMES[condition.condition]),
                _("%(changed)s (%(control)s)") % {
                    "changed": percent(condition.flip_rate, 0),
                    "control": percent(condition.control_flip_rate, 0)},
                _("%(estimate)s (%(low)s to %(high)s)") % {
                    "estimate": _signed_points(condition.flip_effect.estimate),
                    "low": _signed_points(condition.flip_effect.low),
                    "high": _signed_points(condition.flip_effect.high)},
                _("%(drop)s (%(control)s)") % {"drop": decimal(condition.drop, 2),
                                              "control": decimal(condition.control_drop, 2)},
                _("yes") if condition.flagged else _("no")])
    return Table([_("Class (predicted)"), _("Films"), _("Hidden"),
                  _("Predictions changed (control)"), _("Difference (95% CI)"),
                  _("Probability drop (control)"), _("Flagged")], rows,
                 title=_("What happens when everything outside the lungs is hidden"))


def _signed_points(share: float) -> str:
    """A difference of two shares, in percentage points and signed: +96%, -3%."""
    shown = percent(share, 0)
    return shown if shown.startswith(("-", "−", "—")) else "+" + shown


def _location_table(results: QualityResults, verdicts: dict[int, ShortcutVerdict]) -> Table:
    short = results.shortcut
    border = checks.class_location(results, "border")
    outside = checks.class_location(results, "outside_lungs")
    selection = shown_classes(results)
    left_out = [c for c in sorted(border) if c not in selection]

    def past(c: int) -> bool:
        return verdicts[c].past_location_thresholds

    rows = [[results.class_names[c], decimal(border[c], 2),
             decimal(outside.get(c, float("nan")), 2), _("yes") if past(c) else _("no")]
            for c in (selection.indices if selection.left_out else sorted(border))
            if c in border]
    if left_out:
        count = sum(past(c) for c in left_out)
        # TRANSLATORS: the last cell of the pooled row: how many of its classes are past.
        rows.append([other_classes_label(len(left_out)),
                     decimal(np.nanmean([border[c] for c in left_out]), 2),
                     decimal(np.nanmean([outside.get(c, np.nan) for c in left_out]), 2),
                     ngettext("%(count)s flagged", "%(count)s flagged", count)
                     % {"count": number(count)}])
    rows.append([_("random maps"), decimal(np.nanmean(short.array("random border")), 2),
                 decimal(np.nanmean(short.array("random outside_lungs")), 2), ""])
    return Table([_("Class (true)"), _("Salient map in border"), _("Outside lungs"),
                  _("Past location thresholds")], rows,
                 title=_("Where the salient map lies (supporting evidence)"))


def _marker_table(results: QualityResults) -> Table:
    classes = sorted((c for c in results.markers.classes if c.films),
                     key=lambda c: -c.films)[:MAX_CLASSES_SHOWN]
    rows = [[c.class_name, number(c.films), percent(c.prevalence, 0),
             percent(c.rest_prevalence, 0), _p_value(c.p_value),
             _("yes") if c.warned else _("no")] for c in classes]
    return Table([_("Class (true)"), _("Films"), _("With burned-in markers"),
                  _("Other classes"), _("p (Fisher)"), _("Warning")], rows,
                 title=_("Burned-in markers per class (found without the model)"))


def _hidden_figures(results: QualityResults) -> list[Figure]:
    if not results.hidden_examples:
        return []
    return [Figure(N_("Films before and after hiding"),
                   figures.hidden_films_svg(results.hidden_examples, results.class_names,
                                            {name: _(title) for name, title in
                                             HIDDEN_TITLES.items()}),
                   _("A few sample films as the model saw them, with everything outside the "
                     "lungs hidden, and with the border hidden; above each, the predicted "
                     "class and its probability."))]


HIDDEN_TITLES = {"before": N_("As seen"), "outside_lungs": N_("Outside lungs hidden"),
                 "border": N_("Border hidden")}


def _mean_map_figures(results: QualityResults) -> list[Figure]:
    selection = shown_classes(results)
    mean_maps = {kind: _shown_maps(maps, results.class_names, selection)
                 for kind, maps in results.mean_maps.items()}
    drawn_titles = {"true": _("Mean heatmap by true class"),
                    "predicted": _("Mean heatmap by predicted class")}
    # Figure titles stay in English (they name the artifact files; N_ only marks them).
    figure_titles = {"true": N_("Mean heatmap per true class"),
                     "predicted": N_("Mean heatmap per predicted class")}
    return [
        Figure(figure_titles[kind],
               figures.mean_heatmaps_svg(mean_maps[kind], drawn_titles[kind]),
               _("Where the evidence usually lies; a bright corner or edge is a warning sign."))
        for kind in ("true", "predicted") if mean_maps.get(kind)
    ]


def _baselines_section(results: QualityResults) -> Section | None:
    scores = results.baselines
    if scores is None:
        return None
    from report.baselines import METRICS

    titles = dict(scores.explainers)
    rows = []
    for key, label, higher in METRICS:
        cells = [scores.values[explainer][key] for explainer in titles]
        if not np.isfinite(cells[0]):
            continue
        # baselines.METRICS' labels; translated when marked there (N_).
        check = (_("%(check)s (higher is better)") if higher
                 else _("%(check)s (lower is better)")) % {"check": _(label)}
        rows.append([check, *("—" if not np.isfinite(v) else decimal(v, 3) for v in cells)])
    line = _baselines_line(scores)
    curves = {f"{_(titles[k])}, {order.upper()}": scores.road_curves[k][order]
              for k in ("method", "randomcam", "sobel") for order in ("morf", "lerf")}
    reading = " ".join([
        ngettext("On %(count)s image of the sample, the method's maps are scored beside three "
                 "explainers that know nothing: RandomCAM (the model's features under random "
                 "channel weights), Sobel edges (the film's own edges, no model) and random "
                 "smooth maps.",
                 "On %(count)s images of the sample, the method's maps are scored beside three "
                 "explainers that know nothing: RandomCAM (the model's features under random "
                 "channel weights), Sobel edges (the film's own edges, no model) and random "
                 "smooth maps.", scores.n_images) % {"count": number(scores.n_images)},
        ngettext("ROAD (Rong et al. 2022, on the first %(count)s image) removes pixels in the "
                 "map's order, most relevant first (MoRF) or least relevant first (LeRF), and "
                 "fills them from their neighbours with a little noise instead of black, which "
                 "an X-ray never shows the model; the gap between the two curves is the map's "
                 "faithfulness.",
                 "ROAD (Rong et al. 2022, on the first %(count)s images) removes pixels in the "
                 "map's order, most relevant first (MoRF) or least relevant first (LeRF), and "
                 "fills them from their neighbours with a little noise instead of black, which "
                 "an X-ray never shows the model; the gap between the two curves is the map's "
                 "faithfulness.", scores.road_images) % {"count": number(scores.road_images)},
    ])
    return Section(
        "baselines", _("Against baselines: does the method know more than chance?"),
        reading,
        findings=[line],
        tables=[Table([_("Check"), *(_(title) for title in titles.values())], rows)],
        figures=[Figure(N_("ROAD"), figures.deletion_insertion_svg(
            scores.road_fractions, curves, _("ROAD: MoRF and LeRF")),
            _("Mean class probability as pixels are removed and imputed; the method's MoRF "
              "should fall fastest and its LeRF stay highest."))],
    )


def _robustness_section(results: QualityResults) -> Section | None:
    stable = results.robustness
    if stable is None:
        return None
    rows = [[_capitalised(_(label)), _two(ssim), _two(rho),
             "—" if flips is None else number(flips)]
            for label, ssim, rho, flips, _n in stable.rows()]
    line = _robustness_line(stable)
    reading = " ".join([
        ngettext("%(count)s image of the sample is changed as a second acquisition of the same "
                 "film might be: sensor noise (3%% of the range), a 4-pixel shift (the map is "
                 "shifted back before the comparison), JPEG at quality 75 and 10%% lower "
                 "contrast.",
                 "%(count)s images of the sample are changed as a second acquisition of the "
                 "same film might be: sensor noise (3%% of the range), a 4-pixel shift (the map "
                 "is shifted back before the comparison), JPEG at quality 75 and 10%% lower "
                 "contrast.", stable.n) % {"count": number(stable.n)},
        _("Each changed film is explained for the same class, and its map compared with the "
          "original by SSIM and Spearman rank correlation; random maps give the floor. A "
          "prediction flip is a changed film the model classifies differently. Below "
          "%(threshold)s a map moves more than the film did.")
        % {"threshold": _as_written(ROBUST_SPEARMAN)},
    ])
    return Section(
        "robustness", _("Robustness: do the maps survive acquisition changes?"),
        reading,
        findings=[line],
        tables=[Table([_("Change"), "SSIM", "Spearman", _("Prediction flips")], rows)],
    )


def _baselines_line(scores) -> Finding:
    wins, losses = scores.beaten()
    method = dict(scores.explainers)["method"]
    if losses:
        # baselines.METRICS' labels; translated when marked there (N_).
        return Finding("warn", _(
            "%(method)s does no better than a baseline (RandomCAM, Sobel edges or random maps) "
            "on: %(checks)s. There, the check measures the film or the features, not what the "
            "model made of them.")
            % {"method": method, "checks": ", ".join(_(label) for label in losses)})
    return Finding("pass", _("%(method)s beats RandomCAM, Sobel edges and random maps on every "
                             "check (%(count)s).")
                   % {"method": method, "count": number(len(wins))})


def _robustness_line(stable) -> Finding:
    from report.robustness import PERTURBATIONS

    means = {name: _finite_mean(values) for name, values in stable.spearman.items()}
    measured = {name: value for name, value in means.items() if np.isfinite(value)}
    flips = sum(stable.flips.values())
    predictions = len(stable.flips) * stable.n
    values = {"flipped": number(flips), "count": number(predictions)}
    if not measured:
        return Finding("warn", ngettext(
            "The maps' stability could not be measured: they are flat (all zero) on the "
            "changed films; %(flipped)s of %(count)s prediction flipped.",
            "The maps' stability could not be measured: they are flat (all zero) on the "
            "changed films; %(flipped)s of %(count)s predictions flipped.",
            predictions) % values)
    weakest = min(measured, key=measured.get)
    level = "pass" if measured[weakest] >= ROBUST_SPEARMAN and not flips else "warn"
    return Finding(level, ngettext(
        "Under acquisition changes the maps are least stable under %(change)s (Spearman "
        "%(spearman)s with the original; random maps %(random)s); %(flipped)s of %(count)s "
        "prediction flipped.",
        "Under acquisition changes the maps are least stable under %(change)s (Spearman "
        "%(spearman)s with the original; random maps %(random)s); %(flipped)s of %(count)s "
        "predictions flipped.", predictions)
        # robustness.PERTURBATIONS' labels; translated when marked there.
        % {**values, "change": _(PERTURBATIONS[weakest].label),
           "spearman": decimal(measured[weakest], 2),
           "random": decimal(_finite_mean(stable.random_spearman), 2)})


def _finite_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _two(value: float) -> str:
    return decimal(value, 2) if np.isfinite(value) else "—"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _split_by_class(labels, shown: ShownClasses) -> tuple[list[int], np.ndarray, int]:
    """The shown classes that have images among `labels` (in the order shown), the mask of
    the images of every other class, and how many other classes those are. Unlabelled
    images (negative labels) belong to neither."""
    labels = np.asarray(labels, dtype=int)
    present = {int(c) for c in np.unique(labels) if c >= 0}
    if not shown.left_out:
        return sorted(present), np.zeros(len(labels), dtype=bool), 0
    classes = [c for c in shown.indices if c in present]
    others = (labels >= 0) & ~np.isin(labels, classes)
    return classes, others, len(present) - len(classes)


def _shown_maps(maps: dict[str, np.ndarray], class_names, shown: ShownClasses
                ) -> dict[str, np.ndarray]:
    """At most MAX_CLASSES_SHOWN mean-map panels: the shown classes first, then the others
    (a class predicted but never true has a panel by predicted class)."""
    if len(maps) <= MAX_CLASSES_SHOWN:
        return maps
    first = [class_names[c] for c in shown.indices if class_names[c] in maps]
    rest = [name for name in maps if name not in set(first)]
    return {name: maps[name] for name in (first + rest)[:MAX_CLASSES_SHOWN]}
