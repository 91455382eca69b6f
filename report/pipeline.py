"""One function per entry point: wires the stages together and streams the batches."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from report import findings, render, tracking
from report.artifacts import ArtifactWriter
from report.cam.engine import METHODS, SCORES, make_engine
from report.cam.normalise import NORMALISATIONS
from report.cam.overlay import COLORMAPS
from report.checks import LEVELS
from report.data import (
    SYNTHETIC_NAMES,
    detect_layouts,
    load_label_map,
    open_source,
    take_inventory,
)
from report.data.batches import iter_batches
from report.data.folder import safe_id
from report.data.records import Skipped
from report.data.synthetic import CLASS_NAMES, IMAGE_SIZE
from report.errors import UserError
from report.measures import classification_quality
from report.model import ModelMetadata, build_classifier, compile_classifier
from report.paths import REPORTS_DIR
from report.streaming import Explainer, preprocess

CHARTED_OVERLAYS = 4  # per class, as MLflow image charts


# --- train ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    data: str = "synthetic"
    backbone: str = "small-cnn"
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    image_size: int = IMAGE_SIZE
    model_name: str = "cxr-classifier"
    alias: str = "champion"
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    alias: str
    test_accuracy: float


def train(settings: TrainSettings) -> TrainResult:
    import keras  # deferred: TensorFlow takes seconds to import, `--help` should not wait

    from report.model import BACKBONES

    if settings.backbone not in BACKBONES:
        raise UserError(
            f"unknown backbone '{settings.backbone}'; choose one of {', '.join(BACKBONES)}"
        )
    tracking.configure_store()
    metadata = ModelMetadata(
        class_names=_training_classes(settings.data),
        image_size=(settings.image_size, settings.image_size),
    )
    x_train, y_train = _load_split(settings.data, metadata, "train")
    x_test, y_test = _load_split(settings.data, metadata, "test")
    keras.utils.set_random_seed(settings.seed)
    model = build_classifier(
        settings.backbone, len(metadata.class_names), metadata.image_size, weights=settings.weights
    )
    compile_classifier(model, settings.learning_rate)
    with tracking.start_run(run_name=f"train-{settings.backbone}") as run:
        tracking.log_new_params(_train_params(settings, metadata, len(y_train)))
        model.fit(
            preprocess(x_train, metadata),
            y_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            callbacks=[tracking.training_callback()],
            verbose="auto",
        )
        _, test_accuracy = model.evaluate(preprocess(x_test, metadata), y_test, verbose=0)
        tracking.log_metrics({"test_accuracy": test_accuracy, "test_images": len(y_test)})
        version = tracking.log_and_register(model, metadata, settings.model_name, settings.alias)
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
    return names


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


def _train_params(settings: TrainSettings, metadata: ModelMetadata, n_train: int) -> dict:
    params = {k: v for k, v in vars(settings).items() if k != "weights"}
    params["weights"] = settings.weights or "none"
    params["class_names"] = ",".join(metadata.class_names)
    params["train_images"] = n_train
    return params


# --- explain (the report) -------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainSettings:
    model_uri: str = "models:/cxr-classifier@champion"
    data: str = "synthetic"
    split: str = "test"
    method: str = "gradcam"
    layer: str = "auto"
    score: str = "logit"
    normalize: str = "image"
    batch_size: int = 32
    alpha: float = 0.5
    colormap: str = "viridis"
    limit: int = 0
    quality: str = "fast"
    unsafe_deserialization: bool = False
    label_map: str = "none"  # a YAML file: source label -> model class (or null)


@dataclass(frozen=True)
class ExplainResult:
    run_id: str
    model: str
    explained: int
    skipped: int
    accuracy: float
    html: Path
    pdf: Path


def explain(settings: ExplainSettings) -> ExplainResult:
    _check_explain_settings(settings)
    tracking.configure_store()
    registered = tracking.load_registered_model(settings.model_uri,
                                                settings.unsafe_deserialization)
    metadata = registered.metadata
    label_map = None if settings.label_map in ("", "none") else load_label_map(settings.label_map)
    source = open_source(settings.data, metadata.class_names, settings.split, label_map)
    records = source.records[: settings.limit] if settings.limit else source.records
    if not records:
        raise UserError(f"no images to explain in '{settings.data}' ({settings.split} split)")
    layer = settings.layer if settings.layer != "auto" else (metadata.target_layer or "auto")
    engine = make_engine(settings.method, registered.model, layer, settings.score,
                         (*metadata.image_size, metadata.channels))

    with (
        tracking.start_run(run_name=f"report-{registered.name}-v{registered.version}") as run,
        tempfile.TemporaryDirectory(prefix="cxr-report-") as staging,
    ):
        try:
            context, html, pdf = _explain_into_run(settings, registered, source, records,
                                                   engine, Path(staging), run.info.run_id)
        except BaseException as error:  # Ctrl-C too: the run says why and keeps what exists
            # Best effort: a store that is itself the problem must not hide the first error.
            with contextlib.suppress(Exception):
                tracking.record_failure(error)
                tracking.log_artifacts(Path(staging))
            raise
    return ExplainResult(
        run_id=run.info.run_id,
        model=f"{registered.name} v{registered.version}"
        + (f" (@{registered.alias})" if registered.alias else ""),
        explained=context.n_images,
        skipped=len(context.skipped),
        accuracy=context.accuracy,
        html=html,
        pdf=pdf,
    )


def _explain_into_run(settings, registered, source, records, engine, staging: Path,
                      run_id: str):
    """Stream, measure, render and log; the report files are written only once all of it
    has succeeded, so a failed run leaves no half-written local report."""
    metadata = registered.metadata
    started = time.perf_counter()
    explainer = Explainer(settings, metadata, engine)
    with ArtifactWriter(staging, metadata.class_names, engine.target.name,
                        metadata.image_size) as writer:
        skipped = explainer.run(source, records, writer)
    explained_seconds = time.perf_counter() - started
    results = explainer.finish()
    tracking.log_new_params(
        _report_params(settings, registered, engine, source, explainer.fingerprint)
    )
    context, metrics = _report_context(
        settings, registered, engine, source, explainer, results, skipped, run_id,
        elapsed=time.perf_counter() - started,
    )
    metrics["time.explain_seconds"] = explained_seconds
    metrics["time.quality_seconds"] = explainer.quality_seconds
    html, pdf = render.write_report(context, REPORTS_DIR / run_id)
    tracking.log_metrics(metrics)
    tracking.log_artifacts(staging)
    for figure in [*context.figures, *(f for s in context.sections for f in s.figures)]:
        tracking.log_text(figure.svg, f"figures/{safe_id(figure.title.lower())}.svg")
    tracking.log_overlay_charts(
        {grid.class_name: [_decode_png(item.png) for item in grid.items[:CHARTED_OVERLAYS]]
         for grid in context.grids},
        CHARTED_OVERLAYS,
    )
    tracking.log_artifact(html, "report")
    tracking.log_artifact(pdf, "report")
    tracking.set_note(_run_note(context))
    return context, html, pdf


def _decode_png(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _report_context(settings, registered, engine, source, explainer, results, skipped,
                    run_id: str, elapsed: float) -> tuple[render.ReportContext, dict]:
    collected = explainer.collected
    class_names = registered.metadata.class_names
    scores = classification_quality(np.asarray(collected.y_true), np.asarray(collected.y_pred),
                                    class_names)
    n_flagged = len(collected.flagged)
    inventory = take_inventory(source, class_names, explainer.explained, skipped, settings.limit)
    metrics = {
        **scores.metrics(),
        **findings.classification_metrics(results),
        **findings.explanation_metrics(results),
        "images_explained": len(collected.y_pred),
        "images_skipped": len(skipped),
        "shortcut.flagged_images": n_flagged,
        "data.found": inventory.found,
        "data.used": inventory.used,
        "data.skipped": inventory.skipped,
    }
    context = render.ReportContext(
        model_name=registered.name,
        model_version=registered.version,
        model_alias=registered.alias,
        model_source=registered.source,
        data_source=source.description,
        data_fingerprint=explainer.fingerprint,
        run_id=run_id,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        settings=_shown_settings(settings, engine),
        assumptions=list(registered.metadata.assumed) + list(getattr(source, "notes", [])),
        class_names=list(class_names),
        n_images=len(collected.y_pred),
        accuracy=scores.accuracy,
        per_class=scores.per_class,
        confusion=scores.confusion,
        grids=collected.grids(class_names),
        skipped=[(item.source, item.reason) for item in skipped],
        elapsed_seconds=elapsed,
        summary=findings.summary(results, scores.accuracy, len(collected.y_pred), n_flagged),
        sections=findings.sections(results, n_flagged),
        extremes=collected.extremes(),
        flagged=collected.flagged,
        figures=findings.classification_figures(results),
        data=_inventory_table(inventory),
    )
    return context, metrics


def _inventory_table(inventory) -> render.Table:
    rows = [
        [row.source, row.class_name, str(row.found), str(row.used), str(row.skipped),
         "; ".join(f"{reason} ({n})" for reason, n in sorted(row.reasons.items())) or "—"]
        for row in inventory.rows
    ]
    return render.Table(["Source", "Class", "Found", "Used", "Skipped", "Reasons"], rows)


def _check_explain_settings(settings: ExplainSettings) -> None:
    choices = {"method": METHODS, "score": SCORES, "normalize": NORMALISATIONS,
               "colormap": COLORMAPS, "quality": LEVELS}
    for name, allowed in choices.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise UserError(f"unknown {name} '{value}'; choose one of {', '.join(allowed)}")
    if not 0.0 <= settings.alpha <= 1.0:
        raise UserError(f"alpha {settings.alpha} is outside 0..1; 0.5 is the tutorial's")
    if settings.batch_size < 1:
        raise UserError(f"batch size {settings.batch_size} must be at least 1")
    if settings.limit < 0:
        raise UserError(f"limit {settings.limit} must be 0 (all images) or more")


def _report_params(settings, registered, engine, source, fingerprint: str) -> dict:
    height, width = engine.target.map_size
    return {
        **vars(settings),
        "model_name": registered.name,
        "model_version": registered.version,
        "model_source": registered.source,
        "target_layer": engine.target.name,
        "target_map_size": f"{height}x{width}",
        "data_source": source.description,
        "data_fingerprint": fingerprint,
    }


SCORE_DESCRIPTIONS = {
    "logit": "pre-activation logit of the explained class",
    "probability": "probability of the explained class (after softmax/sigmoid)",
}
NORMALISATION_DESCRIPTIONS = {
    "image": "per image, min-max (maps are not comparable across images)",
    "global": "one scale for the whole report (maps are comparable across images)",
}


def _shown_settings(settings: ExplainSettings, engine) -> dict[str, str]:
    height, width = engine.target.map_size
    return {
        "Method": engine.title,
        "Target layer": engine.target.name + (" (automatic)" if settings.layer == "auto" else ""),
        "Feature map": f"{height} x {width}",
        "Class score": SCORE_DESCRIPTIONS[settings.score],
        "Normalisation": NORMALISATION_DESCRIPTIONS[settings.normalize],
        "Colormap": settings.colormap,
        "Alpha": f"{settings.alpha:g}",
        "Batch size": str(settings.batch_size),
        "Split": settings.split,
        "Limit": "all images" if not settings.limit else str(settings.limit),
        "Quality checks": settings.quality,
    }


def _markdown_text(text: str) -> str:
    """Data-derived text (class names, model names) as literal text in the run description:
    the MLflow UI renders it as Markdown through a sanitiser that would drop a `<script>`
    class name together with the rest of the table."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"\\{c}" if c in "\\`*_[]|#" else c for c in escaped)


def _run_note(context: render.ReportContext) -> str:
    rows = "\n".join(
        f"| {_markdown_text(row['class'])} | {row['precision']:.2f} | {row['recall']:.2f} "
        f"| {row['f1']:.2f} | {row['support']} |"
        for row in context.per_class
    )
    alias = f" (@{context.model_alias})" if context.model_alias else ""
    settings = context.settings
    return (
        f"**{render.DISCLAIMER}**\n\n"
        f"{settings['Method']} report for **{_markdown_text(context.model_name)} "
        f"v{context.model_version}{_markdown_text(alias)}** on "
        f"{_markdown_text(context.data_source)}.\n\n"
        f"- Images explained: {context.n_images}; skipped: {len(context.skipped)}\n"
        f"- Accuracy: {context.accuracy:.1%}\n"
        f"- Target layer: {_markdown_text(settings['Target layer'])}; class score: "
        f"{settings['Class score']};"
        f" normalisation: {settings['Normalisation']}\n\n"
        "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
        f"{rows}\n\n"
        "Full report: artifacts `report/report.html` and `report/report.pdf`."
    )
