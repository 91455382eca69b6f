"""One function per command (`train`, `explain`): the MLflow run around the work."""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from report import core, i18n, lifecycle, marker_audit, options, sinks, tracking
from report.cam.engine import share_cores_with_workers
from report.data import SYNTHETIC_NAMES, detect_layouts, open_source
from report.data.batches import iter_batches
from report.data.records import Skipped
from report.data.synthetic import CLASS_NAMES
from report.errors import OptionError, UserError
from report.model import (
    ModelMetadata,
    build_classifier,
    check_class_names,
    compile_classifier,
)
from report.streaming import preprocess

# --- the life of a run: signals, folders, the local copy --------------------------------------


def ends_on_signals(command):
    """SIGTERM and SIGINT end `command` as an exception (lifecycle.Terminated), so its run
    is marked FAILED with an `error` tag and its partial artifacts, and its temporary folders
    are removed, as after any error."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with lifecycle.signals_raise():
            return command(*args, **kwargs)

    return run


def publish(files: tuple[Path, ...], destination: Path) -> tuple[Path, ...]:
    """The rendered report, copied from the staging area to `destination` once the run has
    succeeded. A failed copy leaves nothing there: the files land in a hidden sibling folder
    first, which is renamed into place."""
    partial = destination.parent / f".{destination.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        for file in files:
            shutil.copyfile(file, partial / file.name)
        if destination.exists():  # this run's own earlier copy (`mlflow run` reuses a run)
            shutil.rmtree(destination)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return tuple(destination / file.name for file in files)


# --- train ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    alias: str
    test_accuracy: float


@ends_on_signals
def train(values: dict) -> TrainResult:
    """The `train` command: train a demo classifier, log it per the registry contract,
    register it and point the alias at the new version."""
    import keras  # deferred: TensorFlow takes seconds to import, `--help` should not wait

    settings = SimpleNamespace(**options.resolve("train", values))
    tracking.configure_store()
    metadata = ModelMetadata(
        class_names=_training_classes(settings.data),
        image_size=(settings.image_size, settings.image_size),
    )
    x_train, y_train = _load_split(settings.data, metadata, "train")
    x_test, y_test = _load_split(settings.data, metadata, "test")
    # Before any model exists: a data set whose markers tell the classes apart is said so.
    markers = marker_audit.audit_films(x_train, y_train, metadata.class_names)
    warning = marker_audit.warning(markers)
    if warning:
        print(warning, file=sys.stderr)
    keras.utils.set_random_seed(settings.seed)
    model = build_classifier(
        settings.backbone, len(metadata.class_names), metadata.image_size, weights=settings.weights
    )
    compile_classifier(model, settings.learning_rate)
    with tracking.start_run(run_name=f"train-{settings.backbone}") as run:
        try:
            tracking.require_writable_artifact_store()  # before the training, not after it
            tracking.log_new_params(_train_params(settings, metadata, len(y_train)))
            tracking.log_metrics(markers.metrics())  # markers.* of the training films
            model.fit(
                preprocess(x_train, metadata),
                y_train,
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                callbacks=[tracking.training_callback()],
                # A progress bar redrawn in a log file is noise: one line per epoch there.
                verbose="auto" if sys.stdout.isatty() else 2,
            )
            _, test_accuracy = model.evaluate(preprocess(x_test, metadata), y_test, verbose=0)
            tracking.log_metrics({"test_accuracy": test_accuracy, "test_images": len(y_test)})
            version = tracking.log_and_register(model, metadata, settings.model_name,
                                                settings.alias)
        except BaseException as error:  # a signal too: the run says why it failed
            with contextlib.suppress(Exception):
                tracking.record_failure(error)
            raise
    return TrainResult(
        run.info.run_id, settings.model_name, version, settings.alias, float(test_accuracy)
    )


def _training_classes(data: str) -> tuple[str, ...]:
    """The tutorial's three classes for the synthetic and public layouts (their default label
    maps target them); a plain folder's own class folders otherwise."""
    root = Path(data).expanduser()
    named_layout = ":" in data and not root.exists()
    if data.partition(":")[0] in SYNTHETIC_NAMES or named_layout or detect_layouts(root):
        return CLASS_NAMES
    base = root / "train" if (root / "train").is_dir() else root
    if not base.is_dir():
        raise UserError(f"data folder '{data}' does not exist; pass --data synthetic or a folder")
    names = tuple(sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "test"))
    if len(names) < 2:
        raise UserError(f"data folder '{base}' needs one subfolder per class (at least two)")
    return check_class_names(list(names), f"class folders in '{base}'", "rename the folder")


def _load_split(data: str, metadata: ModelMetadata, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Training reads its split into memory as uint8 (480 demo images are about 80 MB)."""
    source = open_source(data, metadata.class_names, split)
    skipped: list[Skipped] = []
    pixels, labels = [], []
    batches = iter_batches(source, source.records, metadata.image_size, 64, skipped)
    for batch in tqdm(batches, desc=f"Loading {split} images", unit="batch"):
        pixels.append(batch.pixels)
        labels.extend(record.label for record in batch.records)
    for item in skipped:
        print(f"skipped {item.source}: {item.reason}")
    if not labels:
        raise UserError(f"no readable {split} images in '{data}'")
    return np.concatenate(pixels), np.asarray(labels)


def _train_params(settings: SimpleNamespace, metadata: ModelMetadata, n_train: int) -> dict:
    params = {k: v for k, v in vars(settings).items() if k != "weights"}
    params["weights"] = settings.weights or "none"
    params["class_names"] = ",".join(metadata.class_names)
    params["train_images"] = n_train
    return params


# --- explain (the report, into an MLflow run) ----------------------------------------------


@dataclass(frozen=True)
class ReportRun:
    run_id: str
    model: str
    explained: int
    skipped: int
    accuracy: float
    html: Path
    pdf: Path


@ends_on_signals
def explain(values: dict) -> ReportRun:
    """The `explain` command: audit into an MLflow run (the one `mlflow run` created, or a new
    one), then put the local copy of the report under `output_dir/<run id>/`.

    The run exists before the work starts, so a failure (SIGTERM and Ctrl-C too) marks it
    FAILED with an `error` tag and keeps the artifacts made so far; the report is rendered
    in the staging area and copied to `output_dir` only when everything else succeeded."""
    values = options.resolve("explain", values)
    tracking.configure_store()  # an unreachable server fails here, before anything is written
    if values["output_dir"] is None:
        raise OptionError("--output-dir", "needs a folder for the report's local copy")
    # Before any work, not after it.
    reports = core.writable_folder(Path(values["output_dir"]), "--output-dir")
    share_cores_with_workers()  # before the model load starts TensorFlow's runtime
    loaded = tracking.load_model(values["model_uri"], values["unsafe_deserialization"],
                                 values["class_names"])
    source, _ = core.open_data(values["data"], loaded.metadata.class_names, values)
    run_name = f"report-{loaded.name}" + (f"-v{loaded.version}" if loaded.version else "")
    with (
        tracking.start_run(run_name=run_name) as run,
        tempfile.TemporaryDirectory(prefix="cxr-report-") as staging,
    ):
        artifacts = Path(staging) / "artifacts"
        artifacts.mkdir()
        try:
            run_id = run.info.run_id
            tracking.require_writable_artifact_store()
            with i18n.use(values["language"]):  # the findings are worded while measured
                audit = core.run_audit(loaded, source, values, artifacts,
                                       values["data"], run_id)
            files = sinks.write_report(audit, Path(staging) / "report", run_id)
            sinks.log_audit(audit, run_id, files)
            files = publish(files, reports / run_id)
        except BaseException as error:  # signals too: the run says why and keeps what exists
            # Best effort: a store that is itself the problem must not hide the first error.
            with contextlib.suppress(Exception):
                tracking.record_failure(error)
                tracking.log_artifacts(artifacts)
            raise
    context = audit.context
    return ReportRun(
        run_id=run_id,
        model=f"{loaded.name} v{loaded.version}" + (f" (@{loaded.alias})" if loaded.alias
                                                     else ""),
        explained=context.n_images,
        skipped=len(context.skipped),
        accuracy=context.accuracy,
        html=files[0].resolve(),
        pdf=files[1].resolve(),
    )


# --- compare (champion against challenger, into an MLflow run) ----------------------------


@dataclass(frozen=True)
class CompareRun:
    run_id: str
    verdict: str
    newly_flagged: list[str]
    gate_failures: list[str]  # why --fail-on fails; empty when the gate passes
    html: Path
    pdf: Path


@ends_on_signals
def compare(values: dict) -> CompareRun:
    """The `compare` command: both models on the same data, the comparison report into a
    run of its own, and the verdict as tags on the candidate's registered version."""
    from report import compare_report
    from report import comparison as comparing

    values = options.resolve("compare", values)
    tracking.configure_store()
    reports = core.writable_folder(Path(values["output_dir"] or "reports"), "--output-dir")
    share_cores_with_workers()
    baseline, candidate = (tracking.load_model(values[role], values["unsafe_deserialization"],
                                               values["class_names"])
                           for role in ("baseline", "candidate"))
    with (
        tracking.start_run(run_name=f"compare-{_version_name(candidate)}-vs-"
                                    f"{_version_name(baseline)}") as run,
        tempfile.TemporaryDirectory(prefix="cxr-compare-") as staging,
    ):
        try:
            run_id = run.info.run_id
            tracking.require_writable_artifact_store()
            comparison = comparing.compare(baseline, candidate, values["data"], values,
                                           Path(staging))
            files = compare_report.write(comparison, Path(staging) / "report", run_id,
                                         language=values["language"])
            tracking.log_new_params(_compare_params(values, baseline, candidate))
            tracking.log_metrics(comparison.metrics)
            for path in files:
                tracking.log_artifact(path, "report")
            pairs = Path(staging) / "pairs.csv"
            comparison.pairs.drop(columns=[c for c in comparison.pairs if c.startswith("prob_")]
                                  ).to_csv(pairs, index=False)
            tracking.log_artifact(pairs)
            tracking.set_note(compare_report.run_note(comparison, language=values["language"]))
            tracking.tag_model_version(candidate, {"audit.compare_run_id": run_id,
                                                   "audit.verdict": comparison.verdict})
            files = publish(files, reports / run_id)
        except BaseException as error:  # signals too: the run says why and keeps what exists
            with contextlib.suppress(Exception):
                tracking.record_failure(error)
                tracking.log_artifacts(Path(staging))  # both audits' files, as far as they got
            raise
    return CompareRun(run_id, comparison.verdict, comparison.newly_flagged,
                      comparison.gate(values["fail_on"]), files[0].resolve(),
                      files[1].resolve())


def _version_name(loaded) -> str:
    return f"{loaded.name}-v{loaded.version}" if loaded.version else loaded.name


def _compare_params(values: dict, baseline, candidate) -> dict:
    params = {name: value for name, value in values.items() if name not in ("output_dir",
                                                                           "workers")}
    for role, loaded in (("baseline", baseline), ("candidate", candidate)):
        params[f"{role}_name"] = loaded.name
        params[f"{role}_version"] = loaded.version or "none"
        params[f"{role}_source"] = loaded.source
    return {name: "none" if value is None else ",".join(value) if isinstance(value, list)
            else str(value) for name, value in params.items()}


# --- methods (which CAM method for this model, into an MLflow run) -------------------------


@dataclass(frozen=True)
class MethodsRun:
    run_id: str
    recommended: str | None
    html: Path
    pdf: Path


@ends_on_signals
def rank_methods(values: dict) -> MethodsRun:
    """The `methods` command: every method and baseline on one sample, ranked, into a run of
    its own; the recommendation also tags the model's registered version."""
    from report import methods, methods_report

    values = options.resolve("methods", values)
    tracking.configure_store()
    reports = core.writable_folder(Path(values["output_dir"] or "reports"), "--output-dir")
    loaded = tracking.load_model(values["model_uri"], values["unsafe_deserialization"],
                                 values["class_names"])
    source, data_label = core.open_data(values["data"], loaded.metadata.class_names, values)
    with (
        tracking.start_run(run_name=f"methods-{_version_name(loaded)}") as run,
        tempfile.TemporaryDirectory(prefix="cxr-methods-") as staging,
    ):
        try:
            run_id = run.info.run_id
            tracking.require_writable_artifact_store()
            ranking = methods.rank_methods(loaded, source, values, data_label)
            files = methods_report.write(ranking, Path(staging) / "report", run_id,
                                         language=values["language"])
            tracking.log_new_params(_methods_params(values, loaded, data_label))
            tracking.log_metrics(ranking.metrics())
            for path in files:
                tracking.log_artifact(path, "report")
            tracking.set_note(methods_report.run_note(ranking, language=values["language"]))
            tracking.tag_model_version(loaded, {"audit.methods_run_id": run_id,
                                                "audit.recommended_method":
                                                    ranking.recommended or "none"})
            files = publish(files, reports / run_id)
        except BaseException as error:
            with contextlib.suppress(Exception):
                tracking.record_failure(error)
            raise
    return MethodsRun(run_id, ranking.recommended, files[0].resolve(), files[1].resolve())


def _methods_params(values: dict, loaded, data_label: str) -> dict:
    params = {name: value for name, value in values.items() if name != "output_dir"}
    params.update(data=data_label, model_name=loaded.name,
                  model_version=loaded.version or "none", model_source=loaded.source)
    return {name: "none" if value is None else ",".join(value) if isinstance(value, list)
            else str(value) for name, value in params.items()}
