"""Quality metrics against hand-computed cases and slow references written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from report.measures import (
    average_drop,
    border_band,
    calibration,
    classification_quality,
    curve_auc,
    deletion_order,
    energy_inside,
    energy_outside,
    estimated_lung_fields,
    increase_in_confidence,
    iou_at,
    pointing_hits,
    random_maps,
    rank_correlation,
    roc_curves,
)


def _one_box(shape=(8, 10), rows=slice(2, 5), cols=slice(3, 7)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# ---------- classification ----------


def test_classification_quality_still_works():
    quality = classification_quality(np.array([0, 1, 1]), np.array([0, 1, 0]), ("a", "b"))
    assert quality.accuracy == pytest.approx(2 / 3)
    assert quality.confusion.tolist() == [[1, 0], [1, 1]]


def test_roc_auc_matches_hand_value_and_is_none_for_a_missing_class():
    y_true = np.array([0, 0, 1, 1])
    # Class 0 scores: positives 0.9, 0.4; negatives 0.6, 0.2 -> 3 of 4 pairs ranked right.
    probabilities = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]])

    curves = roc_curves(y_true, probabilities, ["a", "b", "never seen"])

    assert [curve.class_name for curve in curves] == ["a", "b", "never seen"]
    assert curves[0].auc == pytest.approx(0.75)
    assert curves[1].auc == pytest.approx(0.75)
    assert curves[2].auc is None
    assert curves[2].fpr.size == 0 and curves[2].tpr.size == 0
    assert curves[0].fpr[0] == 0 and curves[0].tpr[-1] == 1


def test_roc_auc_is_none_when_a_class_has_no_negatives():
    curves = roc_curves(np.array([0, 0]), np.array([[0.7, 0.3], [0.6, 0.4]]), ["a", "b"])
    assert curves[0].auc is None and curves[1].auc is None


def test_roc_rejects_wrong_column_count():
    with pytest.raises(ValueError, match="columns"):
        roc_curves(np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b", "c"])


def test_ece_is_zero_when_every_bin_is_perfectly_calibrated():
    # Bin (0.7, 0.8]: 4 images at 0.75 confidence, 3 right. Bin (0.9, 1]: 2 at 1.0, both right.
    probabilities = np.array([[0.75, 0.25]] * 4 + [[1.0, 0.0]] * 2)
    y_true = np.array([0, 0, 0, 1, 0, 0])

    result = calibration(y_true, probabilities, n_bins=10)

    assert result.ece == pytest.approx(0.0, abs=1e-12)
    assert result.bin_count.tolist() == [0] * 7 + [4, 0, 2]
    assert result.bin_accuracy[7] == pytest.approx(0.75)
    assert np.isnan(result.bin_confidence[0]) and np.isnan(result.bin_accuracy[0])


def test_ece_two_bin_hand_case():
    # Bin [0, 0.5]: confidences 0.5, 0.5 -> mean 0.5, one right -> accuracy 0.5, gap 0.
    # Bin (0.5, 1]: confidences 0.6, 0.8, 1.0 -> mean 0.8, all right -> gap 0.2, weight 3/5.
    probabilities = np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4], [0.2, 0.8], [1.0, 0.0]])
    y_true = np.array([0, 1, 0, 1, 0])

    result = calibration(y_true, probabilities, n_bins=2)

    assert result.bin_edges.tolist() == [0.0, 0.5, 1.0]
    assert result.bin_count.tolist() == [2, 3]
    assert result.bin_confidence.tolist() == pytest.approx([0.5, 0.8])
    assert result.bin_accuracy.tolist() == pytest.approx([0.5, 1.0])
    assert result.ece == pytest.approx(3 / 5 * 0.2)


def test_ece_matches_a_slow_reference():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(3), size=200)
    y_true = rng.integers(0, 3, 200)
    n_bins = 7

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    expected = 0.0
    for m in range(1, n_bins + 1):
        in_bin = [(m - 1) / n_bins < c <= m / n_bins for c in confidence]
        members = [i for i, inside in enumerate(in_bin) if inside]
        if members:
            gap = abs(np.mean(correct[members]) - np.mean(confidence[members]))
            expected += len(members) / len(y_true) * gap

    assert calibration(y_true, probabilities, n_bins).ece == pytest.approx(expected)


def test_calibration_without_images_is_nan():
    result = calibration(np.array([], dtype=int), np.zeros((0, 2)))
    assert np.isnan(result.ece) and result.bin_count.sum() == 0


def test_map_equal_to_the_mask_is_a_perfect_localisation():
    mask = _one_box()[None]
    maps = mask.astype(np.float32)

    assert pointing_hits(maps, mask).tolist() == [True]
    assert energy_inside(maps, mask) == pytest.approx([1.0])
    assert iou_at(maps, mask) == pytest.approx([1.0])
    assert energy_outside(maps, mask) == pytest.approx([0.0])


def test_uniform_map_energy_is_the_mask_area_fraction():
    mask = _one_box()[None]
    maps = np.full(mask.shape, 0.3, dtype=np.float32)
    assert energy_inside(maps, mask) == pytest.approx([mask.mean()])
    assert energy_inside(maps, mask)[0] == pytest.approx(12 / 80)


def test_map_peaked_outside_the_mask_misses():
    mask = _one_box()[None]
    maps = np.where(mask, 0.5, 0.1).astype(np.float32)
    maps[0, 7, 9] = 0.9  # the single maximum, outside the box

    assert pointing_hits(maps, mask).tolist() == [False]
    # Energy: inside 12 * 0.5 = 6; total 6 + 67 * 0.1 + 0.9 = 13.6.
    assert energy_inside(maps, mask) == pytest.approx([6 / 13.6])


def test_pointing_ties_hit_if_any_maximum_is_inside_and_zero_map_misses():
    mask = _one_box()
    maps = np.zeros((3, *mask.shape), dtype=np.float32)
    maps[0, 0, 0] = maps[0, 3, 4] = 1.0  # tie: one maximum outside, one inside
    maps[1, 0, 0] = maps[1, 7, 9] = 1.0  # tie: both outside
    # maps[2] is zero everywhere
    empty = np.zeros_like(mask)

    assert pointing_hits(maps, mask).tolist() == [True, False, False]
    assert pointing_hits(np.ones((1, *mask.shape)), empty[None]).tolist() == [False]


def test_all_zero_map_energy_is_nan_and_iou_zero():
    mask = _one_box()[None]
    maps = np.zeros(mask.shape, dtype=np.float32)
    assert np.isnan(energy_inside(maps, mask)[0])
    assert np.isnan(energy_outside(maps, mask)[0])
    assert iou_at(maps, mask).tolist() == [0.0]


def test_iou_hand_case():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2, :2] = True  # 4 pixels
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    maps[0, 0, :3] = 1.0  # 3 pixels >= 0.15 * max; 2 of them inside
    maps[0, 3, 3] = 0.1  # below 15 % of the maximum: not highlighted
    # intersection 2, union 4 + 3 - 2 = 5
    assert iou_at(maps, mask) == pytest.approx([2 / 5])
    # at 5 % the 0.1 pixel joins: union 6
    assert iou_at(maps, mask, fraction=0.05) == pytest.approx([2 / 6])


def test_localisation_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 9, 11)).astype(np.float32) ** 3
    masks = rng.random((5, 9, 11)) > 0.6
    for b in range(5):
        total = inside = 0.0
        for i in range(9):
            for j in range(11):
                total += float(maps[b, i, j])
                inside += float(maps[b, i, j]) if masks[b, i, j] else 0.0
        assert energy_inside(maps, masks)[b] == pytest.approx(inside / total)
        peak = np.unravel_index(np.argmax(maps[b]), maps[b].shape)
        assert pointing_hits(maps, masks)[b] == masks[b][peak]
        high = maps[b] >= 0.15 * maps[b].max()
        union = np.sum(high | masks[b])
        assert iou_at(maps, masks)[b] == pytest.approx(np.sum(high & masks[b]) / union)


def test_one_mask_for_all_images_and_shape_errors():
    mask = _one_box()
    maps = np.stack([mask, ~mask]).astype(np.float32)
    assert energy_inside(maps, mask) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="do not match"):
        energy_inside(maps, mask[:, :5])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pointing_hits(maps[0], mask)


# ---------- shortcut detection ----------


def test_border_band_width():
    band = border_band((100, 200), fraction=0.1)  # 0.1 * min(100, 200) = 10 pixels

    assert band.shape == (100, 200) and band.dtype == bool
    middle_column = band[:, 100]
    assert middle_column[:10].all() and middle_column[-10:].all()
    assert not middle_column[10:90].any()
    middle_row = band[50]
    assert middle_row[:10].all() and middle_row[-10:].all() and not middle_row[10:190].any()
    assert band.sum() == 100 * 200 - 80 * 180


def test_border_band_default_and_edges():
    assert border_band((224, 224))[112, :18].all()  # round(0.08 * 224) = 18
    assert not border_band((224, 224))[112, 18]
    assert not border_band((50, 50), fraction=0.0).any()
    assert border_band((50, 50), fraction=0.001)[0].all()  # at least one pixel
    with pytest.raises(ValueError):
        border_band((50, 50), fraction=0.6)


def test_estimated_lung_fields_two_symmetric_components_inside_the_image():
    height, width = 240, 200
    lungs = estimated_lung_fields((height, width))

    assert lungs.shape == (height, width) and lungs.dtype == bool
    # Inside the image with a margin: nothing on the border or in the lower quarter.
    assert not lungs[0].any() and not lungs[-1].any()
    assert not lungs[:, 0].any() and not lungs[:, -1].any()
    assert not lungs[int(0.8 * height):].any()
    _, components = ndimage.label(lungs)
    assert components == 2
    assert np.array_equal(lungs, lungs[:, ::-1])  # left-right symmetric
    # Each ellipse covers about pi * 0.15 * 0.30 of the image.
    assert lungs.mean() == pytest.approx(2 * np.pi * 0.15 * 0.30, rel=0.02)
    assert lungs[int(0.45 * height), int(0.31 * width)]  # the left centre
    assert not lungs[int(0.45 * height), width // 2]  # the mediastinum


def test_energy_outside_is_one_minus_inside():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    lungs = estimated_lung_fields((16, 16))
    assert energy_outside(maps, lungs) == pytest.approx(1 - energy_inside(maps, lungs))


# ---------- faithfulness ----------


def test_deletion_order_most_important_first_ties_in_raster_order():
    maps = np.array([[[0.1, 0.5], [0.5, 0.9]], [[0.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
    order = deletion_order(maps)
    assert order.tolist() == [[3, 1, 2, 0], [0, 1, 2, 3]]


def test_deletion_order_matches_a_slow_reference_with_many_ties():
    rng = np.random.default_rng(7)
    maps = rng.integers(0, 3, size=(2, 16, 16)).astype(np.float32)  # heavy ties
    for b in range(2):
        values = maps[b].ravel()
        expected = sorted(range(values.size), key=lambda i: (-values[i], i))
        assert deletion_order(maps)[b].tolist() == expected


def test_curve_auc_constant_and_linear():
    fractions = np.linspace(0, 1, 11)
    scores = np.stack([np.full(11, 0.7), 1 - fractions, fractions**2])

    areas = curve_auc(scores)

    assert areas[0] == pytest.approx(0.7)
    assert areas[1] == pytest.approx(0.5)
    # Trapezoids overestimate x^2 slightly: sum of the 10 trapezoids is 0.335.
    assert areas[2] == pytest.approx(0.335)
    with pytest.raises(ValueError):
        curve_auc(np.ones((2, 1)))


def test_average_drop_and_increase_in_confidence_hand_case():
    original = np.array([0.8, 0.5, 0.4, 0.9])
    explained = np.array([0.4, 0.6, 0.4, 0.0])
    # drops: 0.4/0.8 = 0.5, 0 (rose), 0 (equal), 0.9/0.9 = 1 -> mean 0.375
    assert average_drop(original, explained) == pytest.approx(37.5)
    # only the second image rises strictly
    assert increase_in_confidence(original, explained) == pytest.approx(25.0)


def test_average_drop_edge_cases():
    assert np.isnan(average_drop(np.array([]), np.array([])))
    assert np.isnan(increase_in_confidence(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="positive"):
        average_drop(np.array([0.0]), np.array([0.1]))
    with pytest.raises(ValueError):
        average_drop(np.array([0.5, 0.5]), np.array([0.5]))


def test_random_maps_deterministic_per_seed_and_smooth():
    first = random_maps((3, 64, 48), seed=5)
    again = random_maps((3, 64, 48), seed=5)
    other = random_maps((3, 64, 48), seed=6)

    assert first.shape == (3, 64, 48) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first[0], first[1])  # images in one batch differ too
    assert first.min() >= 0 and first.max() <= 1
    # Bilinear from a 7 x 7 grid: neighbouring pixels differ far less than white noise would.
    assert np.abs(np.diff(first, axis=2)).max() < 0.2


# ---------- sanity check ----------


def test_rank_correlation_self_negation_and_constant():
    rng = np.random.default_rng(2)
    maps = rng.random((3, 8, 8))
    constant = np.ones((1, 8, 8))

    assert rank_correlation(maps, maps) == pytest.approx([1.0, 1.0, 1.0])
    assert rank_correlation(maps, -maps) == pytest.approx([-1.0, -1.0, -1.0])
    assert np.isnan(rank_correlation(constant, maps[:1])[0])
    assert np.isnan(rank_correlation(maps[:1], constant)[0])


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    a = np.maximum(rng.normal(size=(4, 6, 7)), 0)  # ReLU'd: many tied zeros
    b = np.maximum(a + rng.normal(scale=0.5, size=a.shape), 0)

    result = rank_correlation(a, b)

    for index in range(4):
        expected = spearmanr(a[index].ravel(), b[index].ravel()).statistic
        assert result[index] == pytest.approx(expected)
