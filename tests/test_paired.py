"""Champion vs challenger statistics against slow references written from the formulas."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from report import paired
from report.paired import (
    Interval,
    accuracy,
    macro_f1,
    mcnemar_exact,
    paired_bootstrap,
    per_class_bootstrap,
    rank_correlation,
    resample_indices,
    to_common_size,
    top_region_iou,
)


def _two_models(n: int, seed: int = 0, classes: int = 3, rates=(0.7, 0.8)):
    """Labels and two models' predictions: each model right with its rate, else random."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, n)
    preds = [
        np.where(rng.random(n) < rate, y_true, rng.integers(0, classes, n)) for rate in rates
    ]
    return y_true, preds[0], preds[1]


def _slow_interval(y_true, pred_a, pred_b, score, indices, level=0.95):
    """The paired percentile bootstrap written out: one sklearn call per model per resample."""
    differences = [score(y_true[row], pred_b[row]) - score(y_true[row], pred_a[row])
                   for row in indices]
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    return score(y_true, pred_b) - score(y_true, pred_a), low, high


def _assert_interval(interval: Interval, expected, tolerance=1e-12):
    assert interval.estimate == pytest.approx(expected[0], abs=tolerance)
    assert interval.low == pytest.approx(expected[1], abs=tolerance)
    assert interval.high == pytest.approx(expected[2], abs=tolerance)


# ---------- paired bootstrap ----------


@pytest.fixture
def small_chunks(monkeypatch):
    """Several chunks of resamples and a short last one, so chunk boundaries are exercised."""
    monkeypatch.setattr(paired, "_CHUNK_ELEMENTS", 7 * 150)


def test_vectorised_accuracy_equals_sklearn_over_the_same_resamples(small_chunks):
    y_true, pred_a, pred_b = _two_models(150, seed=1)
    indices = resample_indices(150, 200, seed=3)

    interval = paired_bootstrap(y_true, pred_a, pred_b, accuracy, resamples=200, seed=3)

    assert indices.shape == (200, 150)
    np.testing.assert_allclose(
        accuracy.resampled(y_true, pred_a, indices),
        [accuracy_score(y_true[row], pred_a[row]) for row in indices], rtol=0, atol=1e-12,
    )
    expected = _slow_interval(y_true, pred_a, pred_b, accuracy_score, indices)
    _assert_interval(interval, expected)


def test_vectorised_macro_f1_equals_sklearn_even_when_a_class_is_missing(small_chunks):
    y_true, pred_a, pred_b = _two_models(150, seed=2)
    # One image of class 3: most resamples miss it in the labels, some in the predictions too.
    y_true[0], pred_b[0] = 3, 3

    def sklearn_macro_f1(y, p):
        return f1_score(y, p, labels=[0, 1, 2, 3], average="macro", zero_division=0)

    indices = resample_indices(150, 200, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0: no warning either
        interval = paired_bootstrap(y_true, pred_a, pred_b, macro_f1(4), resamples=200, seed=4)
        np.testing.assert_allclose(
            macro_f1(4).resampled(y_true, pred_b, indices),
            [sklearn_macro_f1(y_true[row], pred_b[row]) for row in indices],
            rtol=0, atol=1e-12,
        )
    assert any(3 not in y_true[row] for row in indices)
    expected = _slow_interval(y_true, pred_a, pred_b, sklearn_macro_f1, indices)
    _assert_interval(interval, expected)


def test_a_plain_callable_sees_the_same_resamples_as_the_fast_path():
    y_true, pred_a, pred_b = _two_models(80, seed=5)

    fast = paired_bootstrap(y_true, pred_a, pred_b, macro_f1(3), resamples=300, seed=7)
    slow = paired_bootstrap(y_true, pred_a, pred_b, lambda y, p: macro_f1(3)(y, p),
                            resamples=300, seed=7)

    _assert_interval(fast, (slow.estimate, slow.low, slow.high))


def test_per_class_intervals_equal_sklearn_over_the_same_resamples(small_chunks):
    y_true, pred_a, pred_b = _two_models(150, seed=6)
    pred_a[pred_a == 2] = 0  # A never predicts class 2: its precision there is 0 by convention
    indices = resample_indices(150, 200, seed=8)

    result = per_class_bootstrap(y_true, pred_a, pred_b, 3, resamples=200, seed=8)

    def scores(rows):  # (3 keys, 3 classes) per model, straight from sklearn
        return [np.array(precision_recall_fscore_support(
            y_true[rows], pred[rows], labels=[0, 1, 2], zero_division=0)[:3])
            for pred in (pred_a, pred_b)]

    full_a, full_b = scores(slice(None))
    differences = np.array([b - a for a, b in map(scores, indices)])  # (R, keys, classes)
    assert set(result) == {"precision", "recall", "f1"}
    for position, key in enumerate(("precision", "recall", "f1")):
        assert len(result[key]) == 3
        for c in range(3):
            low, high = np.quantile(differences[:, position, c], [0.025, 0.975])
            _assert_interval(result[key][c], (full_b[position, c] - full_a[position, c],
                                              low, high))


def test_bootstrap_is_reproducible_for_a_seed_and_changes_with_it():
    y_true, pred_a, pred_b = _two_models(200, seed=9)

    first = paired_bootstrap(y_true, pred_a, pred_b, accuracy, resamples=500, seed=1)
    again = paired_bootstrap(y_true, pred_a, pred_b, accuracy, resamples=500, seed=1)
    other = paired_bootstrap(y_true, pred_a, pred_b, accuracy, resamples=500, seed=2)

    assert first == again
    assert first.estimate == other.estimate
    assert (first.low, first.high) != (other.low, other.high)


def test_percentile_interval_covers_a_known_difference_about_95_percent_of_the_time():
    # Per image, four paired outcomes: both right .78, only A .02, only B .07, both wrong .13.
    # So A is right with 0.80, B with 0.85: the true difference is 0.05, and the two models are
    # strongly correlated. An interval that resampled A and B independently would be about
    # 1.8 times too wide and cover ~99.9 % (checked when writing this test), so the upper
    # bound catches a lost pairing; the lower bound catches an interval that is too narrow.
    # 1000 data sets: the coverage estimate's standard error is sqrt(.95 * .05 / 1000) ~ 0.007,
    # so [0.90, 0.99] is > 5 standard errors below and ~ 6 above a true 95 %. With this seed it
    # is 0.943 (the percentile interval runs slightly short at n = 300).
    rng = np.random.default_rng(2024)
    n, datasets, true_difference = 300, 1000, 0.05
    covered = 0
    for seed in range(datasets):
        outcome = rng.choice(4, size=n, p=[0.78, 0.02, 0.07, 0.13])
        right_a = (outcome == 0) | (outcome == 1)
        right_b = (outcome == 0) | (outcome == 2)
        y_true = np.zeros(n, dtype=int)
        interval = paired_bootstrap(
            y_true, np.where(right_a, 0, 1), np.where(right_b, 0, 1), accuracy,
            resamples=1000, seed=seed,
        )
        covered += interval.low <= true_difference <= interval.high
    assert 0.90 <= covered / datasets <= 0.99


def test_large_comparisons_are_fast():
    # 1000 resamples of 10,000 images, three times: the same loop of sklearn calls takes about
    # 11 s on two cores; the vectorised paths about 0.5 s.
    import time

    y_true, pred_a, pred_b = _two_models(10_000, seed=10)
    started = time.perf_counter()
    paired_bootstrap(y_true, pred_a, pred_b, accuracy)
    paired_bootstrap(y_true, pred_a, pred_b, macro_f1(3))
    per_class_bootstrap(y_true, pred_a, pred_b, 3)
    assert time.perf_counter() - started < 5


def test_excludes_zero():
    assert Interval(0.05, 0.01, 0.09).excludes_zero
    assert Interval(-0.05, -0.09, -0.01).excludes_zero
    assert not Interval(0.05, -0.01, 0.09).excludes_zero
    assert not Interval(0.05, 0.0, 0.09).excludes_zero  # touching 0 is not excluding it


def test_bootstrap_rejects_bad_input():
    y_true, pred_a, pred_b = _two_models(20)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(y_true, pred_a, pred_b[:-1], accuracy)
    with pytest.raises(ValueError, match="at least one image"):
        paired_bootstrap([], [], [], accuracy)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(y_true, pred_a, pred_b, accuracy, level=95)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        paired_bootstrap(y_true, pred_a, pred_b, macro_f1(2))  # labels go up to 2


# ---------- McNemar ----------


def _hand_mcnemar(fixed: int, broken: int) -> float:
    """Exact two-sided p: twice the smaller binomial tail, sum of C(n, k) / 2^n, at most 1."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("fixed, broken", [(0, 0), (0, 5), (7, 1), (3, 3), (10, 2), (4, 9)])
def test_mcnemar_equals_the_binomial_formula(fixed, broken):
    # Concordant pairs (both right, both wrong) must not change anything.
    correct_a = np.array([False] * fixed + [True] * broken + [True] * 20 + [False] * 6)
    correct_b = np.array([True] * fixed + [False] * broken + [True] * 20 + [False] * 6)
    order = np.random.default_rng(fixed * 31 + broken).permutation(len(correct_a))

    result = mcnemar_exact(correct_a[order], correct_b[order])

    assert (result.fixed, result.broken) == (fixed, broken)
    assert result.p_value == pytest.approx(_hand_mcnemar(fixed, broken), rel=1e-12)


def test_mcnemar_hand_values():
    assert mcnemar_exact([False] * 5, [True] * 5).p_value == pytest.approx(2 / 32)
    assert mcnemar_exact([False] * 7 + [True], [True] * 7 + [False]).p_value == pytest.approx(
        2 * (1 + 8) / 256)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0


# ---------- map agreement ----------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks by argsort; a run of equal values shares the mean of its positions."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[order[end + 1]] == values[order[start]]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _slow_spearman(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _average_ranks(a.ravel()), _average_ranks(b.ravel())
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float("nan") if denominator == 0 else float(np.sum(dx * dy) / denominator)


def test_rank_correlation_matches_the_formula_with_ties_anticorrelation_and_constants():
    rng = np.random.default_rng(11)
    a = rng.random((5, 6, 7))
    b = a + 0.3 * rng.random((5, 6, 7))
    a[1] = np.round(a[1] * 3)  # heavy ties: four distinct values
    b[1] = np.round(b[1] * 2)
    b[2] = -a[2]  # perfectly anti-correlated
    b[3] = 0.25  # constant
    a[4] = b[4] = 0.0  # both constant

    got = rank_correlation(a, b)

    expected = [_slow_spearman(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got[2] == pytest.approx(-1.0)
    assert np.isnan(got[3]) and np.isnan(got[4])
    assert not np.isnan(got[:3]).any()


def test_map_agreement_needs_one_grid():
    with pytest.raises(ValueError, match="to_common_size"):
        rank_correlation(np.zeros((2, 7, 7)), np.zeros((2, 14, 14)))
    with pytest.raises(ValueError, match="to_common_size"):
        top_region_iou(np.zeros((2, 7, 7)), np.zeros((2, 14, 14)))


def test_top_region_iou_hand_case_ties_and_flat_maps():
    # 4 x 5 = 20 pixels, fraction 0.15: k = 3 pixels per top region.
    a = np.zeros((4, 5))
    b = np.zeros((4, 5))
    a[0, 0], a[0, 1], a[1, 1] = 9, 8, 7
    b[0, 0], b[0, 1], b[3, 4] = 5, 6, 4  # shares two of a's three pixels
    ties = np.zeros((4, 5))
    ties[0, :4] = 1.0  # four pixels tie for the top: all four are kept, none split off
    flat = np.full((4, 5), 0.5)
    maps_a = np.stack([a, a, a, flat, flat])
    maps_b = np.stack([b, a * 10 + 1, ties, flat, a])

    got = top_region_iou(maps_a, maps_b, fraction=0.15)

    # a vs ties: intersection {(0,0), (0,1)}, union {(0,0), (0,1), (1,1), (0,2), (0,3)}.
    # A flat map's top region is the whole image: IoU with a's 3 pixels is 3 / 20.
    np.testing.assert_allclose(got, [2 / 4, 1.0, 2 / 5, 1.0, 3 / 20], rtol=0, atol=1e-15)


def test_top_region_takes_exactly_the_fraction_without_ties():
    # Against a flat map (the whole image) the IoU is the top region's share of the image.
    ramp = np.arange(100.0).reshape(1, 10, 10)
    flat = np.ones((1, 10, 10))
    assert top_region_iou(ramp, flat)[0] == pytest.approx(0.15)
    # 0.07 * 100 is 7.000000000000001 in floating point: the region must still be 7 pixels.
    assert top_region_iou(ramp, flat, fraction=0.07)[0] == pytest.approx(0.07)
    assert top_region_iou(ramp, ramp, fraction=0.5)[0] == 1.0


def test_to_common_size_keeps_constants_and_orientation():
    values = np.random.default_rng(13).random(50).astype(np.float32) * 10
    constants = values[:, None, None] * np.ones((1, 7, 7), np.float32)
    maps = np.concatenate([constants, np.zeros((1, 7, 7), np.float32),
                           np.tile(np.arange(7, dtype=np.float32), (1, 7, 1))])

    resized = to_common_size(maps, (48, 48))

    # Bit for bit: a constant map that picked up rounding noise would get a rank correlation.
    assert resized.shape == (52, 48, 48) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized[:50], np.broadcast_to(values[:, None, None],
                                                                (50, 48, 48)))
    assert np.all(resized[50] == 0)
    assert np.isnan(rank_correlation(resized[:1], to_common_size(maps[-1:], (48, 48)))[0])
    np.testing.assert_array_equal(
        resized[-1], cv2.resize(maps[-1], (48, 48), interpolation=cv2.INTER_LINEAR))
    # Not square: cv2 takes (width, height), the result must be (N, H, W) all the same.
    wide = to_common_size(maps[-1:], (30, 50))
    assert wide.shape == (1, 30, 50)
    assert np.all(np.diff(wide[0], axis=0) == 0) and np.all(np.diff(wide[0], axis=1) >= 0)
    assert wide[0, 0, -1] > wide[0, 0, 0]

