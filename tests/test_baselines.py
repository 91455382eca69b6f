"""quality=full scores the method beside RandomCAM, Sobel edges and random maps by every
trust check, adds ROAD and the robustness check; quality=fast stays without them."""

from __future__ import annotations

import numpy as np
import pytest

import report
from report.baselines import METRICS, BaselineScores
from tests.conftest import TINY_SIZE, tiny_classifier

CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]


def scores(**method) -> BaselineScores:
    keys = [key for key, _, _ in METRICS]
    base = dict.fromkeys(keys, 0.5)
    return BaselineScores(
        [("method", "M"), ("randomcam", "R"), ("sobel", "S"), ("random", "X")],
        {"method": {**base, **method}, "randomcam": dict(base), "sobel": dict(base),
         "random": {**base, "sanity": float("nan")}},
        np.linspace(0, 1, 6), {}, 8, 8)


def test_the_method_beats_the_baselines_only_where_it_is_better_than_every_one():
    labels = {key: label for key, label, _ in METRICS}
    wins, losses = scores(deletion_auc=0.1, road_gap=0.9, border=0.6).beaten()
    assert labels["deletion_auc"] in wins and labels["road_gap"] in wins
    assert labels["border"] in losses  # lower is better there: 0.6 loses
    assert labels["insertion_auc"] in losses  # a tie is not a win
    assert len(wins) + len(losses) == len(METRICS)


@pytest.fixture(scope="module")
def audits():
    model = tiny_classifier(TINY_SIZE, "baselined", convs=2, seed=5)
    return {quality: report.audit(model, "synthetic:60", quality=quality, split="all",
                                  class_names=CLASSES, output_dir=None)
            for quality in ("fast", "full")}


def test_full_scores_the_method_beside_its_baselines_by_every_check(audits):
    metrics = audits["full"].metrics
    for explainer in ("method", "randomcam", "sobel", "random"):
        for key in ("deletion_auc", "insertion_auc", "road_gap", "average_drop", "pointing",
                    "otsu_iou", "border", "outside_lungs"):
            assert np.isfinite(metrics[f"baselines.{explainer}.{key}"]), (explainer, key)
    # Sobel edges ignore the model: randomising it leaves the maps exactly as they were.
    assert metrics["baselines.sobel.sanity"] == pytest.approx(1.0)
    assert metrics["baselines.method.sanity"] == pytest.approx(
        metrics["sanity.final_spearman"])
    assert metrics["faithfulness.road_gap"] == metrics["baselines.method.road_gap"]
    titles = [section.title for section in audits["full"].sections]
    assert any(title.startswith("Against baselines") for title in titles)


def test_full_measures_robustness_against_the_random_floor(audits):
    metrics = audits["full"].metrics
    for change in ("noise", "shift", "jpeg", "contrast"):
        assert metrics[f"robustness.{change}.spearman"] > metrics["robustness.random.spearman"]
        assert metrics[f"robustness.{change}.flips"] >= 0
    assert any(s.title.startswith("Robustness") for s in audits["full"].sections)


def test_fast_stays_without_the_full_only_checks(audits):
    metrics = audits["fast"].metrics
    assert not any(key.startswith(("baselines.", "robustness.")) for key in metrics)
    assert "faithfulness.road_gap" not in metrics
    titles = [section.title for section in audits["fast"].sections]
    assert not any(title.startswith(("Against baselines", "Robustness")) for title in titles)
