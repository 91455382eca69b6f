"""`python -m report methods`: every method and both baselines on one sample, ranked, the
recommendation's rule, and the run it logs."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import report
from report import methods, methods_report
from report.cam.engine import BASELINES, METHODS
from tests.conftest import TINY_SIZE, run_cli, tiny_classifier


def score(method: str, baseline: bool = False, **values) -> methods.MethodScore:
    defaults = {"deletion_auc": 0.5, "insertion_auc": 0.5, "road_morf_auc": 0.5,
                "road_lerf_auc": 0.5, "road_gap": 0.0, "otsu_iou": float("nan"),
                "sanity": 0.1, "robustness": 0.9, "seconds_per_image": 0.01}
    return methods.MethodScore(method, method.title(), baseline, {**defaults, **values},
                               np.zeros((0, 4, 4)))


def ranked(scores, has_masks=False):
    methods._rank(scores, has_masks)
    return scores


def test_ranks_follow_each_criterion_direction_and_skip_the_baselines():
    a = score("a", deletion_auc=0.2, road_gap=0.3, sanity=0.1, seconds_per_image=0.02)
    b = score("b", deletion_auc=0.4, road_gap=0.1, sanity=0.2, seconds_per_image=0.01)
    base = score("base", baseline=True, deletion_auc=0.1, road_gap=0.9)
    ranked([a, b, base])
    assert a.ranks == {"deletion_auc": 1, "road_gap": 1, "sanity": 1, "seconds_per_image": 2}
    assert b.ranks == {"deletion_auc": 2, "road_gap": 2, "sanity": 2, "seconds_per_image": 1}
    assert base.ranks == {}
    # Faithfulness counts fully, sanity and cost by half: (1 + 1 + 0.5 + 1) / 3.
    assert a.mean_rank == pytest.approx((1 + 1 + 0.5 * 1 + 0.5 * 2) / 3)
    assert "otsu_iou" not in a.ranks  # no masks, no localisation rank


def test_equal_values_share_a_place_rather_than_follow_the_list_order():
    a = score("a", deletion_auc=0.3001, seconds_per_image=0.00151)
    b = score("b", deletion_auc=0.2999, seconds_per_image=0.00149)  # the same, as shown
    ranked([a, b])
    assert a.ranks == b.ranks == {"deletion_auc": 1, "road_gap": 1, "sanity": 1,
                                  "seconds_per_image": 1}


def test_localisation_is_ranked_only_where_there_are_masks():
    a = score("a", otsu_iou=0.2)
    b = score("b", otsu_iou=0.6)
    ranked([a, b], has_masks=True)
    assert (a.ranks["otsu_iou"], b.ranks["otsu_iou"]) == (2, 1)


def test_a_method_that_fails_sanity_or_no_better_than_a_baseline_is_never_recommended():
    insane = score("insane", deletion_auc=0.01, road_gap=0.9, sanity=0.95)
    weak = score("weak", deletion_auc=0.02, road_gap=0.04)
    good = score("good", deletion_auc=0.3, road_gap=0.2, seconds_per_image=1.0)
    floor = score("sobel", baseline=True, road_gap=0.05)
    scores = ranked([insane, weak, good, floor])
    assert insane.mean_rank < good.mean_rank and weak.mean_rank < good.mean_rank
    assert methods.recommend(scores) == "good"
    assert methods.recommend(ranked([insane, weak, floor])) is None


@pytest.fixture(scope="module")
def ranking():
    """A real ranking: a tiny trained-looking classifier on synthetic films with masks."""
    model = tiny_classifier(TINY_SIZE, "rank-me", convs=2, seed=3)
    return report.rank_methods(model, "synthetic:24", sample=8, batch_size=4, split="all",
                               class_names=["COVID-19", "NORMAL", "OTHER_INFECTION"])


def test_every_method_and_baseline_is_scored_on_the_same_sample(ranking):
    assert [s.method for s in ranking.scores] == [*METHODS, *BASELINES]
    assert len(ranking.sample.image_ids) == 8
    for entry in ranking.scores:
        for key in ("deletion_auc", "insertion_auc", "road_gap", "sanity", "robustness",
                    "seconds_per_image"):
            assert np.isfinite(entry.values[key]), (entry.method, key)
        assert entry.values["seconds_per_image"] > 0
        assert entry.maps.shape == (methods.GALLERY_IMAGES, TINY_SIZE, TINY_SIZE)
    # The Sobel map ignores the model: randomising its weights cannot change it.
    assert ranking.score("sobel").values["sanity"] == pytest.approx(1.0)
    assert not ranking.score("sobel").sanity_passed
    # Synthetic films carry lesion masks: localisation is measured and ranked.
    assert ranking.has_masks
    assert all("otsu_iou" in entry.ranks for entry in ranking.methods)


def test_the_recommendation_obeys_its_rule(ranking):
    if ranking.recommended is None:
        floor = max(b.values["road_gap"] for b in ranking.baselines)
        assert all(not m.sanity_passed or m.values["road_gap"] <= floor
                   for m in ranking.methods)
    else:
        best = ranking.score(ranking.recommended)
        assert best.sanity_passed and not best.baseline
        assert ranking.recommended == methods.recommend(ranking.scores)


def test_metrics_have_mlflow_safe_names(ranking):
    metrics = ranking.metrics()
    assert "methods.gradcam__.road_gap" in metrics  # gradcam++: no "+" in MLflow keys
    assert "methods.sobel.deletion_auc" in metrics
    assert all(set(key) <= set("abcdefghijklmnopqrstuvwxyz_.") for key in metrics)


def test_the_report_names_every_method_and_shows_the_gallery(ranking, tmp_path):
    html_path, pdf_path = methods_report.write(ranking, tmp_path)
    html = html_path.read_text()
    for entry in ranking.scores:
        assert methods_report.short_title(entry) in html
    assert html.count('class="gallery-row"') == methods.GALLERY_IMAGES
    # The film plus every method and baseline, per gallery row.
    assert html.count('class="method-tile"') == methods.GALLERY_IMAGES * (len(ranking.scores) + 1)
    assert "Not for clinical use" in html
    assert pdf_path.read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_the_cli_logs_a_run_and_tags_the_model_version(registered_store, tmp_path):
    result = run_cli(["methods", "--model-uri", "models:/tiny-cxr@champion", "--data",
                      "synthetic:12", "--sample", "6", "--batch-size", "3", "--output-dir",
                      str(tmp_path)], registered_store, tmp_path)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("recommended: ")
    run_id = lines[1].removeprefix("run: ")
    client = MlflowClient(registered_store["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "methods.gradcam.deletion_auc" in run.data.metrics
    assert run.data.params["sample"] == "6"
    artifacts = {item.path for item in client.list_artifacts(run_id, "report")}
    assert artifacts == {"report/methods.html", "report/methods.pdf"}
    version = client.get_model_version_by_alias("tiny-cxr", "champion")
    assert version.tags["audit.methods_run_id"] == run_id
    recommended = lines[0].removeprefix("recommended: ")
    assert version.tags["audit.recommended_method"] == recommended.split(" ")[0]
