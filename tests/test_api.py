"""The Python API: `report.audit` returns a result and logs nothing until asked."""

from __future__ import annotations

import re

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pypdf import PdfReader

import report
from report import measures
from report.render import DISCLAIMER
from tests.conftest import PROJECT_ROOT, synthetic_films, tiny_classifier

CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]
SIZE = 48


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_classifier(SIZE, "api_cnn")


@pytest.fixture(scope="module")
def films():
    return synthetic_films(12, SIZE)


def test_readme_example_runs_as_written(tracking_store, tmp_path):
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md#python-api", "exec"), namespace)
    audit, run_id = namespace["audit"], namespace["run_id"]
    assert (tmp_path / "audit" / "report.html").stat().st_size > 0
    pages = PdfReader(tmp_path / "audit" / "report.pdf").pages
    assert all(DISCLAIMER in " ".join(page.extract_text().split()) for page in pages)
    run = MlflowClient().get_run(run_id)
    # nan_ok: a sanity stage whose maps are all flat logs NaN (the untrained model here
    # draws fresh weights on every run).
    assert run.data.metrics == pytest.approx(audit.metrics, nan_ok=True)
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "report")}
    assert logged == {"report/report.html", "report/report.pdf"}


def test_audit_creates_no_run_and_its_metrics_are_the_logged_names(tracking_store, model, films,
                                                                   tmp_path):
    audit = report.audit(model, films, class_names=CLASSES, quality="off")
    assert mlflow.search_runs(experiment_names=["tests"], output_format="list") == []
    assert mlflow.active_run() is None
    # The files went to the default output_dir, ./reports, under a folder of their own.
    assert audit.artifacts_dir.parent == tmp_path / "reports"
    assert (audit.artifacts_dir / "predictions.csv").is_file()
    assert not (tmp_path / "mlruns").exists()

    run_id = audit.log_to_mlflow()
    logged = MlflowClient().get_run(run_id).data
    assert set(logged.metrics) == set(audit.metrics)
    assert logged.params["model_uri"] == "in memory (api_cnn)"
    assert logged.params["data"] == "in-memory arrays (12 images)"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"report", "overlays", "cams", "predictions.csv", "figures"} <= artifacts


def test_predictions_frame_has_the_csv_columns_and_maps_every_image(model, films, tmp_path):
    audit = report.audit(model, films, class_names=CLASSES, quality="off",
                         output_dir=tmp_path / "out")
    header = (audit.artifacts_dir / "predictions.csv").read_text().splitlines()[0]
    assert list(audit.predictions.columns) == header.split(",")
    assert len(audit.predictions) == 12
    assert audit.artifacts_dir.parent == tmp_path / "out"
    assert set(audit.maps) == set(audit.predictions["image_id"])
    first = audit.maps[audit.predictions["image_id"][0]]
    assert first.dtype == np.float32 and first.shape == (SIZE - 2, SIZE - 2)
    assert audit.maps.layer == "features"
    probabilities = audit.predictions[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_roc_and_calibration_are_computed_once_per_audit(model, films, monkeypatch):
    calls = {"roc": 0, "calibration": 0}
    roc, calibration = measures.roc_curves, measures.calibration

    def counted_roc(*args, **kwargs):
        calls["roc"] += 1
        return roc(*args, **kwargs)

    def counted_calibration(*args, **kwargs):
        calls["calibration"] += 1
        return calibration(*args, **kwargs)

    monkeypatch.setattr(measures, "roc_curves", counted_roc)
    monkeypatch.setattr(measures, "calibration", counted_calibration)
    audit = report.audit(model, films, class_names=CLASSES, quality="fast", output_dir=None)
    assert calls == {"roc": 1, "calibration": 1}
    assert "ece" in audit.metrics and any(f.title.startswith("ROC") for f in audit.figures)


def test_a_local_mlflow_model_folder_and_a_runs_uri_are_models_too(tracking_store, model,
                                                                    films, tmp_path):
    metadata = {"class_names": CLASSES,
                "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb",
                                  "scale": 1 / 255}}
    folder = tmp_path / "saved-model"
    mlflow.keras.save_model(model, str(folder), save_exported_model=False, metadata=metadata)
    from_folder = report.audit(folder, films, quality="off", output_dir=None)
    assert from_folder.params["model_source"] == str(folder)
    with mlflow.start_run() as run:
        mlflow.keras.log_model(model, name="model", save_exported_model=False,
                               metadata=metadata)
    from_run = report.audit(f"runs:/{run.info.run_id}/model", films, quality="off",
                            output_dir=None)
    assert from_run.metrics["accuracy"] == from_folder.metrics["accuracy"]
    assert list(from_run.predictions["predicted_label"]) == list(
        from_folder.predictions["predicted_label"])


def test_explain_is_the_engine_alone(model, films):
    images = films[0][:4]
    explanation = report.explain(model, images, classes=[1, 1, 2, 2], class_names=CLASSES)
    assert explanation.class_index.tolist() == [1, 1, 2, 2]
    assert explanation.maps.shape == (4, SIZE, SIZE)
    assert explanation.raw_maps.shape == (4, SIZE - 2, SIZE - 2)
    expected = model.predict(images.astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(explanation.probabilities, expected, atol=1e-5)


def test_bad_model_and_data_arguments_name_themselves(model):
    with pytest.raises(ValueError, match="^model: got a int; pass a keras.Model"):
        report.audit(3, "synthetic")
    with pytest.raises(ValueError, match="^data: got a list; pass"):
        report.audit(model, [1, 2], class_names=CLASSES)
    with pytest.raises(ValueError, match="^model 'no-such-folder' is neither"):
        report.audit("no-such-folder", "synthetic")
    with pytest.raises(ValueError, match="^images: 20x20 pixels"):
        report.explain(model, np.zeros((1, 20, 20), np.uint8), class_names=CLASSES)


def test_logging_into_another_run_while_one_is_active_is_a_user_error(tracking_store, model,
                                                                      films):
    audit = report.audit(model, films, class_names=CLASSES, quality="off", output_dir=None)
    other = mlflow.MlflowClient().create_run(
        mlflow.get_experiment_by_name("tests").experiment_id).info.run_id
    with mlflow.start_run() as active, pytest.raises(report.UserError, match="^run_id: run"):
        audit.log_to_mlflow(other)
    assert audit.log_to_mlflow(other) == other  # once nothing else is active
    assert MlflowClient().get_run(other).data.metrics["images_explained"] == 12
    assert active.info.run_id != other


def test_global_normalisation_with_every_image_unreadable_still_reports(model, tmp_path):
    for name in ("NORMAL", "COVID-19"):
        (tmp_path / "films" / name).mkdir(parents=True)
        (tmp_path / "films" / name / "broken.png").write_bytes(b"not a png")
    audit = report.audit(model, tmp_path / "films", class_names=CLASSES, split="all",
                         normalize="global", quality="off", output_dir=None)
    assert audit.metrics["images_explained"] == 0
    assert audit.metrics["images_skipped"] == 2
    assert list(audit.predictions["flags"]) == ["unreadable: not a decodable PNG/JPEG image"] * 2
