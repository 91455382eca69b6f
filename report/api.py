"""The Python API: `audit` (the whole report) and `explain` (the engine alone).

Keyword options, their defaults and their checks come from options.py; the signatures below
are built from it, so `help(report.audit)` and notebooks show every keyword with its default.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

from report import options
from report.errors import OptionError, UserError

IN_MEMORY = "in memory"


def audit(model, data, **keywords):
    """Audit a Keras chest X-ray classifier: predictions, CAM heatmaps for every image,
    trust checks, and what the HTML/PDF report shows. Returns a `report.Audit`.

    model: a `keras.Model` in memory, a model URI (`models:/NAME@ALIAS`,
        `models:/NAME/VERSION`, `runs:/RUN_ID/PATH`) or a local MLflow model folder.
    data: a data-source spec as the CLI takes it (`synthetic:120`, `kermany:/data/chest_xray`),
        a folder, or a tuple `(images, labels)` of in-memory arrays: raw 0-255 pixels
        (N, H, W[, C]) and class indices, class names or None. In-memory arrays are used whole
        (`split` applies to data on disk only).

    Nothing is logged: no MLflow run is created until `Audit.log_to_mlflow()` is called. The
    artifact files (predictions.csv, overlays/, cams/) are written to a new folder
    `output_dir/audit-<time>-<id>/` (`Audit.artifacts_dir`); with `output_dir=None`, to a
    temporary folder that lives as long as the Audit. Raises a ValueError subclass naming the
    keyword for a bad value.
    """
    values = options.resolve("explain", keywords, only=AUDIT_KEYWORDS)
    from report.cam.engine import share_cores_with_workers

    share_cores_with_workers()  # only takes effect before TensorFlow's runtime has started
    return audit_loaded(_loaded_model(model, values), data, values)


def audit_loaded(loaded, data, values: dict):
    """`audit` for callers that already hold a `model.LoadedModel` with its metadata (the
    MLflow evaluator); `values` are checked options (`options.resolve`)."""
    from report import core

    source, data_label = core.open_data(data, loaded.metadata.class_names, values)
    if values["output_dir"] is None:
        workspace = tempfile.TemporaryDirectory(prefix="cxr-audit-")
        artifacts_dir = Path(workspace.name)
    else:
        workspace, artifacts_dir = None, _new_folder(Path(values["output_dir"]))
    from report import i18n

    with i18n.use(values["language"]):  # the findings are worded while measured
        result = core.run_audit(loaded, source, values, artifacts_dir, data_label)
    result._workspace = workspace
    return result


def _new_folder(output_dir: Path) -> Path:
    from report.core import writable_folder

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return writable_folder(output_dir.resolve() / f"audit-{stamp}-{uuid.uuid4().hex[:6]}",
                           "output_dir")


def explain(model, images, classes=None, **keywords):
    """The engine alone: class probabilities and maps for one batch, in one compiled pass.

    images: raw 0-255 pixels (B, H, W[, C]) at the model's input size.
    classes: the class to explain per image (B,), or None for the predicted one.
    Returns a `report.Explanation`: `probabilities` (B, C), `class_index` (B,), `raw_maps`
    (B, h, w) at the target layer's resolution and `maps` (B, H, W) at the input's, both
    unnormalised (ReLU'd).
    """
    values = options.resolve("explain", keywords, only=_EXPLAIN_KEYWORDS)
    from report.cam.engine import make_engine
    from report.model import class_indices
    from report.streaming import preprocess

    loaded = _loaded_model(model, values)
    metadata = loaded.metadata
    pixels = _pixel_batch(images, metadata)
    engine = make_engine(values["method"], loaded.model, metadata.layer_for(values["layer"]),
                         values["score"], (*metadata.image_size, metadata.channels))
    classes = class_indices(classes, metadata.class_names, len(pixels))
    return engine.explain(preprocess(pixels, metadata), classes)


def compare(baseline, candidate, data, **keywords):
    """Champion against challenger: both models on the same images, their predictions and
    explanations compared. Returns a `report.Comparison`: `verdict` (better, worse or not
    significantly different), `accuracy` and `macro_f1` differences with paired-bootstrap
    95% intervals, `mcnemar`, `fixed` and `broken` images, per-image map agreement
    (`spearman`, `iou`), `newly_flagged` shortcut classes, `gate(fail_on)`, `metrics`, and
    `to_html(path)`, `to_pdf(path)`.

    baseline, candidate: keras.Model objects, model URIs or local MLflow model folders; they
    may differ in architecture, input size and target layer, not in their classes.
    Nothing is logged (`python -m report compare` logs a run and tags the candidate).
    """
    values = options.resolve("compare", {**keywords, "baseline": "in memory",
                                         "candidate": "in memory", "data": "in memory"},
                             only=("baseline", "candidate", "data", *COMPARE_KEYWORDS))
    from report import comparison as comparing

    loaded = [_loaded_model(model, values) for model in (baseline, candidate)]
    if values["output_dir"] is None:
        workspace = tempfile.TemporaryDirectory(prefix="cxr-compare-")
        folder = Path(workspace.name)
    else:
        workspace, folder = None, _new_folder(Path(values["output_dir"]))
    result = comparing.compare(*loaded, data, values, folder)
    result._workspace = workspace
    return result


def rank_methods(model, data, **keywords):
    """Which CAM method to believe for this model: every method and both baselines (RandomCAM,
    Sobel edges) explain the same `sample` images and are scored by deletion, ROAD,
    localisation (where the data have masks), the sanity check, robustness and cost. Returns
    a `report.MethodsRanking`: `recommended` (a method name, or None when none passes),
    `scores` (per method: `values`, `ranks`, `mean_rank`), `metrics()`.

    Nothing is logged (`python -m report methods` logs a run with the HTML/PDF report and tags
    the model version with `audit.recommended_method`).
    """
    values = options.resolve("methods", {**keywords, "model_uri": "in memory",
                                         "data": "in memory"},
                             only=("model_uri", "data", *METHODS_KEYWORDS))
    from report import core, methods

    loaded = _loaded_model(model, values)
    source, data_label = core.open_data(data, loaded.metadata.class_names, values)
    return methods.rank_methods(loaded, source, values, data_label)


# The model and the data are positional; `explain` takes only the engine's options.
AUDIT_KEYWORDS = tuple(o.name for o in options.EXPLAIN if o.name not in ("model_uri", "data"))
_EXPLAIN_KEYWORDS = ("method", "layer", "score", "class_names", "unsafe_deserialization")
COMPARE_KEYWORDS = tuple(o.name for o in options.COMPARE
                         if o.name not in ("baseline", "candidate", "data"))
# Nothing is written, so no output_dir.
METHODS_KEYWORDS = tuple(o.name for o in options.RANK_METHODS
                         if o.name not in ("model_uri", "data", "output_dir"))


def _loaded_model(model, values):
    import keras

    from report.model import LoadedModel, ModelMetadata

    if isinstance(model, keras.Model):
        metadata = ModelMetadata.from_mlflow(None, model, values["class_names"])
        return LoadedModel(model=model, metadata=metadata, name=model.name, version="",
                           source=IN_MEMORY)
    if not isinstance(model, str | os.PathLike):
        raise OptionError("model", f"got a {type(model).__name__}; pass a keras.Model, a "
                          "model URI or a local MLflow model folder")
    from report import tracking

    tracking.configure_store()  # a registry URI means the project's store in a checkout
    return tracking.load_model(str(model), values["unsafe_deserialization"],
                               values["class_names"])


def _pixel_batch(images, metadata) -> np.ndarray:
    """uint8-range RGB (B, H, W, 3) at the model's size, as the streaming pass makes them."""
    pixels = np.asarray(images)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise OptionError("images", f"shape {pixels.shape} is not (B, H, W) or (B, H, W, 1|3)")
    if tuple(pixels.shape[1:3]) != tuple(metadata.image_size):
        raise UserError(f"images: {pixels.shape[1]}x{pixels.shape[2]} pixels, but the model "
                        f"takes {metadata.image_size[0]}x{metadata.image_size[1]}; resize them "
                        "first (or use report.audit, which resizes)")
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels.astype(np.float32)


def _declared(names: tuple[str, ...], declared=options.EXPLAIN) -> list[options.Option]:
    return [option for option in declared if option.name in names]


def _signature(first: list[inspect.Parameter], names: tuple[str, ...],
               declared=options.EXPLAIN) -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(first + [
        inspect.Parameter(option.keyword, keyword, default=option.default)
        for option in _declared(names, declared)
    ])


def _positional(*names: str) -> list[inspect.Parameter]:
    return [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]


def _keyword_help(names: tuple[str, ...], declared=options.EXPLAIN) -> str:
    lines = ["", "Keyword options (the CLI's --kebab-case flags, MLproject's parameters):"]
    for option in _declared(names, declared):
        allowed = f" One of {', '.join(option.choices)}." if option.choices else ""
        lines.append(f"    {option.keyword}={option.default!r}: {option.help}.{allowed}")
    return "\n".join(lines)


audit.__signature__ = _signature(_positional("model", "data"), AUDIT_KEYWORDS)
audit.__doc__ += _keyword_help(AUDIT_KEYWORDS)
explain.__signature__ = _signature(_positional("model", "images") + [
    inspect.Parameter("classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)],
    _EXPLAIN_KEYWORDS)
explain.__doc__ += _keyword_help(_EXPLAIN_KEYWORDS)
compare.__signature__ = _signature(_positional("baseline", "candidate", "data"),
                                   COMPARE_KEYWORDS, options.COMPARE)
compare.__doc__ += _keyword_help(COMPARE_KEYWORDS, options.COMPARE)
rank_methods.__signature__ = _signature(_positional("model", "data"), METHODS_KEYWORDS,
                                        options.RANK_METHODS)
rank_methods.__doc__ += _keyword_help(METHODS_KEYWORDS, options.RANK_METHODS)
