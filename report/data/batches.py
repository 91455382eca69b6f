"""Stream a source's records as fixed-size batches of decoded images."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from report.data.records import LoadedImage, Record, Skipped, UnreadableImage
from report.data.source import ImageSource

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batch:
    records: list[Record]
    images: list[LoadedImage]
    indices: list[int]  # each record's index in the list given to iter_batches

    @property
    def pixels(self) -> np.ndarray:
        """uint8 (B, H, W, 3) RGB."""
        return np.stack([image.pixels for image in self.images])


def iter_batches(
    source: ImageSource,
    records: list[Record],
    image_size: tuple[int, int],
    batch_size: int,
    skipped: list[Skipped],
    pool: Executor | None = None,
    window: int = 64,
    duplicates: Mapping[int, str] | None = None,
) -> Iterator[Batch]:
    """Unreadable images go to `skipped` with their reason; batches hold only readable ones.

    With a `pool`, images are decoded in its threads, at most `window` ahead of the consumer,
    and still come out in record order: the batches are the same whatever the pool.

    A file with the same bytes as an earlier one is skipped too ("duplicate of <first>"):
    the digest is computed anyway, and a duplicate would count twice in every metric.
    Sources whose records must stay as they are (the tutorial's arrays, arrays in memory) set
    `keeps_duplicates = True`. A caller that found the duplicates over more records than
    these (a Spark driver, over every part) gives them as `duplicates`: index in `records` ->
    the source repeated.
    """
    first_by_digest: dict[str, str] = {}
    dedupe = not source.keeps_duplicates and duplicates is None
    pending = Batch([], [], [])
    loaded = ordered_map(lambda record: _load(source, record, image_size), records, pool, window)
    for index, (record, image) in enumerate(zip(records, loaded, strict=True)):
        try:
            if isinstance(image, UnreadableImage):
                raise image
            if dedupe:
                _check_duplicate(record, image, first_by_digest)
            elif duplicates and index in duplicates:
                raise UnreadableImage(f"duplicate of {duplicates[index]}")
        except UnreadableImage as error:
            skipped.append(
                Skipped(record.image_id, record.source, record.label, str(error), record.dataset)
            )
            continue
        pending.records.append(record)
        pending.images.append(image)
        pending.indices.append(index)
        if len(pending.records) == batch_size:
            yield pending
            pending = Batch([], [], [])
    if pending.records:
        yield pending


def _load(source: ImageSource, record: Record, image_size) -> LoadedImage | UnreadableImage:
    """The image, or why it cannot be read (returned, not raised, across the thread)."""
    try:
        return source.load(record, image_size)
    except UnreadableImage as error:
        return error


def ordered_map(function: Callable[[T], R], items: Iterable[T], pool: Executor | None,
                window: int) -> Iterator[R]:
    """`map(function, items)`, run in `pool` with at most `window` calls in flight (so memory
    stays bounded however many items there are), yielding results in the items' order."""
    if pool is None:
        yield from map(function, items)
        return
    in_flight: deque[Future] = deque()
    for item in items:
        in_flight.append(pool.submit(function, item))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _check_duplicate(record: Record, image: LoadedImage, first_by_digest: dict[str, str]):
    first = first_by_digest.setdefault(image.digest, record.source)
    if first != record.source:
        raise UnreadableImage(f"duplicate of {first}")
