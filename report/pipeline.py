"""One function per entry point: wires the stages together and streams the batches."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from report import findings, render, tracking
from report.artifacts import ArtifactWriter
from report.cam.engine import METHODS, SCORES, make_engine, upsample
from report.cam.normalise import NORMALISATIONS, by_scale, per_image
from report.cam.overlay import COLORMAPS, encode_png, label_text, make_overlay
from report.data import (
    SYNTHETIC_NAMES,
    detect_layouts,
    load_label_map,
    open_source,
    take_inventory,
)
from report.data.batches import Batch, iter_batches
from report.data.folder import safe_id
from report.data.records import Skipped
from report.data.synthetic import CLASS_NAMES, IMAGE_SIZE
from report.errors import UserError
from report.model import ModelMetadata, build_classifier, compile_classifier
from report.paths import REPORTS_DIR
from report.quality import classification_quality
from report.trust import LEVELS, QualityAccumulator, QualityPlan

GRID_IMAGES_PER_CLASS = 12
CHARTED_OVERLAYS = 4  # per class, as MLflow image charts
EXTREMES = 4
MULTI_LABEL_THRESHOLD = 0.5


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


@dataclass
class _Collected:
    """What the report keeps while streaming: labels and predictions, bounded image grids."""

    y_true: list[int] = field(default_factory=list)
    y_pred: list[int] = field(default_factory=list)
    wrong: dict[int, list[render.GridItem]] = field(default_factory=dict)
    right: dict[int, list[render.GridItem]] = field(default_factory=dict)
    totals: dict[int, int] = field(default_factory=dict)
    misclassified: dict[int, int] = field(default_factory=dict)
    least_sure_right: list[render.GridItem] = field(default_factory=list)
    most_sure_wrong: list[render.GridItem] = field(default_factory=list)
    flagged: list[tuple[str, str, str]] = field(default_factory=list)

    def add_prediction(self, label: int | None, predicted: int) -> None:
        if label is None:
            return
        self.y_true.append(label)
        self.y_pred.append(predicted)
        self.totals[label] = self.totals.get(label, 0) + 1
        if label != predicted:
            self.misclassified[label] = self.misclassified.get(label, 0) + 1

    def offer_tile(self, label: int | None, item: render.GridItem) -> None:
        if label is None:
            return
        kept = (self.right if item.correct else self.wrong).setdefault(label, [])
        if len(kept) < GRID_IMAGES_PER_CLASS:
            kept.append(item)
        # Bounded: only the EXTREMES least confident correct and most confident wrong stay.
        if item.correct:
            self.least_sure_right = sorted([*self.least_sure_right, item],
                                           key=lambda tile: tile.confidence)[:EXTREMES]
        else:
            self.most_sure_wrong = sorted([*self.most_sure_wrong, item],
                                          key=lambda tile: -tile.confidence)[:EXTREMES]

    def extremes(self) -> list[tuple[str, list[render.GridItem]]]:
        return [("Lowest-confidence correct predictions", self.least_sure_right),
                ("Highest-confidence wrong predictions", self.most_sure_wrong)]

    def grids(self, class_names: tuple[str, ...]) -> list[render.ClassGrid]:
        grids = []
        for label, name in enumerate(class_names):
            wrong = sorted(self.wrong.get(label, []), key=lambda item: -item.confidence)
            items = (wrong + self.right.get(label, []))[:GRID_IMAGES_PER_CLASS]
            total = self.totals.get(label, 0)
            grids.append(render.ClassGrid(name, items, total, self.misclassified.get(label, 0)))
        return grids


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
    explainer = _Explainer(settings, metadata, engine)
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


@dataclass(frozen=True)
class _Map:
    """One map to draw: the image's predicted class (`extra=False`) or, for multi-label
    heads, another class above the threshold, saved as `<image_id>__<class>`."""

    class_index: int
    confidence: float
    raw: np.ndarray
    extra: bool = False


class _Explainer:
    """Streams batches through the engine into the artifact writer.

    With `normalize=image` each overlay is drawn as its batch is explained. With `global`, the
    shared scale is only known once every map exists, so a second pass re-reads the images
    and draws the overlays from the raw maps kept (feature-map size: a few hundred bytes per
    map); nothing image-sized is held beyond one batch.
    """

    def __init__(self, settings: ExplainSettings, metadata: ModelMetadata, engine):
        self.settings = settings
        self.metadata = metadata
        self.engine = engine
        self.collected = _Collected()
        self._fingerprint = hashlib.sha256()
        self._pending: dict[str, list[_Map]] = {}
        self._global_scale = 0.0
        self.quality = QualityAccumulator(QualityPlan.of(settings.quality),
                                          metadata.class_names, metadata.image_size)
        self.quality_seconds = 0.0
        self.explained: list = []  # records, for the data accounting

    @property
    def fingerprint(self) -> str:
        return self._fingerprint.hexdigest()

    def finish(self):
        """The checks that need extra forward passes, on the bounded sample."""
        started = time.perf_counter()
        results = self.quality.finish(self.engine, self.settings.batch_size)
        self.quality_seconds += time.perf_counter() - started
        return results

    def run(self, source, records, writer: ArtifactWriter) -> list[Skipped]:
        skipped: list[Skipped] = []
        batches = iter_batches(source, records, self.metadata.image_size,
                               self.settings.batch_size, skipped)
        with _progress(len(records), "Explaining") as progress:
            for batch in batches:
                self._explain_batch(batch, writer)
                progress.update(len(batch.records))
            for item in skipped:
                writer.add_skipped(item.image_id, item.source, item.label, item.reason)
            progress.update(len(skipped))
        if self.settings.normalize == "global":
            self._draw_globally_normalised(source, records, writer)
        return skipped

    def _explain_batch(self, batch: Batch, writer: ArtifactWriter) -> None:
        images = preprocess(batch.pixels, self.metadata)
        explanation = self.engine.explain(images)
        maps_per_image = [
            [_Map(int(c), float(p[c]), raw)]
            for c, p, raw in zip(explanation.class_index, explanation.probabilities,
                                 explanation.raw_maps, strict=True)
        ]
        if self.engine.head.multi_label:
            self._add_other_labels(images, explanation, maps_per_image)
        started = time.perf_counter()
        labels = [record.label for record in batch.records]
        shortcut_flags = self.quality.add_batch(labels, batch.images, images, explanation)
        self.quality_seconds += time.perf_counter() - started
        for record, image, maps, probabilities, flags in zip(
            batch.records, batch.images, maps_per_image, explanation.probabilities,
            shortcut_flags, strict=True
        ):
            predicted = maps[0].class_index
            self.explained.append(record)
            writer.add_prediction(record.image_id, record.source, record.label, probabilities,
                                  predicted, maps[0].raw, flags)
            if flags:
                true_name = "unlabelled" if record.label is None else (
                    self.metadata.class_names[record.label])
                self.collected.flagged.append((record.image_id, true_name, "; ".join(flags)))
            for extra in maps[1:]:
                writer.add_map(self._key(record.image_id, extra), extra.raw)
            self.collected.add_prediction(record.label, predicted)
            self._fingerprint.update(f"{record.image_id}|{record.label}|{image.digest}\n".encode())
            if self.settings.normalize == "image":
                self._draw(record, image.pixels, maps, per_image, writer)
            else:
                self._global_scale = max([self._global_scale, *(m.raw.max() for m in maps)])
                self._pending[record.image_id] = maps

    def _add_other_labels(self, images, explanation, maps_per_image) -> None:
        """Multi-label heads: one more map for every other class at or above the threshold,
        in one extra compiled pass for the whole batch."""
        above = explanation.probabilities >= MULTI_LABEL_THRESHOLD
        above[np.arange(len(above)), explanation.class_index] = False
        rows, classes = np.nonzero(above)
        if not len(rows):
            return
        more = self.engine.explain(images[rows], classes)
        for row, c, raw in zip(rows, classes, more.raw_maps, strict=True):
            confidence = float(explanation.probabilities[row, c])
            maps_per_image[row].append(_Map(int(c), confidence, raw, extra=True))

    def _draw_globally_normalised(self, source, records, writer: ArtifactWriter) -> None:
        explained = [r for r in records if r.image_id in self._pending]
        batches = iter_batches(source, explained, self.metadata.image_size,
                               self.settings.batch_size, [])
        scale = self._global_scale
        with _progress(len(explained), "Drawing overlays") as progress:
            for batch in batches:
                for record, image in zip(batch.records, batch.images, strict=True):
                    maps = self._pending.pop(record.image_id)
                    self._draw(record, image.pixels, maps, lambda m: by_scale(m, scale), writer)
                progress.update(len(batch.records))

    def _draw(self, record, pixels, maps: list[_Map], normalise, writer: ArtifactWriter):
        upsampled = upsample(np.stack([m.raw for m in maps]), self.metadata.image_size).numpy()
        for item, heatmap in zip(maps, normalise(upsampled), strict=True):
            png = self._overlay_png(pixels, heatmap, item)
            writer.add_overlay(self._key(record.image_id, item), record.label, png)
            if not item.extra:
                self.collected.offer_tile(record.label, self._tile(record, item, png))

    def _overlay_png(self, pixels, heatmap, item: _Map) -> bytes:
        label = label_text(self.metadata.class_names[item.class_index], item.confidence)
        return encode_png(make_overlay(pixels, heatmap, label, self.settings.alpha,
                                       self.settings.colormap))

    def _tile(self, record, item: _Map, png: bytes) -> render.GridItem:
        class_names = self.metadata.class_names
        return render.GridItem(
            image_id=record.image_id,
            true_label="unlabelled" if record.label is None else class_names[record.label],
            predicted_label=class_names[item.class_index],
            confidence=item.confidence,
            correct=record.label == item.class_index,
            png=png,
        )

    def _key(self, image_id: str, item: _Map) -> str:
        if not item.extra:
            return image_id
        return f"{image_id}__{safe_id(self.metadata.class_names[item.class_index])}"


def _progress(total: int, description: str) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True)


def preprocess(pixels: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """uint8 RGB (B, H, W, 3) -> float32 model input, per the model's metadata."""
    images = pixels.astype(np.float32)
    if metadata.color == "grayscale":
        luminance = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = (images @ luminance)[..., None]
    return images * np.float32(metadata.scale)


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


def _run_note(context: render.ReportContext) -> str:
    rows = "\n".join(
        f"| {row['class']} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} "
        f"| {row['support']} |"
        for row in context.per_class
    )
    alias = f" (@{context.model_alias})" if context.model_alias else ""
    settings = context.settings
    return (
        f"**{render.DISCLAIMER}**\n\n"
        f"{settings['Method']} report for **{context.model_name} v{context.model_version}{alias}**"
        f" on {context.data_source}.\n\n"
        f"- Images explained: {context.n_images}; skipped: {len(context.skipped)}\n"
        f"- Accuracy: {context.accuracy:.1%}\n"
        f"- Target layer: `{settings['Target layer']}`; class score: {settings['Class score']};"
        f" normalisation: {settings['Normalisation']}\n\n"
        "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
        f"{rows}\n\n"
        "Full report: artifacts `report/report.html` and `report/report.pdf`."
    )
