"""Quality results -> what a reviewer reads: MLflow metrics with stable names, the summary
lines at the top of the report, and one section per question with a plain-language reading.

Every number is put next to its reference (random maps scored the same way, or chance), since
a localisation score of 0.4 means nothing until one knows random maps score 0.1.
"""

from __future__ import annotations

import numpy as np

from report import figures, measures
from report.checks import (
    BORDER_FLAG,
    IMAGE_FLAG,
    OUTSIDE_LUNGS_FLAG,
    SANITY_PASS,
    QualityResults,
)
from report.render import Figure, Finding, Section, Table

ROBUST_SPEARMAN = 0.7  # a map this far from its original moved more than the film did

# --- classification -------------------------------------------------------------------------


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and space; anything else becomes _."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def classification_metrics(roc_curves: list[measures.RocCurve],
                           calibration: measures.Calibration | None) -> dict[str, float]:
    metrics = {f"roc_auc.{curve.class_name}": curve.auc for curve in roc_curves
               if curve.auc is not None}
    if metrics:
        metrics["roc_auc.macro"] = float(np.mean(list(metrics.values())))
    if calibration is not None:
        metrics["ece"] = calibration.ece
    return metrics


def classification_figures(roc_curves: list[measures.RocCurve],
                           calibration: measures.Calibration | None) -> list[Figure]:
    if calibration is None:
        return []
    return [
        Figure("ROC curves (one class vs the rest)", figures.roc_svg(roc_curves),
               "Area under each curve in the legend; the dashed diagonal is chance."),
        Figure("Reliability diagram", figures.reliability_svg(calibration),
               f"Expected calibration error {calibration.ece:.3f}: how far the stated "
               "confidence is from the observed accuracy, averaged over images."),
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
            for index, class_mean in _per_class(short, key).items():
                metrics[f"shortcut.{name}.{results.class_names[index]}"] = class_mean
    if len(short.array("border")):
        metrics["shortcut.flagged_classes"] = float(len(flagged_classes(results)))
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
    if results.sanity and results.sanity.correlations:
        metrics["sanity.final_spearman"] = results.sanity.final_correlation
        metrics["sanity.passed"] = float(results.sanity.passed)
        for step, correlation in enumerate(results.sanity.correlations, start=1):
            metrics[f"sanity.spearman.stage_{step}"] = float(np.nanmean(correlation))
    return metrics


def flagged_classes(results: QualityResults) -> list[tuple[str, float, float]]:
    """(class, mean border share, mean outside-lung share) for classes past a threshold."""
    border = _per_class(results.shortcut, "border")
    outside = _per_class(results.shortcut, "outside_lungs")
    return [
        (results.class_names[i], border[i], outside.get(i, float("nan")))
        for i in border
        if border[i] > BORDER_FLAG or outside.get(i, 0.0) > OUTSIDE_LUNGS_FLAG
    ]


def _per_class(scores, key: str) -> dict[int, float]:
    labels = np.asarray(scores.labels)
    values = scores.array(key)
    return {
        int(c): float(np.nanmean(values[labels == c]))
        for c in np.unique(labels) if c >= 0 and np.isfinite(values[labels == c]).any()
    }


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
    if not results.plan.explanation_metrics:
        lines.append(Finding("info", "Explanation quality was not measured (quality=off)."))
    return lines


def _classification_line(metrics, accuracy: float, n_images: int) -> Finding:
    ece = metrics.get("ece")
    calibration = f"; calibration error (ECE) {ece:.3f}" if ece is not None else ""
    return Finding("info", f"Accuracy {accuracy:.1%} on {n_images} images{calibration}.")


def _localisation_line(metrics, n_images: int) -> Finding:
    hit = metrics["localisation.pointing_game"]
    chance = metrics["localisation.pointing_game_random"]
    energy = metrics["localisation.energy_in_lesion"]
    energy_random = metrics["localisation.energy_in_lesion_random"]
    good = hit > chance + 0.1 and energy > energy_random
    return Finding(
        "pass" if good else "warn",
        f"Heatmaps peak inside the lesion in {hit:.0%} of the {_images(n_images)} correctly "
        f"classified with a lesion mask (random maps: {chance:.0%}); {energy:.0%} of their "
        f"energy lies in the lesion (random: {energy_random:.0%}).",
    )


def _faithfulness_line(metrics) -> Finding:
    deletion, deletion_random = (metrics["faithfulness.deletion_auc"],
                                 metrics["faithfulness.deletion_auc_random"])
    insertion, insertion_random = (metrics["faithfulness.insertion_auc"],
                                   metrics["faithfulness.insertion_auc_random"])
    good = deletion < deletion_random and insertion > insertion_random
    verdict = "matter to the model" if good else "do not clearly matter more than random ones"
    return Finding(
        "pass" if good else "warn",
        f"Highlighted pixels {verdict}: deleting them first gives a deletion AUC of "
        f"{deletion:.2f} (random order: {deletion_random:.2f}; lower is better), inserting "
        f"them first {insertion:.2f} (random: {insertion_random:.2f}; higher is better).",
    )


def _sanity_line(results: QualityResults) -> Finding:
    final = results.sanity.final_correlation
    if results.sanity.passed:
        return Finding("pass", f"Sanity check passed: with the weights randomised the maps "
                       f"change (rank correlation {final:.2f} with the originals), so they "
                       "depend on what the model learned.")
    return Finding("warn", f"Sanity check failed: with the weights randomised the maps barely "
                   f"change (rank correlation {final:.2f} ≥ {SANITY_PASS}); they may show the "
                   "image's edges rather than the model's reasoning.")


def _shortcut_line(results: QualityResults, n_flagged: int) -> Finding:
    classes = flagged_classes(results)
    if not classes:
        return Finding("pass", f"No class puts more than {BORDER_FLAG:.0%} of its salient map in "
                       f"the image border or more than {OUTSIDE_LUNGS_FLAG:.0%} outside the "
                       f"lungs ({_images(n_flagged)} flagged on their own).")
    named = "; ".join(f"{name}: {border:.0%} of its salient map in the border, {outside:.0%} "
                      "outside the lungs" for name, border, outside in classes)
    return Finding("warn", f"Possible shortcut — {named}. The model may read markers, text or "
                   f"edges instead of the lungs ({_images(n_flagged)} flagged; see the list).")


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


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
    if not len(loc.array("pointing")):
        return Section(
            "localisation", "Localisation: do the heatmaps point at the lesion?",
            "The data source has no lesion masks or boxes, so localisation was not measured.")
    rows = [_localisation_row("All", loc, slice(None))]
    labels = np.asarray(loc.labels)
    for c in np.unique(labels):
        rows.append(_localisation_row(results.class_names[c], loc, labels == c))
    return Section(
        "localisation", "Localisation: do the heatmaps point at the lesion?",
        "Pointing game: share of images whose heatmap maximum lies inside the lesion. Energy: "
        "share of the heatmap's total mass inside the lesion. IoU: overlap of the heatmap "
        "thresholded at 15% of its maximum with the lesion. Random maps of the same smoothness "
        "are scored the same way as a reference. Correctly classified images with a lesion "
        "mask only. The second table follows the CheXlocalize protocol (Saporta et al. 2022): "
        "each map thresholded by Otsu's method, mIoU and hit rate per class with bootstrap "
        "95% intervals over images.",
        tables=[Table(["Class", "Images", "Pointing", "(random)", "Energy", "(random)", "IoU@15%",
                       "(random)"], rows), _chexlocalize_table(results)],
    )


def _chexlocalize(results: QualityResults) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per class with lesion masks: mIoU of the Otsu-thresholded maps and hit rate (the
    pointing game), each with its 1,000-resample bootstrap 95% interval (Saporta et al.
    2022)."""
    loc = results.localisation
    labels = np.asarray(loc.labels)
    return {
        results.class_names[c]: {
            "miou": measures.mean_interval(loc.array("otsu_iou")[labels == c]),
            "hit_rate": measures.mean_interval(loc.array("pointing")[labels == c]),
        }
        for c in np.unique(labels)
    }


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
        return f"{mean:.2f} ({low:.2f}-{high:.2f})"

    loc = results.localisation
    labels = np.asarray(loc.labels)
    rows = []
    for name, scores in _chexlocalize(results).items():
        chosen = labels == results.class_names.index(name)
        rows.append([name, str(int(chosen.sum())), shown(scores["miou"]),
                     f"{np.nanmean(loc.array('random otsu_iou')[chosen]):.2f}",
                     shown(scores["hit_rate"]),
                     f"{np.nanmean(loc.array('random pointing')[chosen]):.2f}"])
    return Table(["Class", "Images", "mIoU, Otsu (95% CI)", "(random)", "Hit rate (95% CI)",
                  "(random)"], rows)


def _localisation_row(name, loc, selection) -> list[str]:
    def mean(key):
        return float(np.nanmean(loc.array(key)[selection]))

    return [name, str(len(loc.array("pointing")[selection]))] + [
        f"{mean(prefix + key):.2f}"
        for key in ("pointing", "energy", "iou") for prefix in ("", "random ")
    ]


def _faithfulness_section(results: QualityResults) -> Section | None:
    faith = results.faithfulness
    if faith is None:
        return None
    rows = [_faithfulness_row("All", faith, slice(None))]
    for c in np.unique(faith.labels[faith.labels >= 0]):
        rows.append(_faithfulness_row(results.class_names[c], faith, faith.labels == c))
    mean = {name: curve.mean(axis=0) for name, curve in faith.curves.items()}
    return Section(
        "faithfulness", "Faithfulness: do the highlighted pixels matter to the model?",
        f"On a sample of {len(faith.labels)} images, pixels are removed (set to black) or "
        "inserted (into a blurred copy) in the order of the heatmap, most important first, "
        "and the probability of the explained class is tracked (Petsiuk et al. 2018). A "
        "faithful map makes deletion fall fast (low AUC) and insertion rise fast (high AUC), "
        "compared with random maps. Average Drop: mean % of the probability lost when only "
        "the map-weighted image is shown (lower is better); Increase in Confidence: % of "
        "images whose probability rises (Chattopadhyay et al. 2018).",
        findings=[
            Finding("info", f"Average Drop {faith.average_drop['cam']:.1f}% (random maps "
                    f"{faith.average_drop['random']:.1f}%); Increase in Confidence "
                    f"{faith.increase_in_confidence['cam']:.1f}% (random "
                    f"{faith.increase_in_confidence['random']:.1f}%)."),
        ],
        tables=[Table(["Class", "Images", "Deletion AUC", "(random)", "Insertion AUC",
                       "(random)"], rows)],
        figures=[
            Figure("Deletion", figures.deletion_insertion_svg(
                faith.fractions, {"heatmap order": mean["deletion"],
                                  "random order": mean["random deletion"]}, "Deletion"),
                   "Mean class probability as pixels are removed; lower is better."),
            Figure("Insertion", figures.deletion_insertion_svg(
                faith.fractions, {"heatmap order": mean["insertion"],
                                  "random order": mean["random insertion"]}, "Insertion"),
                   "Mean class probability as pixels are restored; higher is better."),
        ],
    )


def _faithfulness_row(name, faith, selection) -> list[str]:
    aucs = [float(np.mean(measures.curve_auc(faith.curves[key][selection])))
            for key in ("deletion", "random deletion", "insertion", "random insertion")]
    return [name, str(len(faith.labels[selection]))] + [f"{v:.3f}" for v in aucs]


def _sanity_section(results: QualityResults) -> Section | None:
    sanity = results.sanity
    if sanity is None or not sanity.correlations:
        return None
    rows = [[stage, f"{np.nanmean(c):.2f}", f"{np.nanstd(c):.2f}"]
            for stage, c in zip(sanity.stages, sanity.correlations, strict=True)]
    return Section(
        "sanity", "Sanity check: do the maps depend on the model?",
        "The model's weights are re-initialised layer by layer from the output down "
        "(cascading randomisation, Adebayo et al. 2018) and each stage's maps are compared "
        "with the original ones by Spearman rank correlation. Maps of a trustworthy method "
        f"lose their resemblance (correlation well below {SANITY_PASS}); maps that survive "
        "the destruction of the model show the image, not the model. The registered model is "
        "untouched: weights are restored afterwards.",
        findings=[_sanity_line(results)],
        tables=[Table(["Randomised", "Spearman (mean)", "(sd)"], rows)],
        figures=[Figure("Rank correlation per stage",
                        figures.sanity_svg(sanity.stages, sanity.correlations),
                        "Correlation of the maps with the originals as more layers are "
                        "randomised.")],
    )


def _shortcut_section(results: QualityResults, n_flagged: int) -> Section | None:
    short = results.shortcut
    if not len(short.array("border")):
        return None
    border, outside = _per_class(short, "border"), _per_class(short, "outside_lungs")
    rows = [[results.class_names[c], f"{border[c]:.2f}", f"{outside.get(c, float('nan')):.2f}",
             "yes" if border[c] > BORDER_FLAG or outside.get(c, 0) > OUTSIDE_LUNGS_FLAG
             else "no"]
            for c in sorted(border)]
    rows.append(["random maps", f"{np.nanmean(short.array('random border')):.2f}",
                 f"{np.nanmean(short.array('random outside_lungs')):.2f}", ""])
    mean_maps = results.mean_maps
    shown = [
        Figure(f"Mean heatmap per {kind} class",
               figures.mean_heatmaps_svg(mean_maps[kind], f"Mean heatmap by {kind} class"),
               "Where the evidence usually lies; a bright corner or edge is a warning sign.")
        for kind in ("true", "predicted") if mean_maps.get(kind)
    ]
    return Section(
        "shortcuts", "Shortcuts: does the model look at the lungs?",
        "Models trained on pooled COVID-19 data sets have been shown to score well by reading "
        "hospital text markers, laterality tokens and image borders instead of the lungs "
        "(DeGrave et al. 2021). For every image, the salient part of its heatmap (values at "
        "least half the map's maximum) is located: its share of energy in a border band (8% "
        f"of the image side; random maps put {np.nanmean(short.array('random border')):.0%} "
        "there) and outside the lung fields. Classes past "
        f"{BORDER_FLAG:.0%} in the border or {OUTSIDE_LUNGS_FLAG:.0%} outside the lungs are "
        f"flagged, and single images past {IMAGE_FLAG:.0%} / {OUTSIDE_LUNGS_FLAG:.0%} are "
        f"listed. Lung fields: {results.lung_source}.",
        findings=[_shortcut_line(results, n_flagged)],
        tables=[Table(["Class (true)", "Salient map in border", "Outside lungs", "Flagged"],
                      rows)],
        figures=shown,
    )


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
        rows.append([f"{label} ({'higher' if higher else 'lower'} is better)",
                     *("—" if not np.isfinite(v) else f"{v:.3f}" for v in cells)])
    line = _baselines_line(scores)
    curves = {f"{titles[k]}, {order.upper()}": scores.road_curves[k][order]
              for k in ("method", "randomcam", "sobel") for order in ("morf", "lerf")}
    return Section(
        "baselines", "Against baselines: does the method know more than chance?",
        f"On {scores.n_images} images of the sample, the method's maps are scored beside "
        "three explainers that know nothing: RandomCAM (the model's features under random "
        "channel weights), Sobel edges (the film's own edges, no model) and random smooth "
        "maps. ROAD (Rong et al. 2022, on the first "
        f"{scores.road_images} images) removes pixels in the map's order, most relevant "
        "first (MoRF) or least relevant first (LeRF), and fills them from their neighbours "
        "with a little noise instead of black, which an X-ray never shows the model; the gap "
        "between the two curves is the map's faithfulness.",
        findings=[line],
        tables=[Table(["Check", *titles.values()], rows)],
        figures=[Figure("ROAD", figures.deletion_insertion_svg(
            scores.road_fractions, curves, "ROAD: MoRF and LeRF"),
            "Mean class probability as pixels are removed and imputed; the method's MoRF "
            "should fall fastest and its LeRF stay highest.")],
    )


def _robustness_section(results: QualityResults) -> Section | None:
    stable = results.robustness
    if stable is None:
        return None
    rows = [[label[0].upper() + label[1:], _two(ssim), _two(rho),
             "—" if flips is None else str(flips)]
            for label, ssim, rho, flips, _ in stable.rows()]
    line = _robustness_line(stable)
    return Section(
        "robustness", "Robustness: do the maps survive acquisition changes?",
        f"{stable.n} images of the sample are changed as a second acquisition of the same "
        "film might be: sensor noise (3% of the range), a 4-pixel shift (the map is shifted "
        "back before the comparison), JPEG at quality 75 and 10% lower contrast. Each changed "
        "film is explained for the same class, and its map compared with the original by "
        "SSIM and Spearman rank correlation; random maps give the floor. A prediction flip is "
        f"a changed film the model classifies differently. Below {ROBUST_SPEARMAN} a map "
        "moves more than the film did.",
        findings=[line],
        tables=[Table(["Change", "SSIM", "Spearman", "Prediction flips"], rows)],
    )


def _baselines_line(scores) -> Finding:
    wins, losses = scores.beaten()
    method = dict(scores.explainers)["method"]
    if losses:
        return Finding("warn", f"{method} does no better than a baseline (RandomCAM, Sobel "
                       f"edges or random maps) on: {', '.join(losses)}. There, the check "
                       "measures the film or the features, not what the model made of them.")
    return Finding("pass", f"{method} beats RandomCAM, Sobel edges and random maps on every "
                   f"check ({len(wins)}).")


def _robustness_line(stable) -> Finding:
    from report.robustness import PERTURBATIONS

    means = {name: _finite_mean(values) for name, values in stable.spearman.items()}
    measured = {name: value for name, value in means.items() if np.isfinite(value)}
    flips = sum(stable.flips.values())
    changed = f"{flips} of {len(stable.flips) * stable.n} predictions flipped"
    if not measured:
        return Finding("warn", "The maps' stability could not be measured: they are flat "
                       f"(all zero) on the changed films; {changed}.")
    weakest = min(measured, key=measured.get)
    level = "pass" if measured[weakest] >= ROBUST_SPEARMAN and not flips else "warn"
    return Finding(level, f"Under acquisition changes the maps are least stable under "
                   f"{PERTURBATIONS[weakest].label} (Spearman {measured[weakest]:.2f} with "
                   f"the original; random maps {_finite_mean(stable.random_spearman):.2f}); "
                   f"{changed}.")


def _finite_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _two(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "—"
