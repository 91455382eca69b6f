"""Pure measures for the audit: classification, calibration, and explanation quality.

Everything here is plain numpy/scikit-learn/scipy on arrays the pipeline already holds
(labels, probabilities, maps, masks, class scores); no model is run here. Maps are (B, H, W)
non-negative float arrays (ReLU'd CAMs, not necessarily normalised); masks are bool (B, H, W)
or one (H, W) mask for every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

# Above this many classes, every per-class table, figure and metric shows only this many
# classes (`shown_classes`) and sums up the rest: a 1,000-class model would otherwise draw a
# million-cell confusion matrix and log thousands of metrics.
MAX_CLASSES_SHOWN = 20


@dataclass(frozen=True)
class ShownClasses:
    """The classes a per-class table or figure shows, and what the rest add up to."""

    indices: list[int]  # class indices, in the order shown
    left_out: int  # how many classes are not shown
    left_out_support: int  # how many images those classes have

    def __contains__(self, index) -> bool:
        return int(index) in self.indices  # at most MAX_CLASSES_SHOWN of them


def shown_classes(support, predicted=None, limit: int = MAX_CLASSES_SHOWN) -> ShownClasses:
    """Every class in model order when there are at most `limit`; else the `limit` classes
    with the most images (`support`, per class), ties broken by how often the class was
    predicted (`predicted`, per class: a class nobody has but the model predicts is a
    mistake worth seeing), then by index. O(classes log classes)."""
    support = np.asarray(support, dtype=np.int64)
    if len(support) <= limit:
        return ShownClasses(list(range(len(support))), 0, 0)
    predicted = (np.zeros_like(support) if predicted is None
                 else np.asarray(predicted, dtype=np.int64))
    # lexsort's last key sorts first; negated counts: most first; the index breaks ties.
    order = np.lexsort((np.arange(len(support)), -predicted, -support))[:limit]
    indices = [int(i) for i in order]
    return ShownClasses(indices, len(support) - limit,
                        int(support.sum() - support[order].sum()))


@dataclass(frozen=True)
class ClassificationQuality:
    accuracy: float
    per_class: list[dict]  # {"class", "precision", "recall", "f1", "support"}
    confusion: np.ndarray  # (C, C), rows true, columns predicted

    @property
    def shown(self) -> ShownClasses:
        """The classes the report shows one by one (`shown_classes`)."""
        return shown_classes([row["support"] for row in self.per_class],
                             self.confusion.sum(axis=0))

    def metrics(self) -> dict[str, float]:
        """Flat, stable MLflow metric names: accuracy, precision.<class>, recall.<class>...
        Per-class metrics for the shown classes only (`shown_classes`); `classes.left_out`
        counts the others when there are any. macro_f1 averages over every class."""
        flat = {"accuracy": self.accuracy}
        shown = self.shown
        for index in shown.indices:
            row = self.per_class[index]
            for key in ("precision", "recall", "f1"):
                flat[f"{key}.{row['class']}"] = row[key]
        flat["macro_f1"] = float(np.mean([row["f1"] for row in self.per_class]))
        if shown.left_out:
            flat["classes.left_out"] = float(shown.left_out)
        return flat


def classification_quality(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]
) -> ClassificationQuality:
    labels = list(range(len(class_names)))
    if len(y_true) == 0:
        empty = np.zeros((len(labels), len(labels)), dtype=int)
        rows = [_row(name, 0.0, 0.0, 0.0, 0) for name in class_names]
        return ClassificationQuality(accuracy=0.0, per_class=rows, confusion=empty)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    rows = [
        _row(name, precision[i], recall[i], f1[i], support[i])
        for i, name in enumerate(class_names)
    ]
    return ClassificationQuality(
        accuracy=float(accuracy_score(y_true, y_pred)),
        per_class=rows,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
    )


def _row(name: str, precision, recall, f1, support) -> dict:
    return {
        "class": name,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "support": int(support),
    }


# ---------------------------------------------------------------------------------------------
# Classification: ROC curves, calibration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    """One class's one-vs-rest ROC curve.

    ``auc`` is None when the class has no positives or no negatives among the images: the
    curve is then undefined and ``fpr``/``tpr`` are empty.
    """

    class_name: str
    auc: float | None
    fpr: np.ndarray
    tpr: np.ndarray


def roc_curves(y_true: np.ndarray, probabilities: np.ndarray, class_names) -> list[RocCurve]:
    """One-vs-rest ROC curve and area under it for every class (Fawcett 2006).

    The AUC is the probability that a randomly chosen image of the class gets a higher score
    for that class than a randomly chosen image of another class: 0.5 is chance, 1.0 a
    perfect ranking. It ignores the decision threshold and the calibration of the scores.
    """
    y_true = np.asarray(y_true)
    probabilities = _probability_matrix(probabilities, len(y_true))
    names = list(class_names)
    if probabilities.shape[1] != len(names):
        raise ValueError(
            f"probabilities have {probabilities.shape[1]} columns for {len(names)} classes"
        )
    curves = []
    for index, name in enumerate(names):
        positive = y_true == index
        if positive.all() or not positive.any():
            empty = np.zeros(0, dtype=float)
            curves.append(RocCurve(class_name=name, auc=None, fpr=empty, tpr=empty.copy()))
            continue
        scores = probabilities[:, index]
        fpr, tpr, _ = roc_curve(positive, scores)
        auc = float(roc_auc_score(positive, scores))
        curves.append(RocCurve(class_name=name, auc=auc, fpr=fpr, tpr=tpr))
    return curves


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram data: per confidence bin, mean confidence, accuracy and count.

    Empty bins have count 0 and nan confidence and accuracy. ``ece`` is nan without images.
    """

    ece: float
    bin_edges: np.ndarray  # (n_bins + 1,) equal-width edges on [0, 1]
    bin_confidence: np.ndarray  # (n_bins,) mean top-label confidence in the bin
    bin_accuracy: np.ndarray  # (n_bins,) share of the bin's images classified correctly
    bin_count: np.ndarray  # (n_bins,) images in the bin


def calibration(y_true, probabilities, n_bins: int = 10) -> Calibration:
    """Expected calibration error of the top-label confidence (Guo et al. 2017, eq. 3).

    Each image's confidence is its highest class probability and its prediction that class.
    Images are grouped into ``n_bins`` equal-width bins on [0, 1], bin m holding confidences in
    ((m - 1)/M, m/M] (a confidence of exactly 0 goes to the first bin), and

        ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|.

    In plain words: the average gap, weighted by how many images share a confidence level,
    between how sure the model says it is and how often it is right. 0 is perfectly calibrated;
    0.1 means that, on average, the stated confidence is off by 10 percentage points.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y_true = np.asarray(y_true)
    probabilities = _probability_matrix(probabilities, len(y_true))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    confidence_per_bin = np.full(n_bins, np.nan)
    accuracy_per_bin = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=int)
    if len(y_true) == 0:
        return Calibration(float("nan"), edges, confidence_per_bin, accuracy_per_bin, count)

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    # searchsorted(side="left") puts a value equal to an edge into the bin below it: (lo, hi].
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    filled = count > 0
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct.astype(float), minlength=n_bins)
    confidence_per_bin[filled] = confidence_sum[filled] / count[filled]
    accuracy_per_bin[filled] = correct_sum[filled] / count[filled]
    gaps = np.abs(accuracy_per_bin[filled] - confidence_per_bin[filled])
    ece = float(np.sum(count[filled] / len(y_true) * gaps))
    return Calibration(ece, edges, confidence_per_bin, accuracy_per_bin, count)


def _probability_matrix(probabilities, n_images: int) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[0] != n_images:
        raise ValueError(
            f"probabilities must be ({n_images}, classes), got shape {probabilities.shape}"
        )
    return probabilities


# ---------------------------------------------------------------------------------------------
# Localisation: pointing game, energy-based pointing game, IoU
# ---------------------------------------------------------------------------------------------


def pointing_hits(maps, masks) -> np.ndarray:
    """Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop").

    A hit when the map's maximum lies inside the region (e.g. an annotated lesion or lung
    mask). When several pixels share the maximum, any one inside counts as a hit. A map that
    is zero everywhere points nowhere and misses; an empty region can never be hit. The paper
    also tolerates a 15-pixel miss; this strict version does not. Accuracy over a data set is
    the mean of the returned booleans.
    """
    maps, masks = _maps_and_masks(maps, masks)
    peak = maps.max(axis=(1, 2), keepdims=True)
    at_peak = (maps == peak) & (peak > 0)
    return np.any(at_peak & masks, axis=(1, 2))


def energy_inside(maps, masks) -> np.ndarray:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, sec. 5.2).

    The share of the map's total energy (sum of its values) that falls inside the region:
    1.0 means the map highlights nothing outside it, the region's area fraction is what a
    uniform map gets. nan for a map that is zero everywhere (no energy to share).
    """
    shared = np.ndim(masks) == 2
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(len(maps), -1)
    total = flat.sum(axis=1, dtype=np.float64)
    if shared:  # one region for every map: no (B, H, W) temporary
        # einsum, not `@`: a BLAS call would start BLAS's own spinning threads, which crowd
        # out the engine and the workers while a report streams.
        inside = np.einsum("bi,i->b", flat, masks[0].reshape(-1).astype(flat.dtype),
                           dtype=np.float64)
    else:
        inside = np.einsum("bi,bi->b", flat, masks.reshape(len(maps), -1), dtype=np.float64)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def iou_at(maps, masks, fraction: float = 0.15) -> np.ndarray:
    """Intersection over union of the thresholded map with the region.

    The map is binarised at ``fraction`` of its own maximum (the 15 % threshold Grad-CAM's
    weakly-supervised localisation used, Selvaraju et al. 2017) and compared with the mask:
    1.0 means the highlighted area is exactly the region. A map that is zero everywhere
    highlights nothing and scores 0.
    """
    maps, masks = _maps_and_masks(maps, masks)
    peak = maps.max(axis=(1, 2), keepdims=True)
    highlighted = (maps >= fraction * peak) & (peak > 0)
    intersection = np.sum(highlighted & masks, axis=(1, 2))
    union = np.sum(highlighted | masks, axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


def otsu_iou(maps, masks) -> np.ndarray:
    """Intersection over union of the map binarised by Otsu's method with the region: the
    CheXlocalize protocol (Saporta et al. 2022), which thresholds each saliency map with
    Otsu (1979) rather than at a fixed share of its maximum.

    Each map is min-max scaled to 0-255 (as the protocol's 8-bit maps are) and split at the
    threshold that maximises the between-class variance of its histogram; the pixels above
    it are the map's segmentation. A flat map segments nothing and scores 0.
    """
    maps, masks = _maps_and_masks(maps, masks)
    scores = np.zeros(len(maps))
    for index, (value, region) in enumerate(zip(maps, masks, strict=True)):
        low, high = float(value.min()), float(value.max())
        if high <= low:
            continue
        scaled = np.round((value - low) / (high - low) * 255).astype(np.uint8)
        _, segmented = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        segmented = segmented.astype(bool)
        union = np.sum(segmented | region)
        scores[index] = np.sum(segmented & region) / union if union else 0.0
    return scores


def mean_interval(values, resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float, float]:
    """The mean of `values` and its percentile-bootstrap interval (Efron and Tibshirani
    1993), as CheXlocalize reports mIoU and hit rate: (mean, low, high); NaN values are
    left out, and all three are NaN when nothing is left."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = max(1, 2**22 // values.size)  # resamples per chunk: a few MB of indices at most
    means = np.concatenate([
        values[rng.integers(0, values.size, (min(rows, resamples - start), values.size))
               ].mean(axis=1)
        for start in range(0, resamples, rows)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (B, H, W) map stack and broadcast an (H, W) or (B, H, W) mask to it."""
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    if masks.shape not in (maps.shape, maps.shape[1:]):
        raise ValueError(f"masks of shape {masks.shape} do not match maps of shape {maps.shape}")
    return maps, np.broadcast_to(masks, maps.shape)


# ---------------------------------------------------------------------------------------------
# Shortcut detection: energy near the border and outside the lungs
# ---------------------------------------------------------------------------------------------


def border_band(shape: tuple[int, int], fraction: float = 0.08) -> np.ndarray:
    """Bool (H, W) mask of the frame along the image edges, where shortcuts tend to live.

    Markers, text labels, rulers and collimation edges sit near the border of chest X-rays; a
    map whose energy concentrates there (``energy_inside(maps, border_band(...))``) suggests
    the model reads them instead of the lungs. The band is round(fraction * min(H, W)) pixels
    wide on every side (at least one pixel when fraction > 0).
    """
    height, width = shape
    if not 0 <= fraction <= 0.5:
        raise ValueError(f"fraction must be in [0, 0.5], got {fraction}")
    band = np.zeros((height, width), dtype=bool)
    if fraction == 0:
        return band
    size = max(1, round(fraction * min(height, width)))
    band[:size, :] = True
    band[-size:, :] = True
    band[:, :size] = True
    band[:, -size:] = True
    return band


def estimated_lung_fields(shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) rough prior of where the lungs are on a centred PA chest X-ray.

    A fixed estimate for sources without lung masks, NOT a segmentation: two ellipses with
    centres (0.31 W, 0.45 H) and (0.69 W, 0.45 H) and half-axes (0.15 W, 0.30 H), tested at
    pixel centres. The right ellipse is the mirror image of the left one, so the mask is exactly
    left-right symmetric. Rotated, cropped, AP or paediatric images will not match it well;
    use the numbers it gives as a coarse screen for maps that ignore the chest altogether.
    """
    height, width = shape
    y = (np.arange(height) + 0.5)[:, None]
    x = (np.arange(width) + 0.5)[None, :]
    left = ((x - 0.31 * width) / (0.15 * width)) ** 2 + (
        (y - 0.45 * height) / (0.30 * height)
    ) ** 2 <= 1.0
    return left | left[:, ::-1]


def energy_outside(maps, regions) -> np.ndarray:
    """Share of each map's energy outside the region(s): 1 - ``energy_inside``.

    With ``estimated_lung_fields`` or lung masks, a high value means the explanation rests on
    something other than the lungs. ``regions`` is (B, H, W) or one (H, W) mask for all
    images. nan for a map that is zero everywhere.
    """
    return 1.0 - energy_inside(maps, regions)


# ---------------------------------------------------------------------------------------------
# Faithfulness: deletion / insertion, Average Drop, Increase in Confidence
# ---------------------------------------------------------------------------------------------


def deletion_order(maps) -> np.ndarray:
    """(B, H*W) flat pixel indices, most important first, for deletion/insertion curves.

    RISE's deletion metric (Petsiuk et al. 2018) removes pixels in this order and tracks the
    class score; insertion adds them to a blurred or blank image in the same order. The sort
    is stable on the negated map, so equally important pixels keep raster order and the
    order is reproducible.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    return np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")


def curve_auc(scores: np.ndarray) -> np.ndarray:
    """Area under deletion or insertion curves (Petsiuk et al. 2018, RISE).

    ``scores`` (B, S) holds the class score after removing (or inserting) 0, 1/(S-1), ..., 1
    of the pixels; the area uses the trapezoid rule with x on [0, 1]. For deletion, lower is
    better (the score falls as soon as the highlighted pixels go); for insertion, higher is
    better. Compare against random maps, not against an absolute value.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, S) with S >= 2, got shape {scores.shape}")
    return np.trapezoid(scores, np.linspace(0.0, 1.0, scores.shape[1]), axis=1)


def average_drop(original: np.ndarray, explained: np.ndarray) -> float:
    """Average Drop in % (Chattopadhyay et al. 2018, Grad-CAM++, sec. 6.2).

    100 * mean(max(0, Y - O) / Y), with Y the class score on the full image and O the score
    on the image multiplied by the (normalised) map. How much confidence the model loses when
    it only sees what the map highlights: lower is better, 0 means no loss at all. The scores
    must be positive (probabilities); nan without images.
    """
    original, explained = _score_pair(original, explained)
    if original.size == 0:
        return float("nan")
    if np.any(original <= 0):
        raise ValueError("average drop needs positive scores on the full image")
    return float(100.0 * np.mean(np.maximum(0.0, original - explained) / original))


def increase_in_confidence(original, explained) -> float:
    """Increase in Confidence in % (Chattopadhyay et al. 2018, Grad-CAM++, sec. 6.2).

    100 * mean(O > Y): the share of images whose class score rises when the model sees only
    what the map highlights (O) rather than the full image (Y). Higher is better; nan without
    images.
    """
    original, explained = _score_pair(original, explained)
    if original.size == 0:
        return float("nan")
    return float(100.0 * np.mean(explained > original))


def _score_pair(original, explained) -> tuple[np.ndarray, np.ndarray]:
    original = np.asarray(original, dtype=float)
    explained = np.asarray(explained, dtype=float)
    if original.shape != explained.shape or original.ndim != 1:
        raise ValueError(
            f"scores must be 1-D and of equal length, got {original.shape} and {explained.shape}"
        )
    return original, explained


def random_maps(shape: tuple[int, int, int], seed: int = 0, cells: int = 7) -> np.ndarray:
    """(B, H, W) float32 random baseline maps in [0, 1], deterministic for a seed.

    Uniform noise on a ``cells`` x ``cells`` grid, bilinearly upsampled to (H, W) with
    cv2.resize (INTER_LINEAR) the way a CAM is upsampled from a 7 x 7 feature map, so the
    baseline is as smooth as a real explanation. A method's deletion/insertion or Average Drop
    only means something if it beats these maps.
    """
    batch, height, width = shape
    if cells < 1:
        raise ValueError(f"cells must be at least 1, got {cells}")
    grids = np.random.default_rng(seed).random((batch, cells, cells), dtype=np.float32)
    maps = np.empty((batch, height, width), dtype=np.float32)
    for index, grid in enumerate(grids):
        maps[index] = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    return maps


# ---------------------------------------------------------------------------------------------
# Sanity check: model-parameter randomisation
# ---------------------------------------------------------------------------------------------


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) Spearman rank correlation between two (B, H, W) map stacks, image by image.

    The similarity measure of Adebayo et al. 2018 ("Sanity checks for saliency maps"): maps
    from the trained model are compared with maps after the weights are randomised. A
    faithful method's maps change, so the correlation falls towards 0; a value near 1 means
    the map barely depends on what the model learnt (it acts like an edge detector). Ties get
    average ranks; nan when either map is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"need two (B, H, W) stacks of one shape, got {a.shape} and {b.shape}")
    rank_a = rankdata(a.reshape(len(a), -1), axis=1)
    rank_b = rankdata(b.reshape(len(b), -1), axis=1)
    rank_a -= rank_a.mean(axis=1, keepdims=True)
    rank_b -= rank_b.mean(axis=1, keepdims=True)
    numerator = np.sum(rank_a * rank_b, axis=1)
    denominator = np.sqrt(np.sum(rank_a**2, axis=1) * np.sum(rank_b**2, axis=1))
    constant = (np.ptp(a.reshape(len(a), -1), axis=1) == 0) | (
        np.ptp(b.reshape(len(b), -1), axis=1) == 0
    )
    correlation = numerator / np.where(constant, 1.0, denominator)
    return np.where(constant, np.nan, np.clip(correlation, -1.0, 1.0))


def salient_part(maps: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Each map with values below `fraction` of its own maximum set to zero.

    Energy shares of whole CAMs are dominated by their low, diffuse background (a 14x14 map
    upsampled to 237 px spreads some mass everywhere); the salient part is where the map
    actually points, so a marker in a corner shows up plainly instead of as a few percent.
    """
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    peaks = maps.max(axis=(-2, -1), keepdims=True)
    # A map with no positive peak keeps nothing: its threshold is infinite.
    threshold = np.where(peaks > 0, fraction * peaks, np.inf).astype(maps.dtype)
    # A product with the mask, not np.where: the same values, several times faster.
    return maps * (maps >= threshold)
