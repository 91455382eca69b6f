"""The CheXlocalize protocol (Saporta et al. 2022): maps thresholded by Otsu's method, mIoU and
hit rate per class with bootstrap 95% intervals (issue 13, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from report import findings, measures
from report.cam.engine import Explanation
from report.checks import QualityAccumulator, QualityPlan
from report.data.records import LoadedImage

SIZE = 32


def reference_otsu_threshold(image: np.ndarray) -> int:
    """Otsu 1979, written out: the level t that maximises the between-class variance
    w0(t) w1(t) (mu0(t) - mu1(t))^2 of the 256-bin histogram, classes <= t and > t; the
    first such level when several tie."""
    histogram = np.bincount(image.ravel(), minlength=256).astype(float)
    p = histogram / histogram.sum()
    levels = np.arange(256)
    best, best_variance = 0, -1.0
    for t in range(256):
        w0, w1 = p[: t + 1].sum(), p[t + 1 :].sum()
        if w0 == 0 or w1 == 0:
            continue
        mu0 = (levels[: t + 1] * p[: t + 1]).sum() / w0
        mu1 = (levels[t + 1 :] * p[t + 1 :]).sum() / w1
        variance = w0 * w1 * (mu0 - mu1) ** 2
        if variance > best_variance + 1e-12:
            best, best_variance = t, variance
    return best


def reference_otsu_iou(value: np.ndarray, region: np.ndarray) -> float:
    low, high = value.min(), value.max()
    if high <= low:
        return 0.0
    scaled = np.round((value - low) / (high - low) * 255).astype(np.uint8)
    segmented = scaled > reference_otsu_threshold(scaled)
    return float((segmented & region).sum() / (segmented | region).sum())


def smooth_maps(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    maps = []
    for _ in range(n):
        cy, cx, width = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(3, 8)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
        maps.append(blob + 0.2 * rng.random((SIZE, SIZE)))
    return np.stack(maps).astype(np.float32)


def test_otsu_iou_matches_otsus_method_written_out():
    maps = smooth_maps(12, seed=1)
    regions = np.zeros_like(maps, dtype=bool)
    regions[:, 8:20, 10:24] = True
    got = measures.otsu_iou(maps, regions)
    expected = [reference_otsu_iou(m, r) for m, r in zip(maps, regions, strict=True)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert len(set(np.round(got, 6))) > 6  # the maps differ, so should their scores


def test_otsu_iou_of_a_two_level_map_is_its_bright_part_and_a_flat_map_scores_zero():
    value = np.zeros((SIZE, SIZE), np.float32)
    value[4:12, 4:12] = 1.0
    region = np.zeros((SIZE, SIZE), bool)
    region[4:12, 4:16] = True  # 64 of the bright pixels in a region of 96
    assert measures.otsu_iou(value[None], region)[0] == pytest.approx(64 / 96)
    assert measures.otsu_iou(np.ones((1, SIZE, SIZE)), region)[0] == 0.0


def test_bootstrap_interval_covers_the_true_mean_at_about_the_stated_rate():
    """IoU-like values from Beta(2, 5) (true mean 2/7), 60 images a class; over 1,000 data
    sets the 95% interval should cover 2/7 about 95% of the time. The percentile bootstrap
    runs a little short at this size (about 93-94%); the coverage estimate itself has a
    standard error of about 0.007, so the bounds below are several standard errors wide."""
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(1000):
        values = rng.beta(2, 5, size=60)
        _, low, high = measures.mean_interval(values, resamples=1000, seed=trial)
        covered += low <= 2 / 7 <= high
    assert 0.91 <= covered / 1000 <= 0.98


def test_bootstrap_interval_ignores_nan_and_is_reproducible():
    values = np.array([0.1, np.nan, 0.5, 0.9, 0.3])
    mean, low, high = measures.mean_interval(values)
    assert mean == pytest.approx(0.45) and low < mean < high
    assert measures.mean_interval(values) == (mean, low, high)
    assert all(np.isnan(v) for v in measures.mean_interval([np.nan]))


def test_the_localisation_section_reports_miou_and_hit_rate_per_class_with_intervals():
    plan = QualityPlan("fast", faithfulness_images=2, steps=2, sanity_images=1,
                       sanity_stages=1)
    accumulator = QualityAccumulator(plan, ("A", "B"), (SIZE, SIZE))
    maps = smooth_maps(8, seed=3)
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[8:20, 8:20] = True
    images = [LoadedImage(np.zeros((SIZE, SIZE, 3), np.uint8), str(i), lesion, None)
              for i in range(8)]
    labels = [0, 1] * 4
    explanation = Explanation(np.tile([[0.6, 0.4], [0.3, 0.7]], (4, 1)), np.array(labels),
                              maps, maps)
    accumulator.add_batch(labels, images, np.zeros((8, SIZE, SIZE, 3), np.float32),
                          explanation)
    results = accumulator.results()
    metrics = findings.explanation_metrics(results)
    iou = measures.otsu_iou(maps, lesion)
    hits = measures.pointing_hits(maps, lesion)
    for c, name in enumerate("AB"):
        chosen = np.array(labels) == c
        assert metrics[f"localisation.miou.{name}"] == pytest.approx(iou[chosen].mean())
        assert metrics[f"localisation.hit_rate.{name}"] == pytest.approx(hits[chosen].mean())
        assert (metrics[f"localisation.miou_low.{name}"] <= metrics[f"localisation.miou.{name}"]
                <= metrics[f"localisation.miou_high.{name}"])
    section = findings.section("localisation", results, 0)
    table = section.tables[1]
    assert table.headers == ["Class", "Images", "mIoU, Otsu (95% CI)", "(random)",
                             "Hit rate (95% CI)", "(random)"]
    assert [row[:2] for row in table.rows] == [["A", "4"], ["B", "4"]]
