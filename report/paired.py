"""Paired comparison of two model versions on the same images: champion (A) vs challenger (B).

Every image is scored by both models, so the two results are not independent samples: an
image that is hard for A tends to be hard for B. The statistics here keep the pairs together
(the same bootstrap indices for both models, McNemar's test on the discordant pairs,
map-to-map agreement image by image), which gives intervals and p-values for the
*difference* that are much narrower than two separate per-model intervals would suggest.

Plain numpy/scipy/scikit-learn on arrays: labels and predictions are (N,) class indices,
maps are (N, h, w) float arrays. Differences are always B - A: positive means the challenger
is better on a higher-is-better metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from report import measures

# Index elements drawn per chunk of resamples: bounds the (rows, N) index matrix and its
# gathered labels to a few tens of MB whatever N and the number of resamples.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A point estimate of a difference (B - A) with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: the difference is significant
        at the interval's level. An interval that only touches 0 does not exclude it."""
        return self.low > 0 or self.high < 0


# ---------------------------------------------------------------------------------------------
# Metrics with a vectorised resampled form
# ---------------------------------------------------------------------------------------------


class Accuracy:
    """Share of images classified correctly (sklearn.metrics.accuracy_score).

    Calling it is the definition; ``resampled`` gives the same number for many bootstrap
    resamples at once from the correctness vector.
    """

    def __call__(self, y_true, y_pred) -> float:
        return float(accuracy_score(y_true, y_pred))

    def resampled(self, y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray):
        """(R,) accuracy of every resample; ``indices`` is (R, N), one resample a row."""
        correct = np.asarray(y_true) == np.asarray(y_pred)
        # Integer counts divided by N: exactly what accuracy_score's mean gives.
        return correct[indices].sum(axis=1) / indices.shape[1]


accuracy = Accuracy()


@dataclass(frozen=True)
class MacroF1:
    """Unweighted mean of the per-class F1 over classes 0..n_classes-1 (sklearn's f1_score,
    average="macro", zero_division=0).

    Every class counts, present or not: a class with no true and no predicted image in the
    data (or in a bootstrap resample) gets F1 = 0 instead of an error, which pulls the mean
    down. ``resampled`` computes the same number for many resamples from confusion counts.
    """

    n_classes: int

    def __call__(self, y_true, y_pred) -> float:
        return float(
            f1_score(y_true, y_pred, labels=list(range(self.n_classes)), average="macro",
                     zero_division=0)
        )

    def resampled(self, y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray):
        """(R,) macro-F1 of every resample; ``indices`` is (R, N), one resample a row."""
        classes = _present_classes(self.n_classes, y_true, y_pred)
        # The classes with no image anywhere score 0 in every resample: only the sum over
        # the others needs resampling, divided by every class.
        f1 = _scores(_counts(y_true, y_pred, indices, classes))["f1"]
        return f1.sum(axis=1) / self.n_classes


def macro_f1(n_classes: int) -> MacroF1:
    """The macro-F1 metric over ``n_classes`` classes, for ``paired_bootstrap``."""
    return MacroF1(n_classes)


def _present_classes(n_classes: int, *labels) -> np.ndarray:
    """The sorted classes that occur in any of `labels`, each checked to lie in 0..C-1.
    At most the number of labels, however many classes the model has."""
    return np.unique(np.concatenate([_class_indices(x, n_classes) for x in labels]))


def _counts(y_true, y_pred, indices: np.ndarray, classes: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, P) true positives, true counts and predicted counts of every resample, for the
    P `classes` (every class in y_true and y_pred; `_present_classes`).

    One np.bincount per count over codes (row * P + class) of the whole index matrix: memory
    and time in R x (N + P), never in classes x classes, so a 1,000-class model costs what a
    few-class one does.
    """
    rows, width = len(indices), len(classes)
    true = np.searchsorted(classes, np.asarray(y_true, dtype=np.int64))[indices]
    pred = np.searchsorted(classes, np.asarray(y_pred, dtype=np.int64))[indices]
    offsets = np.arange(rows, dtype=np.int64)[:, None] * width

    def per_row(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes, minlength=rows * width).reshape(rows, width)

    hits = true == pred
    return (per_row((true + offsets)[hits]), per_row((true + offsets).ravel()),
            per_row((pred + offsets).ravel()))


def _scores(counts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """(R, P) precision, recall and F1 per class from (R, P) counts (`_counts`).

    The formulas of precision_recall_fscore_support with zero_division=0: precision tp/pred,
    recall tp/true, F1 2tp/(true + pred), each 0 where its denominator is 0.
    """
    tp, true, pred = counts
    tp = tp.astype(np.float64)
    return {
        "precision": _divide(tp, pred),
        "recall": _divide(tp, true),
        "f1": _divide(2.0 * tp, true + pred),
    }


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def _class_indices(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    # A label outside 0..C-1 would land in another class's bincount cell, silently.
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------------


def resample_chunks(n: int, resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap indices ``paired_bootstrap`` uses, as (rows, n) chunks in order.

    Each row draws n image positions with replacement from np.random.default_rng(seed);
    chunks bound memory, and their concatenation is the one index matrix for a seed, so a
    slow reference can replay exactly the resamples the vectorised path saw.
    """
    if n < 1:
        raise ValueError("need at least one image to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) bootstrap indices: all of ``resample_chunks`` at once."""
    return np.concatenate(list(resample_chunks(n, resamples, seed)))


def paired_bootstrap(
    y_true,
    pred_a,
    pred_b,
    metric: Callable[[np.ndarray, np.ndarray], float],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """metric(B) - metric(A) with a paired bootstrap percentile interval.

    The estimate is the difference on all images. Each of ``resamples`` resamples draws N
    images with replacement and scores BOTH models on those same images (Koehn 2004, "paired
    bootstrap resampling"); the interval is the (1 - level)/2 and (1 + level)/2 quantiles of
    the resampled differences (the percentile interval, Efron & Tibshirani 1993, ch. 13;
    quantiles interpolated linearly). Keeping the pairs lets the correlation between the two
    models cancel out of the difference's spread.

    ``metric(y_true, y_pred) -> float``; ``accuracy`` and ``macro_f1(C)`` are scored for all
    resamples at once, any other callable once per resample (slower, same indices).
    """
    y_true, pred_a, pred_b = _paired(y_true, pred_a, pred_b)
    _check_level(level)
    estimate = metric(y_true, pred_b) - metric(y_true, pred_a)
    differences = np.concatenate([
        _resampled(metric, y_true, pred_b, chunk) - _resampled(metric, y_true, pred_a, chunk)
        for chunk in resample_chunks(len(y_true), resamples, seed)
    ])
    low, high = _percentiles(differences, level)
    return Interval(estimate=float(estimate), low=low, high=high)


def per_class_bootstrap(
    y_true,
    pred_a,
    pred_b,
    n_classes: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[Interval]]:
    """Per-class precision, recall and F1 differences (B - A), one Interval per class.

    The same paired bootstrap as ``paired_bootstrap`` (same indices for a seed), with
    precision_recall_fscore_support's definitions and zero_division=0: a class nobody
    predicts in a resample has precision 0 there, a class absent from it recall 0.
    """
    y_true, pred_a, pred_b = _paired(y_true, pred_a, pred_b)
    _check_level(level)
    # Only the classes with an image or a prediction are resampled: every other class
    # scores 0 for both models in every resample, so its difference is exactly 0.
    classes = _present_classes(n_classes, y_true, pred_a, pred_b)
    labels = classes.tolist()
    full_a = precision_recall_fscore_support(y_true, pred_a, labels=labels, zero_division=0)
    full_b = precision_recall_fscore_support(y_true, pred_b, labels=labels, zero_division=0)
    keys = ("precision", "recall", "f1")
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for indices in resample_chunks(len(y_true), resamples, seed):
        scores_a = _scores(_counts(y_true, pred_a, indices, classes))
        scores_b = _scores(_counts(y_true, pred_b, indices, classes))
        for key in keys:
            chunks[key].append(scores_b[key] - scores_a[key])
    none = Interval(0.0, 0.0, 0.0)
    result: dict[str, list[Interval]] = {}
    for position, key in enumerate(keys):
        differences = np.concatenate(chunks[key])  # (R, P)
        intervals = [none] * n_classes
        for column, c in enumerate(labels):
            intervals[c] = Interval(float(full_b[position][column] - full_a[position][column]),
                                    *_percentiles(differences[:, column], level))
        result[key] = intervals
    return result


def _resampled(metric, y_true, y_pred, indices: np.ndarray) -> np.ndarray:
    fast = getattr(metric, "resampled", None)
    if fast is not None:
        return fast(y_true, y_pred, indices)
    return np.array([metric(y_true[row], y_pred[row]) for row in indices], dtype=np.float64)


def _percentiles(differences: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _paired(y_true, pred_a, pred_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true, pred_a, pred_b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    if not (y_true.ndim == 1 and y_true.shape == pred_a.shape == pred_b.shape):
        raise ValueError(
            "y_true, pred_a and pred_b must be 1-D and of one length, got "
            f"{y_true.shape}, {pred_a.shape} and {pred_b.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("need at least one image to compare the models on")
    return y_true, pred_a, pred_b


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


# ---------------------------------------------------------------------------------------------
# McNemar's test
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    fixed: int  # images A got wrong and B got right
    broken: int  # images A got right and B got wrong
    p_value: float


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """McNemar's test (McNemar 1947) of "A and B are equally accurate", exact form.

    Only discordant pairs carry information. Under the null each of the ``fixed + broken``
    discordant images is equally likely to go either way, so ``fixed`` is Binomial(n, 1/2);
    the exact (conditional) test is the two-sided binomial test of that (scipy.stats.binomtest;
    for p = 1/2, twice the smaller tail, at most 1). Preferred over the chi-squared
    approximation when discordant pairs are few (Dietterich 1998; Fagerland et al. 2013 note
    it is conservative). With no discordant pair there is no evidence either way: p = 1.
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise ValueError(
            f"correctness vectors must be 1-D and of one length, got {correct_a.shape} and "
            f"{correct_b.shape}"
        )
    fixed = int(np.sum(~correct_a & correct_b))
    broken = int(np.sum(correct_a & ~correct_b))
    if fixed + broken == 0:
        return McNemar(fixed=0, broken=0, p_value=1.0)
    p_value = binomtest(fixed, fixed + broken, p=0.5, alternative="two-sided").pvalue
    return McNemar(fixed=fixed, broken=broken, p_value=float(p_value))


# ---------------------------------------------------------------------------------------------
# Map agreement: the two models' maps of the same image
# ---------------------------------------------------------------------------------------------


def to_common_size(maps, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps resized to (N, H, W) = ``size`` by bilinear interpolation.

    The two architectures' target layers give maps of different sizes (7x7, 14x14...);
    they must share a grid before pixel-wise comparison. cv2.resize with INTER_LINEAR, the
    bilinear upsampling the engine and the overlays use. Float32/float64 maps keep their
    dtype, anything else becomes float32. A constant map stays exactly constant (cv2's float
    bilinear weights reproduce it bit for bit; tests/test_paired.py holds it to that), so
    rank_correlation still calls it undefined instead of ranking rounding noise.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {maps.shape}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float32)
    resized = np.empty((len(maps), height, width), dtype=maps.dtype)
    for index, one in enumerate(maps):
        # cv2 takes (width, height).
        resized[index] = cv2.resize(one, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized


def rank_correlation(maps_a, maps_b) -> np.ndarray:
    """(N,) Spearman rank correlation between the two models' maps of each image.

    Pearson's correlation of the pixels' ranks (Spearman 1904), ties given their average
    rank: 1 means the two maps order the image's regions the same way, whatever their
    scales; -1 the opposite order. nan when either map is constant (the correlation is
    undefined, not 0). Both stacks must be of one shape: resize with ``to_common_size``.
    The formula is measures.rank_correlation's (the sanity check's similarity measure).
    """
    maps_a, maps_b = _same_grid(maps_a, maps_b)
    return measures.rank_correlation(maps_a, maps_b)


def top_region_iou(maps_a, maps_b, fraction: float = 0.15) -> np.ndarray:
    """(N,) intersection over union of the two maps' top regions, image by image.

    A map's top region is the pixels at or above its (1 - fraction) quantile, taken as the
    k-th largest value with k = ceil(fraction * pixels): the k highest pixels, plus every
    pixel tied with the k-th (ties are never split, so a region can be larger than the
    fraction). A flat map ties everywhere: its top region is the whole image, so two flat maps
    agree (1.0) and a flat map against a peaked one scores the peaked region's share of the
    image. Unlike Spearman, the IoU only asks whether the two models point at the same
    place, not how they order the rest. Both stacks must be of one shape.
    """
    maps_a, maps_b = _same_grid(maps_a, maps_b)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    top_a = _top_region(maps_a, fraction)
    top_b = _top_region(maps_b, fraction)
    intersection = np.sum(top_a & top_b, axis=1)
    union = np.sum(top_a | top_b, axis=1)  # never 0: each region holds k >= 1 pixels
    return intersection / union


def _top_region(maps: np.ndarray, fraction: float) -> np.ndarray:
    """(N, H*W) bool: each map's top region (see ``top_region_iou``)."""
    flat = maps.reshape(len(maps), -1)
    pixels = flat.shape[1]
    # Rounded first: 0.07 * 100 is 7.000000000000001 in binary, whose ceiling is 8.
    k = max(1, math.ceil(round(fraction * pixels, 9)))
    kth_largest = np.partition(flat, pixels - k, axis=1)[:, pixels - k]
    return flat >= kth_largest[:, None]


def _same_grid(maps_a, maps_b) -> tuple[np.ndarray, np.ndarray]:
    maps_a = np.asarray(maps_a, dtype=np.float64)
    maps_b = np.asarray(maps_b, dtype=np.float64)
    if maps_a.ndim != 3 or maps_a.shape != maps_b.shape:
        raise ValueError(
            f"need two (N, H, W) stacks of one shape, got {maps_a.shape} and {maps_b.shape}; "
            "bring them to one grid with to_common_size"
        )
    return maps_a, maps_b
