"""`mlflow.models.evaluate(..., evaluators=["cxr-gradcam"])`, through the installed entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from report.evaluator import CxrGradcamEvaluator, images_from_features

CLASSES = ["normal", "pneumonia", "covid"]
SIZE = 32


@pytest.fixture
def logged_model(tracking_store) -> str:
    """A tiny untrained CNN logged with the metadata contract; its models:/ URI."""
    import keras
    import mlflow

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    metadata = {"class_names": CLASSES,
                "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb", "scale": 1 / 255}}
    with mlflow.start_run():
        info = mlflow.keras.log_model(model, name="model", save_exported_model=False,
                                      metadata=metadata, pip_requirements=["keras"])
    return info.model_uri


def test_the_entry_point_names_the_evaluator():
    entries = entry_points(group="mlflow.model_evaluator", name="cxr-gradcam")
    assert [entry.load() for entry in entries] == [CxrGradcamEvaluator], (
        "not registered: reinstall with pip install -e . --no-deps")


def test_evaluate_logs_the_audit_into_the_evaluation_run(logged_model):
    import mlflow
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, SIZE, SIZE, 3), dtype=np.uint8)
    data = pd.DataFrame({"image": list(images), "label": CLASSES * 3})

    result = mlflow.models.evaluate(
        logged_model, data, targets="label", model_type="classifier",
        evaluators=["cxr-gradcam"], evaluator_config={"cxr-gradcam": {"quality": "off"}},
    )

    client = MlflowClient()
    logged = {item.path for item in client.list_artifacts(result.run_id, "report")}
    assert {"report/report.html", "report/report.pdf"} <= logged
    metrics = client.get_run(result.run_id).data.metrics
    assert "accuracy" in result.metrics
    assert {k: metrics[k] for k in result.metrics} == pytest.approx(result.metrics)
    assert result.artifacts["report_pdf"].content.startswith(b"%PDF")
    assert b"<html" in result.artifacts["report_html"].content.lower()
    assert len(result.artifacts["predictions"].content) == len(data)


@pytest.mark.parametrize(("config", "refusal"), [
    ({"colour_map": "jet"}, "colour_map"),
    ({"quality": "off"}, "Keras model"),
])
def test_bad_config_or_model_is_refused_by_name(tracking_store, config, refusal):
    import mlflow

    data = pd.DataFrame({"image": ["a.png"], "label": [0]})
    with pytest.raises(ValueError, match=refusal):
        mlflow.models.evaluate(
            lambda frame: np.zeros(len(frame)), data, targets="label", model_type="classifier",
            evaluators=["cxr-gradcam"], evaluator_config={"cxr-gradcam": config},
        )


def test_only_classifiers_are_evaluated():
    assert CxrGradcamEvaluator.can_evaluate(model_type="classifier", evaluator_config={})
    assert not CxrGradcamEvaluator.can_evaluate(model_type="regressor", evaluator_config={})


def test_flattened_rows_become_images_at_the_model_size():
    rgb = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert np.array_equal(images_from_features(rgb.reshape(2, -1), (4, 6)), rgb)
    assert images_from_features(np.zeros((2, 24)), (4, 6)).shape == (2, 4, 6)
    with pytest.raises(ValueError, match="flattened 4x6 image"):
        images_from_features(np.zeros((2, 25)), (4, 6))


def test_paths_are_read_and_arrays_passed_on(tmp_path):
    path = tmp_path / "film.png"
    Image.fromarray(np.full((20, 10), 200, np.uint8)).save(path)
    array = np.ones((5, 7), np.uint8)

    images = images_from_features(pd.DataFrame({"image": [str(path), array]}), (4, 6))

    assert images[0].shape == (20, 10, 3) and (images[0] == 200).all()
    assert images[1] is array


def test_more_than_one_feature_column_asks_which_is_the_image():
    features = pd.DataFrame({"image": [np.zeros((4, 4))], "age": [40]})
    with pytest.raises(ValueError, match="feature_names"):
        images_from_features(features, (4, 4))


def test_a_model_saved_to_a_folder_is_audited_with_its_own_preprocessing(tracking_store,
                                                                         tmp_path):
    """No logged-model id: the MLmodel's preprocessing (here unscaled pixels) still applies,
    and nothing is left under ./reports (the evaluation run holds the files)."""
    import keras
    import mlflow

    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    folder = tmp_path / "saved"
    mlflow.keras.save_model(model, str(folder), save_exported_model=False, metadata={
        "class_names": CLASSES,
        "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb", "scale": 1.0}})
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    data = pd.DataFrame({"image": list(images), "label": CLASSES * 2})
    result = mlflow.models.evaluate(
        str(folder), data, targets="label", model_type="classifier",
        evaluators=["cxr-gradcam"], evaluator_config={"cxr-gradcam": {"quality": "off"}},
    )
    table = result.artifacts["predictions"].content
    expected = model.predict(images.astype(np.float32), verbose=0)  # scale 1.0, not 1/255
    probabilities = table[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=float)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert not (tmp_path / "reports").exists()
