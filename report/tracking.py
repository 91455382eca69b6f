"""Every MLflow call the project makes: the store, runs, params, the registry and artifacts."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from report.artifacts import artifact_names, metric_keys
from report.errors import UserError
from report.model import LoadedModel, ModelMetadata
from report.paths import DEFAULT_ARTIFACT_ROOT, DEFAULT_TRACKING_URI

EXPERIMENT_NAME = "cxr-gradcam-report"
NOTE_TAG = "mlflow.note.content"
NOTE_CUT = "\n\n… (cut here: the whole description is in the report)"
# The packages a loaded model needs, pinned to what logged it.
MODEL_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "numpy")


def configure_store() -> str:
    """MLFLOW_TRACKING_URI (or a URI the caller set in Python) wins; otherwise, run from a
    checkout, the project's own absolute sqlite store (paths.py). A remote server is probed
    first, so an unreachable one fails in seconds, before any work."""
    if DEFAULT_TRACKING_URI and not mlflow.is_tracking_uri_set():
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    return uri


def _probe_server(uri: str, timeout: float = 10.0) -> None:
    import requests

    # The same TLS settings MLflow's own client honours, so a server it accepts passes here.
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout, verify=verify)
    except requests.RequestException as error:
        raise UserError(
            f"tracking server {uri} is not reachable ({type(error).__name__}); start it or fix "
            "MLFLOW_TRACKING_URI"
        ) from error


def log_overlay_charts(overlays: dict[str, list], per_class: int) -> None:
    """A few overlays per class as MLflow image charts (key `overlay_<artifact name>`, the
    class's overlays/ folder name, one step per image): MLflow takes only ASCII letters,
    digits and _-. there, and a '/' would make them unreadable in the UI."""
    names = artifact_names(overlays)
    for class_name, images in overlays.items():
        key = f"overlay_{names[class_name]}"
        for step, image in enumerate(images[:per_class]):
            mlflow.log_image(image, key=key, step=step)


def record_failure(error: BaseException) -> None:
    """Say on the run why it failed; MLflow itself marks it FAILED when the block exits."""
    mlflow.set_tag("error", f"{type(error).__name__}: {_first_line(error)}"[:5000])


def require_writable_artifact_store() -> None:
    """The active run's artifact folder, checked writable before the long work, when it is
    local (`file:` or a plain path: the project's own store). A remote store is not probed:
    its refusals are MlflowExceptions, which the CLI words in one line."""
    uri = mlflow.active_run().info.artifact_uri
    repository = get_artifact_repository(uri)
    if not isinstance(repository, LocalArtifactRepository):
        return
    folder = Path(repository.artifact_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"the MLflow artifact store cannot be written: {uri} "
                        f"({error.strerror}); fix the experiment's artifact location or "
                        "choose another experiment (MLFLOW_EXPERIMENT_NAME)") from error


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def inside_mlflow_run() -> bool:
    return bool(os.environ.get("MLFLOW_RUN_ID"))


@contextlib.contextmanager
def start_run(run_name: str):
    """Resume the run `mlflow run` created, or start one in the project's experiment.

    Inside `mlflow run` the tracking URI and experiment are the parent's and are left alone.
    """
    if inside_mlflow_run():
        with mlflow.start_run() as run:
            yield run
        return
    experiment_id = _experiment_id()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run


@contextlib.contextmanager
def run_for(run_id: str | None, run_name: str):
    """The run to log into: `run_id` (resumed unless it is the active one), else the active
    run (left open for its owner), else a new run in the project's experiment."""
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active
        return
    if active is not None:
        raise UserError(f"run_id: run {active.info.run_id} is active in this process; log "
                        f"into it (run_id=None) or end it before logging into {run_id}")
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    with start_run(run_name) as run:
        yield run


def _experiment_id() -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Pin artifacts under the project root, whatever folder the command runs from.
    location = None
    if DEFAULT_TRACKING_URI and mlflow.get_tracking_uri() == DEFAULT_TRACKING_URI:
        location = (DEFAULT_ARTIFACT_ROOT).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def log_new_params(params: dict) -> None:
    """Log params the run does not have yet: `mlflow run` already logged its own, and MLflow
    refuses to change a param's value (e.g. `.5` logged by the CLI versus our `0.5`)."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    if new:
        mlflow.log_params(new)


def log_metrics(metrics: dict[str, float]) -> None:
    """`metrics` under valid, unique MLflow keys (`artifacts.metric_keys`): a class name in a
    key (`roc_auc.<class>`) may hold characters or a length MLflow refuses."""
    keys = metric_keys(metrics)
    mlflow.log_metrics({keys[name]: float(value) for name, value in metrics.items()})


def training_callback():
    """Keras callback that logs loss and accuracy per epoch to the active run."""
    return mlflow.keras.MlflowCallback(log_every_epoch=True)


UPLOAD_THREADS = 8


def log_artifacts(folder: Path, artifact_path: str | None = None) -> None:
    """A folder into the active run. MLflow uploads a folder to a remote store (a proxied
    `mlflow server --serve-artifacts`, S3, ...) one file after another, one request each, and
    a report has one overlay per image: those uploads go out UPLOAD_THREADS at a time."""
    run = mlflow.active_run()
    repository = get_artifact_repository(run.info.artifact_uri)
    if isinstance(repository, LocalArtifactRepository):
        mlflow.log_artifacts(str(folder), artifact_path)  # a local copy: nothing to overlap
        return
    uploads = [(path, _artifact_dir(path.parent.relative_to(folder), artifact_path))
               for path in sorted(Path(folder).rglob("*")) if path.is_file()]
    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="cxr-upload") as pool:
        for done in [pool.submit(repository.log_artifact, str(path), where)
                     for path, where in uploads]:
            done.result()  # the first failure is raised, as the serial upload would


def _artifact_dir(relative: Path, artifact_path: str | None) -> str | None:
    parts = [part for part in (artifact_path, relative.as_posix()) if part and part != "."]
    return "/".join(parts) or None


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def set_note(markdown: str) -> None:
    """The run description; MLflow keeps at most MAX_TAG_VAL_LENGTH characters of a tag (a
    table of many classes is longer), so a longer one is cut where it says so, not by MLflow
    or a server that refuses it."""
    if len(markdown) > MAX_TAG_VAL_LENGTH:
        markdown = markdown[:MAX_TAG_VAL_LENGTH - len(NOTE_CUT)] + NOTE_CUT
    mlflow.set_tag(NOTE_TAG, markdown)


# --- the registry ---------------------------------------------------------------------------


def tag_model_version(loaded, tags: dict[str, str]) -> None:
    """Tags on a registered model version (nothing for a model outside the registry)."""
    if not loaded.version or loaded.uri is None or not loaded.uri.startswith("models:/"):
        return
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(loaded.name, loaded.version, key, value)


def log_and_register(
    model: keras.Model, metadata: ModelMetadata, model_name: str, alias: str
) -> str:
    """Log per the registry contract (docs/ARCHITECTURE.md, "Contracts"), register, and
    point `alias` at it."""
    info = mlflow.keras.log_model(
        model,
        name="model",
        save_exported_model=False,
        signature=_signature(model),
        pip_requirements=[f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS],
        metadata=metadata.to_mlflow(),
        registered_model_name=model_name,
    )
    model_version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(model_name, alias, model_version)
    return model_version


def _signature(model: keras.Model) -> ModelSignature:
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    n_outputs = int(model.outputs[0].shape[-1])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, height, width, channels))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_outputs))]),
    )


def load_model(model_uri: str, unsafe_deserialization: bool = False,
               class_names: list[str] | None = None) -> LoadedModel:
    """A Keras model and its report metadata from a registry URI (`models:/NAME@ALIAS`,
    `models:/NAME/VERSION`), any other MLflow artifact URI (`runs:/RUN/PATH`, `s3://...`) or
    a local MLflow model folder. Only the registry is read: no run is created."""
    logged_id = _logged_model_id(model_uri)
    if logged_id:
        identity = _logged_model_identity(logged_id, model_uri)
        local = _download(model_uri)
    elif model_uri.startswith("models:/"):
        name, reference, alias = _resolve_version(model_uri)
        identity = {"name": name, "version": reference.version, "alias": alias,
                    "source": reference.source}
        local = _download(model_uri)
    else:
        local = _local_model_folder(model_uri)
        identity = {"name": Path(local).name, "version": "", "alias": None,
                    "source": model_uri}
    info, model = _load_keras(local, model_uri, unsafe_deserialization)
    return LoadedModel(model=model,
                       metadata=ModelMetadata.from_mlflow(info.metadata, model, class_names),
                       uri=model_uri, **identity)


def _logged_model_id(model_uri: str) -> str | None:
    """`models:/m-<id>`, MLflow 3's URI of a logged model outside the registry, or None."""
    path = model_uri.removeprefix("models:/").strip("/")
    if model_uri.startswith("models:/") and re.fullmatch(r"m-[0-9a-f]+", path):
        return path
    return None


def _logged_model_identity(model_id: str, model_uri: str) -> dict:
    try:
        logged = mlflow.get_logged_model(model_id)
    except MlflowException as error:
        if access_problem(error):
            raise
        raise UserError(f"no logged model '{model_id}' in {mlflow.get_tracking_uri()} "
                        f"({model_uri}); check the id or the tracking URI") from error
    return {"name": logged.name, "version": "", "alias": None,
            "source": logged.artifact_location}


def _local_model_folder(model_uri: str) -> str:
    path = Path(model_uri).expanduser()
    has_scheme = re.match(r"^[A-Za-z][\w+.-]+:/", model_uri) is not None  # runs:/, s3://
    if not has_scheme and not path.exists():
        raise UserError(
            f"model '{model_uri}' is neither a registry URI (models:/NAME@ALIAS, "
            "models:/NAME/VERSION), an MLflow URI (runs:/RUN_ID/PATH) nor an existing folder"
        )
    local = _download(model_uri) if has_scheme else str(path)
    if not (Path(local) / "MLmodel").is_file():
        raise UserError(
            f"model '{model_uri}' is not an MLflow model (no MLmodel file in it); save it with "
            "mlflow.keras.save_model or log it with mlflow.keras.log_model"
        )
    return local


def _download(model_uri: str) -> str:
    try:
        return mlflow.artifacts.download_artifacts(model_uri)
    except MlflowException as error:
        if access_problem(error):
            raise
        raise UserError(f"could not load model '{model_uri}': {_first_line(error)}") from error


def _load_keras(local: str, model_uri: str, unsafe_deserialization: bool):
    """The MLmodel description and the Keras model, both from the one downloaded copy."""
    try:
        info = _model_description(local, model_uri)
        # Keras' safe mode refuses serialized Python code (Lambda layers): loading a model
        # from a shared registry must not run whatever its author pickled into it.
        model = mlflow.keras.load_model(
            local, load_model_kwargs={"safe_mode": not unsafe_deserialization}
        )
    except MlflowException as error:
        raise UserError(f"could not load model '{model_uri}': {_first_line(error)}") from error
    except UserError:
        raise
    except ValueError as error:
        if "safe_mode" not in str(error) and "arbitrary code" not in str(error):
            raise _unreadable_keras(model_uri, error) from error
        raise UserError(
            f"model '{model_uri}' contains serialized Python code (a Lambda layer), which could "
            "run anything on this machine; refused. If you trust its author, pass "
            "--unsafe-deserialization (unsafe_deserialization=True in Python)"
        ) from error
    except (OSError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as error:
        # A damaged or hand-edited model file: Keras raises whatever its parser met first.
        raise _unreadable_keras(model_uri, error) from error
    if not isinstance(model, keras.Model):
        raise UserError(f"'{model_uri}' is not a Keras model; log it with mlflow.keras")
    return info, model


def _model_description(local: str, model_uri: str) -> Model:
    """The MLmodel file, checked far enough that loading the Keras flavour cannot stumble on
    its shape, nor read a model file outside the model's folder."""
    try:
        info = Model.load(local)
    except MlflowException:
        raise
    except (yaml.YAMLError, TypeError, AttributeError, KeyError, ValueError) as error:
        raise _bad_description(model_uri, f"{type(error).__name__}: {_first_line(error)}") \
            from error
    if not isinstance(info.flavors, dict):
        raise _bad_description(model_uri, "its `flavors` is not a mapping")
    if "keras" not in info.flavors:
        raise UserError(
            f"model '{model_uri}' has no Keras flavour ({', '.join(map(str, info.flavors))}); "
            "log it with mlflow.keras.log_model(..., save_exported_model=False)"
        )
    keras_flavour = info.flavors["keras"]
    if not isinstance(keras_flavour, dict):
        raise UserError(f"model '{model_uri}': its Keras flavour in the MLmodel file is "
                        f"{type(keras_flavour).__name__}, not a mapping; save the model again "
                        "with mlflow.keras.save_model")
    data = keras_flavour.get("data", "data")
    root = Path(local).resolve()
    if not isinstance(data, str) or not (root / data).resolve().is_relative_to(root):
        raise UserError(f"model '{model_uri}': its Keras flavour points the model file outside "
                        f"the model folder (data: {data!r:.60}); refused. Save the model again "
                        "with mlflow.keras.save_model")
    return info


def _bad_description(model_uri: str, why: str) -> UserError:
    return UserError(f"model '{model_uri}': its MLmodel file is not a valid MLflow model "
                     f"description ({why}); save the model again with mlflow.keras.save_model")


def _unreadable_keras(model_uri: str, error: BaseException) -> UserError:
    return UserError(f"could not read the Keras model file of '{model_uri}' "
                     f"({type(error).__name__}: {_first_line(error)[:200]}); save the model "
                     "again with mlflow.keras.save_model")


def _resolve_version(model_uri: str):
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, ModelVersion, alias)."""
    if not model_uri.startswith("models:/"):
        raise UserError(
            f"model URI '{model_uri}' is not a registry URI; use models:/NAME@ALIAS or "
            "models:/NAME/VERSION"
        )
    path = model_uri.removeprefix("models:/").strip("/")
    client = MlflowClient()
    name, alias, number = _split_model_path(path, model_uri)
    _require_registered(client, name)
    try:
        if alias:
            return name, client.get_model_version_by_alias(name, alias), alias
        return name, client.get_model_version(name, number), None
    except MlflowException as error:
        if access_problem(error):
            raise
        known = _aliases(client, name)
        what = f"alias '{alias}'" if alias else f"version {number}"
        raise UserError(
            f"registered model '{name}' has no {what} (aliases: {known or 'none'}); pick an "
            f"existing one or set it with `mlflow` / the MLflow UI"
        ) from error


def _split_model_path(path: str, model_uri: str) -> tuple[str, str | None, str | None]:
    if "@" in path:
        name, alias = path.split("@", 1)
        return name, alias, None
    name, _, number = path.rpartition("/")
    if not name or not number.isdigit():
        raise UserError(
            f"model URI '{model_uri}' names no version or alias; use models:/NAME@ALIAS or "
            "models:/NAME/VERSION"
        )
    return name, None, number


def _require_registered(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if access_problem(error):
            raise  # a 401/403 is not a missing model: cli.main says what it is
        raise UserError(
            f"no registered model '{name}' in {mlflow.get_tracking_uri()}; train and register "
            "one with `make demo` or `python -m report train`, or set MLFLOW_TRACKING_URI to the "
            "store that has it"
        ) from error


def _aliases(client: MlflowClient, name: str) -> str:
    return ", ".join(sorted(client.get_registered_model(name).aliases))


def access_problem(error: MlflowException) -> str | None:
    """'unauthenticated' or 'permission denied' when a tracking server refused the request."""
    code = str(getattr(error, "error_code", ""))
    # The REST client reports a refused request as "... failed with error code 403 != 200".
    status = re.search(r"error code (\d{3})", str(error))
    if code == "UNAUTHENTICATED" or (status and status.group(1) == "401"):
        return "unauthenticated"
    if code == "PERMISSION_DENIED" or (status and status.group(1) == "403"):
        return "permission denied"
    return None


def explain_mlflow_error(error: MlflowException) -> str:
    """One line for an MLflow error that reached the command line."""
    problem = access_problem(error)
    uri = mlflow.get_tracking_uri()
    if problem == "unauthenticated":
        return (f"tracking server {uri} asks for credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in the environment")
    if problem == "permission denied":
        return (f"tracking server {uri} denied permission to this user "
                f"({os.environ.get('MLFLOW_TRACKING_USERNAME', 'anonymous')}): ask the "
                "experiment's owner for EDIT permission, or use another experiment")
    return f"MLflow ({uri}): {_first_line(error)}"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
