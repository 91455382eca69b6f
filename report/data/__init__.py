"""Image sources -> records and batches. `open_source` picks the adapter from `--data`.

A spec is `synthetic[:COUNT]`, `NAME:PATH` for a named layout (see SOURCE_NAMES), or a plain
path, whose layout is detected when exactly one known layout matches it and read as a folder
per class otherwise. docs/DATA.md describes each layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from report.data.arrays import X_FILE, ArraySource, is_arrays_folder
from report.data.cohen import CohenSource, is_cohen_folder
from report.data.folder import FolderSource
from report.data.inventory import DataInventory, InventoryRow, take_inventory
from report.data.kermany import KermanySource, kermany_trees
from report.data.labels import load_label_map
from report.data.nih import NihSource, entries_file
from report.data.radiography import RadiographySource, radiography_root
from report.data.records import ImageSource
from report.data.rsna import RsnaSource, is_rsna_folder
from report.data.split import SPLITS
from report.data.synthetic_source import SyntheticSource, parse_count
from report.data.tutorial import DEFAULT_PER_CLASS, TutorialSource
from report.errors import UserError

__all__ = [
    "SOURCE_NAMES", "SYNTHETIC_NAMES", "DataInventory", "InventoryRow", "detect_layouts",
    "load_label_map", "open_source", "take_inventory",
]

SYNTHETIC_NAMES = ("synthetic", "synthetic-confounded")
# Layouts that a plain path is checked against, in the order they are reported.
DETECTORS = {
    "arrays": is_arrays_folder,
    "kermany": lambda path: bool(kermany_trees(path)),
    "cohen": is_cohen_folder,
    "radiography": lambda path: radiography_root(path) is not None,
    "rsna": is_rsna_folder,
    "nih": lambda path: entries_file(path) is not None,
}
SOURCE_NAMES = ("folder", *DETECTORS, "tutorial")


def open_source(
    spec: str,
    class_names: tuple[str, ...],
    split: str,
    label_map: Mapping[str, str | None] | None = None,
    channel_order: str = "bgr",
) -> ImageSource:
    """The source named by `spec`. `label_map` (source label -> model class or None)
    overrides the source's default map; `channel_order` is how `arrays` stored colour."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    name, colon, rest = spec.partition(":")
    if name in SYNTHETIC_NAMES:
        confounded = name == "synthetic-confounded"
        return SyntheticSource(class_names, split, parse_count(spec), confounded)
    if colon and name in SOURCE_NAMES:
        return _open_named(name, rest, class_names, split, label_map, channel_order)
    path = Path(spec).expanduser()
    if path.is_file() and path.name == X_FILE:
        path = path.parent
    return _open_named(_detect(path), str(path), class_names, split, label_map, channel_order)


def detect_layouts(path: Path) -> list[str]:
    """Names of the known layouts `path` matches (none for a folder per class)."""
    if not path.is_dir():
        return []
    return [name for name, matches in DETECTORS.items() if matches(path)]


def _detect(path: Path) -> str:
    found = detect_layouts(path)
    if len(found) > 1:
        raise UserError(
            f"'{path}' matches several data layouts ({', '.join(found)}); say which with "
            f"--data {found[0]}:{path} (or {', '.join(found[1:])})"
        )
    return found[0] if found else "folder"


def _open_named(name, location, class_names, split, label_map, channel_order) -> ImageSource:
    if name == "tutorial":
        return _open_tutorial(location, class_names, split, label_map)
    root = Path(location).expanduser()
    if name != "folder" and not root.is_dir():
        raise UserError(f"--data {name}:{location}: '{root}' is not a folder")
    if name == "arrays":
        return ArraySource(root, class_names, split, label_map, channel_order)
    sources = {
        "folder": FolderSource,
        "kermany": KermanySource,
        "cohen": CohenSource,
        "radiography": RadiographySource,
        "rsna": RsnaSource,
        "nih": NihSource,
    }
    return sources[name](root, class_names, split, label_map)


def _open_tutorial(location: str, class_names, split, label_map) -> TutorialSource:
    """`tutorial:COHEN_DIR,KERMANY_DIR[,COUNT]`."""
    parts = [part.strip() for part in location.split(",")]
    count = DEFAULT_PER_CLASS
    if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
        count = int(parts.pop())
    if len(parts) != 2 or not all(parts):
        raise UserError(
            f"--data tutorial:{location}: use tutorial:COHEN_DIR,KERMANY_DIR or "
            "tutorial:COHEN_DIR,KERMANY_DIR,COUNT (images per class, default 100)"
        )
    cohen, kermany = (Path(part).expanduser() for part in parts)
    for path in (cohen, kermany):
        if not path.is_dir():
            raise UserError(f"--data tutorial:{location}: '{path}' is not a folder")
    return TutorialSource(cohen, kermany, class_names, split, label_map, count)
