"""The audit as an MLflow evaluator: `mlflow.models.evaluate(..., evaluators=["cxr-gradcam"])`.

MLflow finds it through the `mlflow.model_evaluator` entry-point group (pyproject.toml), so it
works once the package is installed. It only adapts: MLflow's dataset becomes (images, labels),
MLflow's loaded model tells where the model lives, and `report.audit` does the work.

MLflow imports every registered evaluator when its evaluator registry is first used (any
`mlflow.models.evaluate` call), so TensorFlow (through report.model and report.api) is
imported only once this evaluator runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.models import Model
from mlflow.models.evaluation import EvaluationArtifact, EvaluationResult, ModelEvaluator
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact
from mlflow.tracking.artifact_utils import get_artifact_uri

from report import api
from report.data.images import decode_image, read_bytes
from report.data.records import UnreadableImage
from report.errors import OptionError


class CxrGradcamEvaluator(ModelEvaluator):
    """Runs `report.audit` on the evaluation data and logs its report into the evaluation run.

    Use with `model_type="classifier"` and a Keras model logged with `mlflow.keras`::

        mlflow.models.evaluate(model_uri, data, targets="label", model_type="classifier",
                               evaluators=["cxr-gradcam"],
                               evaluator_config={"cxr-gradcam": {"method": "gradcam++"}})

    `data` is one of:

    - a pandas DataFrame with the targets column and one image column (pick it with
      `feature_names=[...]` if there are more); each cell is an image file path (PNG, JPEG,
      DICOM) or an (H, W), (H, W, 1) or (H, W, 3) array of 0-255 pixels, of any size;
    - a 2-D numpy array, one flattened image of 0-255 pixels per row, H*W*3 (RGB) or H*W
      (grayscale) long, at the model's input size (its metadata's preprocessing.image_size,
      else its declared input shape).

    MLflow refuses numpy arrays of other than two dimensions, so (N, H, W, C) must be flattened.
    Targets are class indices or class names. With a list of evaluators, `evaluator_config`
    must be nested under the evaluator's name, as above; with `evaluators="cxr-gradcam"` it is
    the flat dict. Its keys are `report.audit`'s keyword options (method, layer, score,
    normalize, batch_size, alpha, colormap, limit, quality, label_map, class_names, ...);
    any other key raises ValueError.

    The result's metrics are the audit's; its artifacts are the report (HTML and PDF) and
    the predictions table, all logged into the evaluation run.
    """

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type == "classifier"

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        from report import options

        config = dict(evaluator_config or {})
        if "split" in config:  # MLflow's data are audited whole
            raise OptionError("split", "mlflow.models.evaluate's data are audited whole; "
                              "pass only the rows to audit")
        # The evaluation run holds the artifacts; a local copy would only pile up. Unknown
        # keys are refused by name, as report.audit refuses unknown keywords.
        values = options.resolve("explain", {"output_dir": None, **config},
                                 only=api.AUDIT_KEYWORDS)
        loaded = loaded_model(model, values["class_names"])
        images = images_from_features(dataset.features_data, loaded.metadata.image_size)
        audit = api.audit_loaded(loaded, (images, dataset.labels_data), values)
        audit.log_to_mlflow(run_id)
        return EvaluationResult(metrics=dict(audit.metrics),
                                artifacts=report_artifacts(run_id, audit), run_id=run_id)


def keras_model_of(model):
    import keras

    try:
        raw = model.get_raw_model()
    except (AttributeError, NotImplementedError):  # no model, a function, another flavour
        raw = None
    if not isinstance(raw, keras.Model):
        raise ValueError("cxr-gradcam audits a Keras model: pass one logged with "
                         "mlflow.keras.log_model(..., save_exported_model=False)")
    return raw


def loaded_model(model, class_names: list[str] | None):
    """The Keras model MLflow already loaded, with the whole report metadata of its MLmodel
    (class names, preprocessing, target layer), so nothing is loaded twice."""
    from report.model import LoadedModel, ModelMetadata

    keras_model, info = keras_model_of(model), model.metadata
    return LoadedModel(
        model=keras_model,
        metadata=ModelMetadata.from_mlflow(info.metadata, keras_model, class_names),
        name=keras_model.name,
        version="",
        source=logged_location(info),
        uri=logged_location(info),
    )


def logged_location(info: Model) -> str:
    """The model as MLflow names it: its logged-model URI where it has one."""
    if info.model_id:  # an MLflow 3 logged model, registered or not
        return f"models:/{info.model_id}"
    return info.artifact_path or "the model given to mlflow.models.evaluate"


def images_from_features(features, image_size: tuple[int, int]):
    """MLflow's features -> images as `report.audit` takes them: a list of arrays of any
    size (DataFrame cells) or one (N, H, W[, 3]) array (flattened rows)."""
    if isinstance(features, pd.DataFrame):
        return [_image(cell) for cell in _image_column(features)]
    return _unflattened(np.asarray(features), image_size)


def _image_column(features: pd.DataFrame) -> pd.Series:
    if features.shape[1] != 1:
        raise ValueError(
            f"cxr-gradcam needs one image column besides the targets, got {list(features)}; "
            "pick it with mlflow.models.evaluate(..., feature_names=['<column>'])"
        )
    return features.iloc[:, 0]


def _image(cell) -> np.ndarray:
    """A path is decoded as the report's own image files are (RGB); an array is left to the
    audit, which checks, converts and resizes in-memory images."""
    if not isinstance(cell, str | os.PathLike):
        return np.asarray(cell)
    path = Path(cell)
    try:
        return decode_image(read_bytes(path), path.suffix)
    except UnreadableImage as error:
        raise ValueError(f"image '{path}': {error}") from error


def _unflattened(rows: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    height, width = image_size
    shapes = {height * width * 3: (height, width, 3), height * width: (height, width)}
    if rows.shape[1] not in shapes:
        raise ValueError(
            f"each row must be one flattened {height}x{width} image ({height * width * 3} "
            f"values for RGB, {height * width} for grayscale); rows have {rows.shape[1]}"
        )
    return rows.reshape(len(rows), *shapes[rows.shape[1]])


class FileEvaluationArtifact(EvaluationArtifact):
    """A logged file as bytes (the PDF, the HTML), downloaded when first read."""

    def _load_content_from_file(self, local_artifact_path):
        self._content = Path(local_artifact_path).read_bytes()
        return self._content

    def _save(self, output_artifact_path):
        Path(output_artifact_path).write_bytes(self.content)


def report_artifacts(run_id: str, audit) -> dict[str, EvaluationArtifact]:
    def uri(path: str) -> str:
        return get_artifact_uri(run_id, path)

    return {
        "report_html": FileEvaluationArtifact(uri("report/report.html")),
        "report_pdf": FileEvaluationArtifact(uri("report/report.pdf")),
        "predictions": CsvEvaluationArtifact(uri("predictions.csv"), audit.predictions),
    }
