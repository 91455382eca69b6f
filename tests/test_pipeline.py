"""The report pipeline in-process, for model kinds the demo does not train."""

import csv
import zipfile

import keras
import mlflow
import numpy as np
import pytest
from keras import layers

from report import tracking
from report.data.synthetic import CLASS_NAMES
from report.model import ModelMetadata
from report.pipeline import explain


def register(model: keras.Model, name: str) -> None:
    metadata = ModelMetadata(CLASS_NAMES, (64, 64))
    with mlflow.start_run():
        tracking.log_and_register(model, metadata, name, "champion")


def small_model(activation: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        layers.Conv2D(8, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation=activation),
    ])
    return model


@pytest.mark.slow
def test_multi_label_heads_get_a_map_for_every_class_above_threshold(tracking_store, tmp_path):
    model = small_model("sigmoid")
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 0.01, np.array([5.5, 5.0, -5.0])])  # 2 labels on
    register(model, "multi-label")
    result = explain(dict(model_uri="models:/multi-label@champion",
                                     data="synthetic:15", batch_size=2))
    run = mlflow.get_run(result.run_id)
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path))
    names = set(zipfile.ZipFile(f"{local}/cams/cams.npz").namelist())
    with open(f"{local}/predictions.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    for row in rows:
        assert row["predicted_label"] == "COVID-19"  # the top class, explained first
        assert f"{row['image_id']}.npy" in names
        assert f"{row['image_id']}__NORMAL.npy" in names  # the other class above 0.5
        assert f"{row['image_id']}__OTHER_INFECTION.npy" not in names
    overlays = list((tmp_path / "overlays").rglob("*.png"))
    assert len(overlays) == 6
    assert run.data.params["target_layer"] == "features"


@pytest.mark.slow
@pytest.mark.parametrize("normalize", ["image", "global"])
def test_every_explained_image_gets_one_overlay(tracking_store, tmp_path, normalize):
    register(small_model("softmax"), "plain")
    result = explain(dict(model_uri="models:/plain@champion", data="synthetic:30",
                                     batch_size=4, normalize=normalize))
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path))
    assert result.explained == 6
    assert len(list((tmp_path / "overlays").rglob("*.png"))) == 6
    assert len(zipfile.ZipFile(f"{local}/cams/cams.npz").namelist()) == 6 + 2


def test_a_model_with_a_lambda_layer_is_refused_unless_trusted(tracking_store):
    from report.errors import UserError

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        layers.Lambda(lambda x: x * 2.0),  # serialized Python: could run anything
        layers.Conv2D(4, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax"),
    ])
    register(model, "with-lambda")
    settings = dict(model_uri="models:/with-lambda@champion", data="synthetic:15",
                               quality="off")
    with pytest.raises(UserError, match="--unsafe-deserialization"):
        explain(settings)
    trusted = explain({**settings, "unsafe_deserialization": True})
    assert trusted.explained == 3


@pytest.mark.slow
def test_a_failing_run_is_marked_failed_with_its_error_and_keeps_its_artifacts(
    tracking_store, monkeypatch
):
    from report import render

    register(small_model("softmax"), "doomed")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(render, "write_report", broken)
    with pytest.raises(RuntimeError, match="renderer exploded"):
        explain(dict(model_uri="models:/doomed@champion", data="synthetic:15",
                                quality="off"))
    run = mlflow.search_runs(experiment_names=["tests"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: renderer exploded"
    kept = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"predictions.csv", "overlays", "cams"} <= kept


@pytest.mark.slow
def test_a_public_layout_is_explained_with_every_file_accounted_for(tracking_store, tmp_path):
    from tests.data.builders import kermany_tree

    root = kermany_tree(tmp_path / "kaggle")
    broken = next((root / "chest_xray" / "test" / "NORMAL").iterdir())
    broken.write_bytes(b"")  # an empty file among the test images
    label_map = tmp_path / "labels.yaml"
    label_map.write_text("NORMAL: NORMAL\nPNEUMONIA: null\n")  # pneumonia left out on purpose
    register(small_model("softmax"), "public")
    result = explain(dict(model_uri="models:/public@champion", data=str(root),
                                     label_map=str(label_map), quality="off"))
    metrics = mlflow.get_run(result.run_id).data.metrics
    # test/: 2 NORMAL (one empty) and 2 PNEUMONIA (mapped to nothing)
    assert (metrics["data.found"], metrics["data.used"], metrics["data.skipped"]) == (4, 1, 3)
    assert result.skipped == 1 and result.explained == 1
    html = result.html.read_text()
    assert "<h2>Data</h2>" in html and "kermany" in html
