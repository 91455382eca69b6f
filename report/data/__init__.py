"""Image sources -> records and batches. `open_source` picks the adapter from `--data`."""

from __future__ import annotations

from pathlib import Path

from report.data.folder import FolderSource
from report.data.records import ImageSource
from report.data.split import SPLITS
from report.data.synthetic_source import SyntheticSource, parse_count
from report.errors import UserError


def open_source(spec: str, class_names: tuple[str, ...], split: str) -> ImageSource:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticSource(class_names, split, parse_count(spec))
    return FolderSource(Path(spec).expanduser(), class_names, split)
