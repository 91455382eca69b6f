"""Image sources -> records and batches. `open_source` picks the adapter from `--data`."""

from __future__ import annotations

from pathlib import Path

from report.data.folder import FolderSource
from report.data.records import ImageSource
from report.data.split import SPLITS
from report.data.synthetic_source import SyntheticSource, parse_count
from report.errors import UserError

SYNTHETIC_NAMES = ("synthetic", "synthetic-confounded")


def open_source(spec: str, class_names: tuple[str, ...], split: str) -> ImageSource:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    name = spec.partition(":")[0]
    if name in SYNTHETIC_NAMES:
        confounded = name == "synthetic-confounded"
        return SyntheticSource(class_names, split, parse_count(spec), confounded)
    return FolderSource(Path(spec).expanduser(), class_names, split)
