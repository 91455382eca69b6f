"""Stream a source's records as fixed-size batches of decoded images."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from report.data.records import LoadedImage, Record, Skipped, UnreadableImage
from report.data.source import ImageSource


@dataclass(frozen=True)
class Batch:
    records: list[Record]
    images: list[LoadedImage]

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
) -> Iterator[Batch]:
    """Unreadable images go to `skipped` with their reason; batches hold only readable ones.

    A file with the same bytes as an earlier one is skipped too ("duplicate of <first>"):
    the digest is computed anyway, and a duplicate would count twice in every metric.
    Sources whose records must stay as they are (the tutorial's arrays, arrays in memory) set
    `keeps_duplicates = True`.
    """
    first_by_digest: dict[str, str] = {}
    dedupe = not source.keeps_duplicates
    pending_records: list[Record] = []
    pending_images: list[LoadedImage] = []
    for record in records:
        try:
            image = source.load(record, image_size)
            if dedupe:
                _check_duplicate(record, image, first_by_digest)
        except UnreadableImage as error:
            skipped.append(
                Skipped(record.image_id, record.source, record.label, str(error), record.dataset)
            )
            continue
        pending_records.append(record)
        pending_images.append(image)
        if len(pending_records) == batch_size:
            yield Batch(pending_records, pending_images)
            pending_records, pending_images = [], []
    if pending_records:
        yield Batch(pending_records, pending_images)


def _check_duplicate(record: Record, image: LoadedImage, first_by_digest: dict[str, str]):
    first = first_by_digest.setdefault(image.digest, record.source)
    if first != record.source:
        raise UnreadableImage(f"duplicate of {first}")
