"""What every image source yields: records to read, and the files it had to skip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class UnreadableImage(Exception):
    """One image could not be read; the run skips it and reports why."""


@dataclass(frozen=True)
class Record:
    """One image to explain. `label` indexes the model's class names (None when unknown)."""

    image_id: str
    source: str
    label: int | None


@dataclass(frozen=True)
class Skipped:
    image_id: str
    source: str
    label: int | None
    reason: str


@dataclass(frozen=True)
class LoadedImage:
    """Pixels as uint8 (H, W, 3) RGB at the model's size, plus a digest of the source bytes."""

    pixels: np.ndarray
    digest: str
    lesion_mask: np.ndarray | None = None
    lung_mask: np.ndarray | None = None


class ImageSource(Protocol):
    """A data source: a description, the records of the chosen split, and a way to read one."""

    description: str
    records: list[Record]

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        """Read one record; raises UnreadableImage when the file cannot be decoded."""
        ...
