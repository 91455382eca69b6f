"""Shared pieces of the file-based sources: listing files, collecting records and skips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from report.data.ids import safe_id, unique_id
from report.data.images import IMAGE_SUFFIXES, read_image_file, read_mask
from report.data.labels import LabelResolver, unmapped_reason
from report.data.records import Box, LoadedImage, Record, Skipped, UnreadableImage
from report.data.split import split_indices

# Written by macOS into zips and folders; never images, whatever their names say.
JUNK_FOLDERS = ("__MACOSX",)


def is_junk(path: Path) -> bool:
    """Hidden files (.DS_Store, macOS "._x.png" forks) and anything under __MACOSX/."""
    return path.name.startswith(".") or any(part in JUNK_FOLDERS for part in path.parts)


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under `folder`, sorted so every run lists them in the same order, and
    the number of other files (hidden, macOS metadata, not an image suffix) left out."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not is_junk(p)]
    return images, len(files) - len(images)


def left_out_note(count: int, where: str) -> list[str]:
    if not count:
        return []
    suffixes = "/".join(IMAGE_SUFFIXES)
    return [f"{count} file(s) in {where} are hidden or not {suffixes} and were not read"]


def in_split(items: Sequence, split: str, keep_order: bool = False) -> list:
    """The items of `split` (see split.py); sorted back into listing order unless the
    caller needs the order train_test_split returns."""
    indices = split_indices(len(items), split)
    return [items[i] for i in (indices if keep_order else sorted(indices))]


def find_child(folder: Path, name: str) -> Path | None:
    """A child of `folder` named `name`, ignoring case (data sets differ in spelling)."""
    exact = folder / name
    if exact.exists():
        return exact
    if not folder.is_dir():
        return None
    matches = [p for p in sorted(folder.iterdir()) if p.name.lower() == name.lower()]
    return matches[0] if matches else None


class Listing:
    """Collects one source's records and skips, resolving labels and keeping ids unique."""

    def __init__(self, dataset: str, resolver: LabelResolver):
        self.dataset = dataset
        self.resolve = resolver
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        self._ids: set[str] = set()

    def add(
        self,
        key: str,
        source: str,
        source_label: str,
        mask: str | None = None,
        boxes: tuple[Box, ...] | None = None,
        label: int | None = None,
    ) -> Record | None:
        """A record, or a skip when the label maps to no model class. `label` is given by
        sources that resolve labels themselves (multi-label NIH entries)."""
        label = self.resolve(source_label) if label is None else label
        if label is None:
            self.skip(key, source, None, unmapped_reason(source_label))
            return None
        record = Record(self._id(key), source, label, source_label, self.dataset, mask, boxes)
        self.records.append(record)
        return record

    def skip(self, key: str, source: str, label: int | None, reason: str) -> None:
        self.skipped.append(Skipped(self._id(key), source, label, reason, self.dataset))

    def _id(self, key: str) -> str:
        return unique_id(safe_id(key), self._ids)


class FileSource:
    """Base of the sources whose records are files: records, skips, notes and `load`."""

    name = "files"
    description = ""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        self.notes: list[str] = []

    def take(self, listing: Listing) -> None:
        self.records, self.skipped = listing.records, listing.skipped

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        image = read_image_file(Path(record.source), image_size, record.boxes)
        if not record.mask:
            return image
        try:
            lungs = read_mask(Path(record.mask), image_size)
        except UnreadableImage as error:
            # The image is still good; only the shortcut check loses its mask for it.
            self.notes.append(f"lung mask {record.mask} not used: {error}")
            return image
        return replace(image, lung_mask=lungs)

    def describe(self, root: Path, split: str, extra: str = "") -> str:
        where = "all images" if split == "all" else f"{split} split"
        extra = f", {extra}" if extra else ""
        return f"{self.name} {root} ({where}{extra}): {len(self.records)} images"
