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


def test_the_sanity_check_is_pass_or_fail_not_a_contest_with_randomcam():
    label = next(label for key, label, _ in METRICS if key == "sanity")
    passing = scores(sanity=0.3)
    passing.values["randomcam"]["sanity"] = 0.05  # RandomCAM depends on the model too
    assert label in passing.beaten()[0]
    assert label in scores(sanity=0.8).beaten()[1]


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


def test_the_robustness_line_survives_maps_that_are_flat_on_the_changed_films():
    from report.findings import _robustness_line
    from report.robustness import Robustness

    nan = np.full(3, np.nan)
    flat = Robustness({"noise": nan, "jpeg": nan}, {"noise": nan, "jpeg": np.array([0.9, 0.8, 1])},
                      {"noise": 0, "jpeg": 1}, 3, nan, np.array([0.0, 0.1, -0.1]))
    line = _robustness_line(flat)
    assert line.level == "warn" and "JPEG" in line.text and "0.90" in line.text
    assert "1 of 6 predictions flipped" in line.text
    unmeasured = Robustness({"noise": nan}, {"noise": nan}, {"noise": 0}, 3, nan, nan)
    assert "could not be measured" in _robustness_line(unmeasured).text
