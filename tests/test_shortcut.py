"""The example the tool exists for (DeGrave et al. 2021): a model that learned a burned-in
hospital tag instead of the lungs is flagged; the same model trained on clean films is not.

Trains the demo model twice (about a minute each on two cores), as a user's `make demo`
would, so the thresholds are tested on the models the README shows.
"""

import mlflow
import pytest

from report.pipeline import explain, train

pytestmark = pytest.mark.slow


def shortcut_metrics(data: str, name: str) -> dict[str, float]:
    train(dict(data=data, model_name=name))
    result = explain(dict(model_uri=f"models:/{name}@champion", data=data))
    metrics = mlflow.get_run(result.run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("shortcut.")}


def test_a_model_trained_on_confounded_films_is_flagged(tracking_store):
    metrics = shortcut_metrics("synthetic-confounded", "confounded")
    assert metrics["shortcut.flagged_classes"] == 1
    assert metrics["shortcut.border_energy.COVID-19"] > 0.35
    assert metrics["shortcut.flagged_images"] >= 20


def test_a_model_trained_on_clean_films_is_not_flagged(tracking_store):
    metrics = shortcut_metrics("synthetic", "clean")
    assert metrics["shortcut.flagged_classes"] == 0
    assert max(v for k, v in metrics.items() if k.startswith("shortcut.border_energy.")) < 0.3
