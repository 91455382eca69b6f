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
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from report import render
from report.artifacts import ArtifactWriter, artifact_name
from report.cam.engine import upsample
from report.cam.normalise import by_scale, per_image
from report.cam.overlay import OVERLAY_FORMATS, encode, label_text, make_overlay
from report.checks import QualityAccumulator, QualityPlan
from report.data.batches import Batch, iter_batches
from report.data.pixels import resize, resize_mask
from report.data.records import Record, Skipped
from report.i18n import _
from report.model import ModelMetadata

GRID_IMAGES_PER_CLASS = 12
EXTREMES = 4
MULTI_LABEL_THRESHOLD = 0.5


@dataclass
class Collected:
    """What the report keeps while streaming for its pictures: bounded image grids, the
    extremes and the flagged images (labels and predictions are the quality accumulator's).

    Every entry carries its image's position in the full record list, and what is kept is
    chosen by keys of (confidence, position), never by arrival: partial summaries of any
    split of the records merge (`merge`) into the summary of one pass over all of them.
    """

    wrong: dict[int, list[_Tile]] = field(default_factory=dict)
    right: dict[int, list[_Tile]] = field(default_factory=dict)
    least_sure_right: list[_Tile] = field(default_factory=list)
    most_sure_wrong: list[_Tile] = field(default_factory=list)
    flags: list[tuple[int, tuple[str, str, str]]] = field(default_factory=list)

    @property
    def flagged(self) -> list[tuple[str, str, str]]:
        """(image id, true class, reasons), in record order."""
        return [flag for _, flag in sorted(self.flags, key=_by_position)]

    def add_flag(self, position: int, image_id: str, true_name: str, reasons: str) -> None:
        self.flags.append((position, (image_id, true_name, reasons)))

    def offer_tile(self, position: int, label: int | None, item: render.GridItem) -> None:
        if label is None:
            return
        tile = (position, item)
        kept = self.wrong if not item.correct else self.right
        kept[label] = _best([*kept.get(label, []), tile], GRID_IMAGES_PER_CLASS,
                            _grid_key(item.correct))
        # Bounded: only the EXTREMES least confident correct and most confident wrong stay.
        if item.correct:
            self.least_sure_right = _best([*self.least_sure_right, tile], EXTREMES,
                                          _least_sure)
        else:
            self.most_sure_wrong = _best([*self.most_sure_wrong, tile], EXTREMES, _most_sure)

    def merge(self, other: Collected) -> Collected:
        """The summary of both parts' images; associative and independent of order."""
        return Collected(
            wrong=_merge_tiles(self.wrong, other.wrong, _grid_key(correct=False)),
            right=_merge_tiles(self.right, other.right, _grid_key(correct=True)),
            least_sure_right=_best(self.least_sure_right + other.least_sure_right, EXTREMES,
                                   _least_sure),
            most_sure_wrong=_best(self.most_sure_wrong + other.most_sure_wrong, EXTREMES,
                                  _most_sure),
            flags=self.flags + other.flags,
        )

    def extremes(self) -> list[tuple[str, list[render.GridItem]]]:
        return [(_("Lowest-confidence correct predictions"), _items(self.least_sure_right)),
                (_("Highest-confidence wrong predictions"), _items(self.most_sure_wrong))]

    def grids(self, class_names: tuple[str, ...], y_true, y_pred) -> list[render.ClassGrid]:
        """Per true class: the most confident mistakes first, then correct images in record
        order, GRID_IMAGES_PER_CLASS in all; counted over every labelled image (`y_true`,
        `y_pred`, as the quality accumulator keeps them)."""
        y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
        totals = np.bincount(y_true, minlength=len(class_names))
        wrong = np.bincount(y_true[y_true != y_pred], minlength=len(class_names))
        grids = []
        for label, name in enumerate(class_names):
            tiles = self.wrong.get(label, []) + self.right.get(label, [])
            items = _items(tiles)[:GRID_IMAGES_PER_CLASS]
            grids.append(render.ClassGrid(name, items, int(totals[label]), int(wrong[label])))
        return grids


_Tile = tuple[int, render.GridItem]  # (position, tile)


def _by_position(entry: tuple) -> int:
    return entry[0]


def _least_sure(tile: _Tile) -> tuple[float, int]:
    return tile[1].confidence, tile[0]


def _most_sure(tile: _Tile) -> tuple[float, int]:
    return -tile[1].confidence, tile[0]


def _grid_key(correct: bool):
    """Mistakes: most confident first; correct images: in record order."""
    return _by_position if correct else _most_sure


def _best(tiles: list[_Tile], count: int, key) -> list[_Tile]:
    """The first `count` tiles by `key`; positions are unique, so ties never depend on order."""
    return sorted(tiles, key=key)[:count]


def _merge_tiles(a: dict[int, list[_Tile]], b: dict[int, list[_Tile]], key
                 ) -> dict[int, list[_Tile]]:
    return {label: _best(a.get(label, []) + b.get(label, []), GRID_IMAGES_PER_CLASS, key)
            for label in sorted(a.keys() | b.keys())}


def _items(tiles: list[_Tile]) -> list[render.GridItem]:
    return [item for _, item in tiles]


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
    position: int
    item: _Map
    encoded: Future


@dataclass
class Summary:
    """Everything a streaming pass keeps for the report about the records it saw.

    Entries carry their records' global positions (indices in the full record list), so the
    summaries of any split of the records merge into the summary of one pass over all of
    them: `merge` is associative and independent of order.
    """

    collected: Collected
    quality: QualityAccumulator
    fingerprint_lines: list[tuple[int, str]] = field(default_factory=list)
    explained_records: list[tuple[int, Record]] = field(default_factory=list)
    quality_seconds: float = 0.0

    @property
    def fingerprint(self) -> str:
        """sha256 over "<image_id>|<label>|<digest>" lines, in record order."""
        digest = hashlib.sha256()
        for _position, line in sorted(self.fingerprint_lines, key=_by_position):
            digest.update(line.encode())
        return digest.hexdigest()

    @property
    def explained(self) -> list[Record]:
        """The explained records, in record order (for the data accounting)."""
        return [record for _, record in sorted(self.explained_records, key=_by_position)]

    def add_image(self, position: int, record: Record, digest: str) -> None:
        self.explained_records.append((position, record))
        self.fingerprint_lines.append((position, f"{record.image_id}|{record.label}|{digest}\n"))

    def merge(self, other: Summary) -> Summary:
        return Summary(
            collected=self.collected.merge(other.collected),
            quality=self.quality.merge(other.quality),
            fingerprint_lines=self.fingerprint_lines + other.fingerprint_lines,
            explained_records=self.explained_records + other.explained_records,
            quality_seconds=self.quality_seconds + other.quality_seconds,
        )

    def timed(self, check, *arguments):
        """`check(*arguments)` (one of the quality accumulator's sample checks), its time
        added to `quality_seconds`."""
        started = time.perf_counter()
        try:
            return check(*arguments)
        finally:
            self.quality_seconds += time.perf_counter() - started


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

    def __init__(self, settings: Mapping, metadata: ModelMetadata, engine, *,
                 scale: float | None = None, keep_sample: bool = True, progress: bool = True):
        """`scale`: with `normalize=global`, the shared scale when it is already known (a
        Spark task's part, after a first pass over every part found it): overlays are then
        drawn as their batch is explained. `keep_sample`: whether the quality accumulator
        keeps the trust checks' sample (a Spark driver fills it itself)."""
        self.settings = settings
        self.metadata = metadata
        self.engine = engine
        self.summary = Summary(Collected(), QualityAccumulator(
            QualityPlan.of(settings["quality"]), metadata.class_names, metadata.image_size,
            keep_sample=keep_sample))
        self._known_scale = scale
        self._progress = progress
        self._positions: list[int] = []  # of the records being run, by index
        self._pending: list[tuple[object, int, list[_Map]]] = []  # normalize=global: second pass
        self._global_scale = 0.0
        self.workers = settings["workers"] or len(os.sched_getaffinity(0)) or 1
        self._drawn: deque[_Drawn] = deque()
        self._suffix, self._media_type = OVERLAY_FORMATS[settings["overlay_format"]]
        # Enough work queued to keep every worker busy while the engine runs, and no more.
        self._window = max(2 * settings["batch_size"], 4 * self.workers)

    @property
    def collected(self) -> Collected:
        return self.summary.collected

    @property
    def quality(self) -> QualityAccumulator:
        return self.summary.quality

    @property
    def overlay_suffix(self) -> str:
        return self._suffix

    def run(self, source, records, writer: ArtifactWriter, positions=None,
            duplicates: Mapping[int, str] | None = None) -> list[Skipped]:
        """Explain `records`; `positions` are their indices in the full record list (by
        default 0, 1, ...), so that a part of the list run on its own gives a summary that
        merges with the other parts' (`Summary.merge`). `duplicates` (position -> the source
        it repeats), when given, replaces finding duplicates within `records` (a part does
        not see the others' files)."""
        self._positions = list(range(len(records)) if positions is None else positions)
        if len(self._positions) != len(records):
            raise ValueError(f"{len(self._positions)} positions for {len(records)} records")
        skipped: list[Skipped] = []
        # Films kept for the second pass, when the shared scale is not known yet.
        spill = self._second_pass
        with (
            # NumPy's BLAS keeps a spinning thread per core of its own: in a pass that
            # already runs the engine and the workers on every core, it only gets in the way.
            threadpool_limits(limits=1, user_api="blas"),
            ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-worker") as pool,
            tempfile.TemporaryFile(prefix="cxr-films-") if spill else nullcontext() as films,
        ):
            batches = iter_batches(source, records, self.metadata.image_size,
                                   self.settings["batch_size"], skipped, pool=pool,
                                   window=self._window,
                                   duplicates=self._by_index(duplicates))
            with self._bar(len(records), "Explaining") as progress:
                for batch in batches:
                    self._explain_batch(batch, writer, pool, films)
                    self._write_overlays(writer, keep=self._window)
                    progress.update(len(batch.records))
                self._write_overlays(writer, keep=0)
                for item in skipped:
                    writer.add_skipped(item.image_id, item.source, item.label, item.reason)
                progress.update(len(skipped))
            if spill:
                self._draw_globally_normalised(writer, pool, films)
        return skipped

    def largest_map(self, source, records, positions=None,
                    duplicates: Mapping[int, str] | None = None) -> float:
        """The largest value of any map `run` would draw for `records`: the shared scale of
        `normalize=global`, for the first pass of a backend that explains parts apart."""
        self._positions = list(range(len(records)) if positions is None else positions)
        largest = 0.0
        with (
            threadpool_limits(limits=1, user_api="blas"),
            ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-worker") as pool,
        ):
            for batch in iter_batches(source, records, self.metadata.image_size,
                                      self.settings["batch_size"], [], pool=pool,
                                      window=self._window,
                                      duplicates=self._by_index(duplicates)):
                _, _, maps_per_image = self._maps_for(batch)
                largest = max([largest, *(m.raw.max() for maps in maps_per_image
                                          for m in maps)])
        return float(largest)

    @property
    def _second_pass(self) -> bool:
        return self.settings["normalize"] == "global" and self._known_scale is None

    def _by_index(self, duplicates: Mapping[int, str] | None) -> dict[int, str] | None:
        if duplicates is None:
            return None
        return {index: duplicates[position] for index, position in enumerate(self._positions)
                if position in duplicates}

    def _bar(self, total: int, description: str) -> tqdm:
        return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True,
                    disable=not self._progress)

    def _maps_for(self, batch: Batch):
        """Model inputs, the engine's explanation and the maps to draw for each image."""
        images = preprocess(batch.pixels, self.metadata)
        explanation = self.engine.explain(images)
        maps_per_image = [
            [_Map(int(c), float(p[c]), raw, full)]
            for c, p, raw, full in zip(explanation.class_index, explanation.probabilities,
                                       explanation.raw_maps, explanation.maps, strict=True)
        ]
        if self.engine.head.multi_label:
            self._add_other_labels(images, explanation, maps_per_image)
        return images, explanation, maps_per_image

    def _explain_batch(self, batch: Batch, writer: ArtifactWriter, pool, films) -> None:
        images, explanation, maps_per_image = self._maps_for(batch)
        positions = [self._positions[index] for index in batch.indices]
        started = time.perf_counter()
        labels = [record.label for record in batch.records]
        shortcut_flags = self.quality.add_batch(labels, batch.images, images, explanation,
                                                positions)
        self.summary.quality_seconds += time.perf_counter() - started
        for position, record, image, maps, probabilities, flags in zip(
            positions, batch.records, batch.images, maps_per_image, explanation.probabilities,
            shortcut_flags, strict=True
        ):
            predicted = maps[0].class_index
            self.summary.add_image(position, record, image.digest)
            writer.add_prediction(record.image_id, record.source, record.label, probabilities,
                                  predicted, maps[0].raw, flags)
            if flags:
                true_name = "unlabelled" if record.label is None else (
                    self.metadata.class_names[record.label])
                self.collected.add_flag(position, record.image_id, true_name,
                                        "; ".join(flag.shown for flag in flags))
            for extra in maps[1:]:
                writer.add_map(self._key(record.image_id, extra), extra.raw)
            if not self._second_pass:
                full = np.stack([m.full for m in maps])
                heatmaps = (per_image(full) if self._known_scale is None
                            else by_scale(full, self._known_scale))
                self._draw(record, position, image.pixels, maps, heatmaps, pool)
            else:
                self._global_scale = max([self._global_scale, *(m.raw.max() for m in maps)])
                films.write(np.ascontiguousarray(image.pixels).tobytes())
                self._pending.append((record, position,
                                      [replace(m, full=None) for m in maps]))

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
        with self._bar(len(self._pending), "Drawing overlays") as progress:
            for start in range(0, len(self._pending), size):
                chunk = self._pending[start : start + size]
                raw = np.stack([m.raw for _, _, maps in chunk for m in maps])
                full = iter(by_scale(upsample(raw, (height, width)).numpy(), scale))
                for offset, (record, position, maps) in enumerate(chunk):
                    heatmaps = [next(full) for _ in maps]
                    self._draw(record, position, np.array(stored[start + offset]), maps,
                               heatmaps, pool)
                self._write_overlays(writer, keep=self._window)
                progress.update(len(chunk))
            self._write_overlays(writer, keep=0)
        del stored
        self._pending = []

    def _draw(self, record, position: int, pixels, maps: list[_Map], heatmaps, pool) -> None:
        """Queue each map's overlay for a worker thread; `_write_overlays` collects them."""
        for item, heatmap in zip(maps, heatmaps, strict=True):
            label = label_text(self.metadata.class_names[item.class_index], item.confidence)
            encoded = pool.submit(draw_and_encode, pixels, heatmap, label,
                                  self.settings["alpha"], self.settings["colormap"],
                                  self.settings["overlay_format"])
            self._drawn.append(_Drawn(record, position, replace(item, full=None), encoded))

    def _write_overlays(self, writer: ArtifactWriter, keep: int) -> None:
        """Write finished overlays in record order until at most `keep` are in flight."""
        while len(self._drawn) > keep:
            drawn = self._drawn.popleft()
            encoded = drawn.encoded.result()
            record, item = drawn.record, drawn.item
            writer.add_overlay(self._key(record.image_id, item), record.label, encoded)
            if not item.extra:
                self.collected.offer_tile(drawn.position, record.label,
                                          self._tile(record, item, encoded))

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
        return f"{image_id}__{artifact_name(self.metadata.class_names[item.class_index])}"


def draw_and_encode(pixels, heatmap, label: str, alpha: float, colormap: str,
                    overlay_format: str) -> bytes:
    """One overlay, start to finish: run in a worker thread."""
    return encode(make_overlay(pixels, heatmap, label, alpha, colormap), overlay_format)


def preprocess(pixels: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """uint8 RGB (B, H, W, 3) -> float32 model input, per the model's metadata."""
    images = pixels.astype(np.float32)
    if metadata.color == "grayscale":
        luminance = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = (images @ luminance)[..., None]
    return images * np.float32(metadata.scale)


def explain_together(explainers: list[Explainer], source, records: list[list[Record]],
                     writers: list[ArtifactWriter]) -> list[list[Skipped]]:
    """Several models' passes over the same images with one decode (champion against
    challenger): each film is read once, at the largest of the models' input sizes, and
    shrunk for the others. `records[m]` are the same images with model m's labels (the
    models may order their classes differently). Returns each model's skipped images."""
    first = explainers[0]
    sizes = [explainer.metadata.image_size for explainer in explainers]
    largest = max(sizes, key=lambda size: size[0] * size[1])
    for explainer in explainers:
        explainer._positions = list(range(len(records[0])))
    window = max(explainer._window for explainer in explainers)
    skipped: list[Skipped] = []
    with (
        threadpool_limits(limits=1, user_api="blas"),
        ThreadPoolExecutor(first.workers, thread_name_prefix="cxr-worker") as pool,
        ExitStack() as files,
    ):
        films = [files.enter_context(tempfile.TemporaryFile(prefix="cxr-films-"))
                 if explainer._second_pass else None for explainer in explainers]
        batches = iter_batches(source, records[0], largest, first.settings["batch_size"],
                               skipped, pool=pool, window=window)
        with first._bar(len(records[0]), "Explaining with both models") as progress:
            for batch in batches:
                for explainer, own, writer, film in zip(explainers, records, writers, films,
                                                        strict=True):
                    explainer._explain_batch(_resized(batch, own, explainer.metadata),
                                             writer, pool, film)
                    explainer._write_overlays(writer, keep=window)
                progress.update(len(batch.records))
            progress.update(len(skipped))
        per_model = []
        for explainer, own, writer, film in zip(explainers, records, writers, films,
                                                strict=True):
            explainer._write_overlays(writer, keep=0)
            labels = {record.image_id: record.label for record in own}
            mine = [replace(item, label=labels[item.image_id]) for item in skipped]
            for item in mine:
                writer.add_skipped(item.image_id, item.source, item.label, item.reason)
            if film is not None:
                explainer._draw_globally_normalised(writer, pool, film)
            per_model.append(mine)
    return per_model


def _resized(batch: Batch, records: list[Record], metadata: ModelMetadata) -> Batch:
    """`batch` as one model sees it: its own records (labels) and its input size."""
    size = metadata.image_size
    images = [replace(
        image, pixels=resize(image.pixels, size),
        lesion_mask=None if image.lesion_mask is None else resize_mask(image.lesion_mask, size),
        lung_mask=None if image.lung_mask is None else resize_mask(image.lung_mask, size),
    ) for image in batch.images]
    return Batch([records[index] for index in batch.indices], images, batch.indices)
