"""What every image source yields: records to read, and the files it had to skip.

The sources themselves derive from `ImageSource` in source.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A lesion box as data sets publish them: x, y, width, height in original pixel coordinates.
Box = tuple[float, float, float, float]


class UnreadableImage(Exception):
    """One image could not be read; the run skips it and reports why."""


@dataclass(frozen=True)
class Record:
    """One image to explain. `label` indexes the model's class names (None when unknown).

    `source` is a file path, or `FILE[index]` for an array row. `boxes` is None when the data
    set says nothing about lesion locations, and () when it says there are none: only the
    second may be scored as "no lesion".
    """

    image_id: str
    source: str
    label: int | None
    source_label: str | None = None  # the data set's own label, before the label map
    dataset: str = ""  # which data set it came from (a combined source has several)
    mask: str | None = None  # lung mask file, same field of view as the image
    boxes: tuple[Box, ...] | None = None


@dataclass(frozen=True)
class Skipped:
    """A file or row that was found but not used, and why."""

    image_id: str
    source: str
    label: int | None
    reason: str
    dataset: str = ""


@dataclass(frozen=True)
class LoadedImage:
    """Pixels as uint8 (H, W, 3) RGB at the model's size, plus a digest of the source bytes."""

    pixels: np.ndarray
    digest: str
    lesion_mask: np.ndarray | None = None
    lung_mask: np.ndarray | None = None


def row_source(array: object, index: int) -> str:
    """The `source` of an array row: `FILE[index]`, or `NAME[index]` for arrays in memory."""
    return f"{array}[{index}]"


def row_index(source: str) -> int:
    """The row a `row_source` string names."""
    return int(source.rsplit("[", 1)[1].rstrip("]"))
