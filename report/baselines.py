"""The method against explainers that know nothing (`quality=full`): RandomCAM (the model's
features under random channel weights), Sobel edges (the film alone, no model) and random
smooth maps, each scored on the method's own sample by every trust check the method gets.

A check on which the method does no better than these says nothing about the model: a
deletion curve that a Sobel map matches measures the film's edges, a localisation score that
RandomCAM matches measures where the features are, not what the model made of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from report import checks, measures, road
from report.cam.engine import make_engine
from report.i18n import N_

RANDOM_MAPS = N_("random smooth maps")
# (key, label, higher is better). Each explainer gets every one it can be scored by.
METRICS = (
    ("deletion_auc", N_("Deletion AUC"), False),
    ("insertion_auc", N_("Insertion AUC"), True),
    ("road_gap", N_("ROAD gap (LeRF - MoRF AUC)"), True),
    ("average_drop", N_("Average Drop (%)"), False),
    ("pointing", N_("Pointing game (lesion)"), True),
    ("otsu_iou", N_("IoU, Otsu (lesion)"), True),
    ("border", N_("Salient map in the border"), False),
    ("outside_lungs", N_("Salient map outside the lungs"), False),
    ("sanity", N_("Spearman after randomisation"), False),
)


@dataclass(frozen=True)
class SampleData:
    """The trust checks' sample as arrays; masks are (N, H, W) bool, lesion masks all False
    where an image has none."""

    inputs: np.ndarray
    maps: np.ndarray
    classes: np.ndarray
    labels: np.ndarray
    lesion_masks: np.ndarray
    lung_masks: np.ndarray


@dataclass
class BaselineScores:
    explainers: list[tuple[str, str]]  # (key for metric names, title), the method first
    values: dict[str, dict[str, float]]  # explainer key -> metric key -> value (nan: n/a)
    road_fractions: np.ndarray  # with both ends
    road_curves: dict[str, dict[str, np.ndarray]]  # explainer key -> morf/lerf mean curve
    n_images: int
    road_images: int

    def metrics(self) -> dict[str, float]:
        """`baselines.<explainer>.<metric>` (method for the report's own method)."""
        return {f"baselines.{key}.{metric}": value
                for key, scores in self.values.items() for metric, value in scores.items()
                if np.isfinite(value)}

    def beaten(self) -> tuple[list[str], list[str]]:
        """Labels of the checks on which the method beats every baseline, and those on which
        it does not (checks measured for the method and at least one baseline). The sanity
        check is pass or fail: RandomCAM depends on the model too, and may decorrelate as
        well as the method does without that saying anything against the method."""
        method, *others = [key for key, _ in self.explainers]
        wins, losses = [], []
        for metric, label, higher in METRICS:
            mine = self.values[method][metric]
            if metric == "sanity":
                if np.isfinite(mine):
                    (wins if mine < checks.SANITY_PASS else losses).append(label)
                continue
            theirs = [self.values[k][metric] for k in others
                      if np.isfinite(self.values[k][metric])]
            if not (np.isfinite(mine) and theirs):
                continue
            better = mine > max(theirs) if higher else mine < min(theirs)
            (wins if better else losses).append(label)
        return wins, losses


def score_with_baselines(engine, sample: SampleData, plan, batch_size: int,
                         method_sanity: float) -> BaselineScores:
    """Score the method's maps, RandomCAM's, Sobel's and random maps on `sample`, each by the
    same checks; `method_sanity` is the method's own sanity result (already measured)."""
    layer, shape = engine.target.name, engine.input_shape
    explainers = {"method": (engine.title, engine, sample.maps)}
    for name in ("randomcam", "sobel"):
        baseline = make_engine(name, engine.model, layer, engine.score, shape)
        maps = np.concatenate([baseline.explain(sample.inputs[i : i + batch_size],
                                                sample.classes[i : i + batch_size]).maps
                               for i in range(0, len(sample.inputs), batch_size)])
        explainers[name] = (baseline.title, baseline, maps)
    explainers["random"] = (RANDOM_MAPS, None, measures.random_maps(sample.maps.shape,
                                                                     seed=1234))
    values, curves = {}, {}
    for key, (_, explainer, maps) in explainers.items():
        values[key], curves[key] = _scores(engine, sample, maps, plan, batch_size)
        values[key]["sanity"] = (method_sanity if key == "method" else
                                 _sanity(explainer, sample, plan))
    return BaselineScores([(key, title) for key, (title, _, _) in explainers.items()],
                          values, np.array(road.WITH_ENDS), curves, len(sample.inputs),
                          min(plan.road_images, len(sample.inputs)))


def _scores(engine, sample: SampleData, maps, plan, batch_size: int):
    """Every check but the sanity check, for one explainer's maps; the class scores come from
    the method's engine (the same model)."""
    faithful, road_curves = faithfulness_scores(engine, sample.inputs, maps, sample.classes,
                                                sample.labels, plan.steps, batch_size,
                                                plan.road_images)
    salient = measures.salient_part(maps)
    border = measures.border_band(maps.shape[1:])
    values = {
        **{key: faithful[key] for key in ("deletion_auc", "insertion_auc", "road_gap",
                                          "average_drop")},
        **localisation_scores(maps, sample.labels, sample.classes, sample.lesion_masks),
        "border": float(np.nanmean(measures.energy_inside(salient, border))),
        "outside_lungs": float(np.nanmean(measures.energy_outside(salient,
                                                                  sample.lung_masks))),
    }
    return values, {order: curve.mean(axis=0) for order, curve in road_curves.items()}


def faithfulness_scores(engine, inputs, maps, classes, labels, steps: int, batch_size: int,
                        road_images: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Deletion and insertion AUC, Average Drop, and ROAD (MoRF, LeRF and their gap, on the
    first `road_images`) of one explainer's maps, with ROAD's curves: what the trust checks
    and `methods` score every explainer by."""
    faith = checks.faithfulness(engine, inputs, maps, classes, labels, steps, batch_size,
                                with_random=False)
    n = road_images
    curves = road.road_curves(engine, inputs[:n], maps[:n], classes[:n],
                              batch_size=batch_size)
    summary = road.road_summary(curves, road.WITH_ENDS)
    return {
        "deletion_auc": float(np.mean(measures.curve_auc(faith.curves["deletion"]))),
        "insertion_auc": float(np.mean(measures.curve_auc(faith.curves["insertion"]))),
        "average_drop": faith.average_drop["cam"],
        "road_morf_auc": summary["morf_auc"],
        "road_lerf_auc": summary["lerf_auc"],
        "road_gap": summary["gap"],
    }, curves


def localisation_scores(maps, labels, classes, lesion_masks) -> dict[str, float]:
    """Pointing and Otsu IoU on the correctly classified images with a lesion mask
    (`lesion_masks` (N, H, W), all False where an image has none), as the audit scores
    localisation; nan without any."""
    chosen = (np.asarray(labels) == np.asarray(classes)) & lesion_masks.any(axis=(1, 2))
    if not chosen.any():
        return {"pointing": float("nan"), "otsu_iou": float("nan")}
    masks = lesion_masks[chosen]
    return {"pointing": float(np.mean(measures.pointing_hits(maps[chosen], masks))),
            "otsu_iou": float(np.mean(measures.otsu_iou(maps[chosen], masks)))}


def _sanity(explainer, sample: SampleData, plan) -> float:
    """The cascading-randomisation check for a baseline engine (nan for random maps, which
    depend on nothing)."""
    if explainer is None:
        return float("nan")
    n = plan.sanity_images
    return checks.cascading_randomisation(explainer, sample.inputs[:n], sample.classes[:n],
                                          plan.sanity_stages).final_correlation
