"""Image sources -> records and batches. `open_source` picks the adapter from `--data`.

A spec is `synthetic[:COUNT]`, `NAME:LOCATION` for a named source (see SOURCE_NAMES), or a
plain path, whose layout is detected when exactly one known layout matches it and read as a
folder per class otherwise. From Python it may also be a path object, or a tuple
`(images, labels)` of arrays in memory (see memory.py). docs/DATA.md describes each layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from report.data.arrays import X_FILE, ArraySource
from report.data.cohen import CohenSource
from report.data.folder import FolderSource
from report.data.inventory import DataInventory, InventoryRow, take_inventory
from report.data.kermany import KermanySource
from report.data.labels import load_label_map
from report.data.memory import MemorySource
from report.data.nih import NihSource
from report.data.radiography import RadiographySource
from report.data.rsna import RsnaSource
from report.data.source import ImageSource, Request
from report.data.split import SPLITS
from report.data.synthetic_source import ConfoundedSyntheticSource, SyntheticSource
from report.data.tutorial import TutorialSource
from report.errors import UserError

__all__ = [
    "SOURCES", "SOURCE_NAMES", "SYNTHETIC_NAMES", "DataInventory", "ImageSource",
    "InventoryRow", "MemorySource", "detect_layouts", "load_label_map", "open_source",
    "take_inventory",
]

# Every source a `--data` spec can name, by name. Detection asks the classes that have
# `matches`, in this order, which is also the order a path's several matches are reported in.
SOURCES: dict[str, type[ImageSource]] = {
    source.name: source
    for source in (
        FolderSource, ArraySource, KermanySource, CohenSource, RadiographySource, RsnaSource,
        NihSource, TutorialSource, SyntheticSource, ConfoundedSyntheticSource,
    )
}
SOURCE_NAMES = tuple(SOURCES)
SYNTHETIC_NAMES = tuple(n for n, source in SOURCES.items() if issubclass(source, SyntheticSource))
# A plain path no layout matches is read as a folder per class.
FALLBACK = FolderSource.name


def open_source(
    spec: str | os.PathLike | tuple,
    class_names: tuple[str, ...],
    split: str,
    label_map: Mapping[str, str | None] | None = None,
    channel_order: str = "bgr",
    follow_symlinks: bool = False,
) -> ImageSource:
    """The source `spec` names: a `--data` spec, a folder, or `(images, labels)` in memory.

    `label_map` (source label -> model class or None) overrides the source's default map;
    `channel_order` is how the `arrays` layout stored colour (arrays in memory are RGB);
    `follow_symlinks` lets symlinks lead out of the data folder (containment.py).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    request = Request(tuple(class_names), split, label_map, channel_order, follow_symlinks)
    if isinstance(spec, tuple):
        return _open_in_memory(spec, request)
    if isinstance(spec, os.PathLike):
        return _open_path(Path(spec), request)  # never a `NAME:...` spec
    if not isinstance(spec, str):
        raise UserError(
            f"data: got a {type(spec).__name__}; pass a --data spec or a folder (a str or a "
            "path), or a tuple (images, labels) of arrays in memory"
        )
    name, colon, location = spec.partition(":")
    source = SOURCES.get(name)
    if source is not None and (colon or source.location_optional):
        return _note_ignored_label_map(source.from_spec(location, request), label_map)
    return _open_path(Path(spec), request)


def _note_ignored_label_map(source: ImageSource, label_map) -> ImageSource:
    """Generated data has the model's class names: a label map given with it would be
    ignored without a word, so the report says so."""
    if label_map and isinstance(source, SyntheticSource):
        source.notes.append(
            f"label map not used: {source.name} data is generated with the model's own class "
            f"names ({len(label_map)} entries ignored)"
        )
    return source


def detect_layouts(path: Path) -> list[str]:
    """Names of the known layouts `path` matches (none for a folder per class)."""
    if not path.is_dir():
        return []
    return [
        name for name, source in SOURCES.items()
        if source.matches is not None and source.matches(path)
    ]


def _open_path(path: Path, request: Request) -> ImageSource:
    path = path.expanduser()
    if path.is_file() and path.name == X_FILE:
        path = path.parent
    return SOURCES[_detect(path)].from_spec(str(path), request)


def _detect(path: Path) -> str:
    found = detect_layouts(path)
    if len(found) > 1:
        raise UserError(
            f"'{path}' matches several data layouts ({', '.join(found)}); say which with "
            f"--data {found[0]}:{path} (or {', '.join(found[1:])})"
        )
    return found[0] if found else FALLBACK


def _open_in_memory(spec: tuple, request: Request) -> MemorySource:
    if len(spec) != 2:
        raise UserError(
            f"data: got a tuple of length {len(spec)}; pass (images, labels), with labels "
            "None for unlabelled images"
        )
    images, labels = spec
    return MemorySource(images, labels, request.class_names, request.split, request.label_map)
