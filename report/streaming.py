"""Streaming a source through the engine: batches in, artifacts and bounded summaries out.

Memory is bounded by the batch size and the report's sample grids, not by the number of
images: overlays, maps and prediction rows go to disk as they are made, and only labels,
predictions and a few hundred bytes per map are kept.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from report import render
from report.artifacts import ArtifactWriter
from report.cam.engine import upsample
from report.cam.normalise import by_scale, per_image
from report.cam.overlay import OVERLAY_FORMATS, encode, label_text, make_overlay
from report.checks import QualityAccumulator, QualityPlan
from report.data.batches import Batch, iter_batches
from report.data.ids import safe_id
from report.data.records import Skipped
from report.model import ModelMetadata

GRID_IMAGES_PER_CLASS = 12
EXTREMES = 4
MULTI_LABEL_THRESHOLD = 0.5


@dataclass
class Collected:
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


@dataclass(frozen=True)
class _Map:
    """One map to draw: the image's predicted class (`extra=False`) or, for multi-label
    heads, another class above the threshold, saved as `<image_id>__<class>`. `full` is the
    map at input size (kept only while its overlay is drawn)."""

    class_index: int
    confidence: float
    raw: np.ndarray
    full: np.ndarray | None = None
    extra: bool = False


@dataclass(frozen=True)
class _Drawn:
    """An overlay being encoded in a worker thread, and what writing it needs."""

    record: object
    item: _Map
    encoded: Future


class Explainer:
    """Streams batches through the engine into the artifact writer (`settings`: the checked
    values of options.EXPLAIN).

    Three stages overlap: worker threads decode the next images while the engine explains
    the current batch, and other worker threads draw and encode its overlays. Results are
    consumed in record order, so every artifact is the same whatever the number of workers;
    the queues between stages are bounded, so memory does not grow with the number of
    images. OpenCV's and Pillow's codecs release the GIL, which is what makes threads pay.

    With `normalize=image` each overlay is drawn as its batch is explained. With `global`, the
    shared scale is only known once every map exists: the first pass spills each decoded film
    to a temporary file (uint8, the model's size) and keeps the raw maps (feature-map size, a
    few hundred bytes each); the second pass draws from those, without decoding again.
    """

    def __init__(self, settings: Mapping, metadata: ModelMetadata, engine):
        self.settings = settings
        self.metadata = metadata
        self.engine = engine
        self.collected = Collected()
        self._fingerprint = hashlib.sha256()
        self._pending: list[tuple[object, list[_Map]]] = []  # normalize=global: second pass
        self._global_scale = 0.0
        self.quality = QualityAccumulator(QualityPlan.of(settings["quality"]),
                                          metadata.class_names, metadata.image_size)
        self.quality_seconds = 0.0
        self.explained: list = []  # records, for the data accounting
        self.workers = settings["workers"] or len(os.sched_getaffinity(0)) or 1
        self._drawn: deque[_Drawn] = deque()
        self._suffix, self._media_type = OVERLAY_FORMATS[settings["overlay_format"]]
        # Enough work queued to keep every worker busy while the engine runs, and no more.
        self._window = max(2 * settings["batch_size"], 4 * self.workers)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint.hexdigest()

    @property
    def overlay_suffix(self) -> str:
        return self._suffix

    def finish(self):
        """The checks that need extra forward passes, on the bounded sample."""
        started = time.perf_counter()
        results = self.quality.finish(self.engine, self.settings["batch_size"])
        self.quality_seconds += time.perf_counter() - started
        return results

    def run(self, source, records, writer: ArtifactWriter) -> list[Skipped]:
        skipped: list[Skipped] = []
        spill = self.settings["normalize"] == "global"  # films kept for the second pass
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-worker") as pool,
            tempfile.TemporaryFile(prefix="cxr-films-") if spill else nullcontext() as films,
        ):
            batches = iter_batches(source, records, self.metadata.image_size,
                                   self.settings["batch_size"], skipped, pool=pool,
                                   window=self._window)
            with _progress(len(records), "Explaining") as progress:
                for batch in batches:
                    self._explain_batch(batch, writer, pool, films)
                    self._write_overlays(writer, keep=self._window)
                    progress.update(len(batch.records))
                self._write_overlays(writer, keep=0)
                for item in skipped:
                    writer.add_skipped(item.image_id, item.source, item.label, item.reason)
                progress.update(len(skipped))
            if self.settings["normalize"] == "global":
                self._draw_globally_normalised(writer, pool, films)
        return skipped

    def _explain_batch(self, batch: Batch, writer: ArtifactWriter, pool, films) -> None:
        images = preprocess(batch.pixels, self.metadata)
        explanation = self.engine.explain(images)
        maps_per_image = [
            [_Map(int(c), float(p[c]), raw, full)]
            for c, p, raw, full in zip(explanation.class_index, explanation.probabilities,
                                       explanation.raw_maps, explanation.maps, strict=True)
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
            if self.settings["normalize"] == "image":
                heatmaps = per_image(np.stack([m.full for m in maps]))
                self._draw(record, image.pixels, maps, heatmaps, pool)
            else:
                self._global_scale = max([self._global_scale, *(m.raw.max() for m in maps)])
                films.write(np.ascontiguousarray(image.pixels).tobytes())
                self._pending.append((record, [replace(m, full=None) for m in maps]))

    def _add_other_labels(self, images, explanation, maps_per_image) -> None:
        """Multi-label heads: one more map for every other class at or above the threshold,
        in one extra compiled pass for the whole batch."""
        above = explanation.probabilities >= MULTI_LABEL_THRESHOLD
        above[np.arange(len(above)), explanation.class_index] = False
        rows, classes = np.nonzero(above)
        if not len(rows):
            return
        more = self.engine.explain(images[rows], classes)
        for row, c, raw, full in zip(rows, classes, more.raw_maps, more.maps, strict=True):
            confidence = float(explanation.probabilities[row, c])
            maps_per_image[row].append(_Map(int(c), confidence, raw, full, extra=True))

    def _draw_globally_normalised(self, writer: ArtifactWriter, pool, films) -> None:
        """The second pass: films from the spill file, maps upsampled a batch at a time."""
        if not self._pending:  # every image was skipped: nothing to draw
            return
        films.flush()
        height, width = self.metadata.image_size
        stored = np.memmap(films, np.uint8, mode="r", shape=(len(self._pending), height,
                                                             width, 3))
        scale, size = self._global_scale, self.settings["batch_size"]
        with _progress(len(self._pending), "Drawing overlays") as progress:
            for start in range(0, len(self._pending), size):
                chunk = self._pending[start : start + size]
                raw = np.stack([m.raw for _, maps in chunk for m in maps])
                full = iter(by_scale(upsample(raw, (height, width)).numpy(), scale))
                for offset, (record, maps) in enumerate(chunk):
                    heatmaps = [next(full) for _ in maps]
                    self._draw(record, np.array(stored[start + offset]), maps, heatmaps, pool)
                self._write_overlays(writer, keep=self._window)
                progress.update(len(chunk))
            self._write_overlays(writer, keep=0)
        del stored
        self._pending = []

    def _draw(self, record, pixels, maps: list[_Map], heatmaps, pool) -> None:
        """Queue each map's overlay for a worker thread; `_write_overlays` collects them."""
        for item, heatmap in zip(maps, heatmaps, strict=True):
            label = label_text(self.metadata.class_names[item.class_index], item.confidence)
            encoded = pool.submit(draw_and_encode, pixels, heatmap, label,
                                  self.settings["alpha"], self.settings["colormap"],
                                  self.settings["overlay_format"])
            self._drawn.append(_Drawn(record, replace(item, full=None), encoded))

    def _write_overlays(self, writer: ArtifactWriter, keep: int) -> None:
        """Write finished overlays in record order until at most `keep` are in flight."""
        while len(self._drawn) > keep:
            drawn = self._drawn.popleft()
            encoded = drawn.encoded.result()
            record, item = drawn.record, drawn.item
            writer.add_overlay(self._key(record.image_id, item), record.label, encoded)
            if not item.extra:
                self.collected.offer_tile(record.label, self._tile(record, item, encoded))

    def _tile(self, record, item: _Map, encoded: bytes) -> render.GridItem:
        class_names = self.metadata.class_names
        return render.GridItem(
            image_id=record.image_id,
            true_label="unlabelled" if record.label is None else class_names[record.label],
            predicted_label=class_names[item.class_index],
            confidence=item.confidence,
            correct=record.label == item.class_index,
            overlay=encoded,
            media_type=self._media_type,
        )

    def _key(self, image_id: str, item: _Map) -> str:
        if not item.extra:
            return image_id
        return f"{image_id}__{safe_id(self.metadata.class_names[item.class_index])}"


def draw_and_encode(pixels, heatmap, label: str, alpha: float, colormap: str,
                    overlay_format: str) -> bytes:
    """One overlay, start to finish: run in a worker thread."""
    return encode(make_overlay(pixels, heatmap, label, alpha, colormap), overlay_format)


def _progress(total: int, description: str) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True)


def preprocess(pixels: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """uint8 RGB (B, H, W, 3) -> float32 model input, per the model's metadata."""
    images = pixels.astype(np.float32)
    if metadata.color == "grayscale":
        luminance = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = (images @ luminance)[..., None]
    return images * np.float32(metadata.scale)
