"""The tutorial's arrays: `X_Train.npy` (uint8 images as cv2 read them, BGR) and `Y_Train.npy`
(one-hot, in the order COVID-19, NORMAL, OTHER_INFECTION), split as the tutorial split them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from report.data.images import resize
from report.data.labels import LabelResolver, unmapped_reason, unused_note
from report.data.records import LoadedImage, Record, Skipped
from report.data.split import split_indices
from report.errors import UserError

X_FILE, Y_FILE = "X_Train.npy", "Y_Train.npy"
ARRAY_CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")
CHANNEL_ORDERS = ("bgr", "rgb")


def is_arrays_folder(path: Path) -> bool:
    return (path / X_FILE).is_file() and (path / Y_FILE).is_file()


class ArraySource:
    """Rows of memory-mapped arrays: only the rows being explained are ever in memory.

    Records keep the order `train_test_split` gives, so `--split test` yields the tutorial's
    X_test in its own order. Duplicate rows are kept for the same reason.
    """

    name = "arrays"
    keeps_duplicates = True

    def __init__(
        self,
        root: Path,
        class_names: tuple[str, ...],
        split: str,
        label_map: Mapping[str, str | None] | None = None,
        channel_order: str = "bgr",
    ):
        if channel_order not in CHANNEL_ORDERS:
            raise UserError(f"channel order '{channel_order}': use one of {CHANNEL_ORDERS}")
        self.root, self.channel_order = Path(root), channel_order
        self.x_path = self.root / X_FILE
        self._x, labels = _open_arrays(self.root)
        resolver = LabelResolver(class_names, {}, label_map)
        self.records: list[Record] = []
        self.skipped: list[Skipped] = []
        for index in split_indices(len(labels), split):
            self._add(int(index), labels[index], resolver)
        self.notes = unused_note(resolver) + [
            f"arrays read as {channel_order.upper()} and shown as RGB; rows in the order of "
            "train_test_split(test_size=0.2, random_state=40)"
        ]
        where = "all rows" if split == "all" else f"{split} split"
        self.description = f"arrays {self.root} ({where}): {len(self.records)} images"

    def _add(self, index: int, row: np.ndarray, resolver: LabelResolver) -> None:
        image_id, source = f"arrays-{index:05d}", f"{self.x_path}[{index}]"
        class_index = _one_hot_index(row)
        if class_index is None:
            self.skipped.append(Skipped(image_id, source, None, "label row is not one-hot",
                                        self.name))
            return
        source_label = ARRAY_CLASSES[class_index]
        label = resolver(source_label)
        if label is None:
            self.skipped.append(
                Skipped(image_id, source, None, unmapped_reason(source_label), self.name)
            )
            return
        self.records.append(Record(image_id, source, label, source_label, self.name))

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        index = int(record.source.rsplit("[", 1)[1].rstrip("]"))
        stored = np.asarray(self._x[index])
        pixels = stored[..., ::-1] if self.channel_order == "bgr" else stored
        return LoadedImage(
            pixels=resize(np.ascontiguousarray(pixels), image_size),
            digest=hashlib.sha256(stored.tobytes()).hexdigest(),
        )


def _open_arrays(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """X memory-mapped (it can be gigabytes); Y is small and read whole."""
    try:
        x = np.load(root / X_FILE, mmap_mode="r")
        y = np.load(root / Y_FILE)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the arrays in '{root}': {error}") from error
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(
            f"{root / X_FILE} must be uint8 images of shape (N, H, W, 3); "
            f"it is {x.dtype} {x.shape}"
        )
    if len(y) != len(x) or y.ndim != 2 or y.shape[1] != len(ARRAY_CLASSES):
        raise UserError(
            f"{root / Y_FILE} must be one-hot rows of shape ({len(x)}, {len(ARRAY_CLASSES)}) "
            f"in the order {', '.join(ARRAY_CLASSES)}; it is {y.shape}"
        )
    return x, y


def _one_hot_index(row: np.ndarray) -> int | None:
    hot = np.flatnonzero(row)
    if len(hot) != 1 or row[hot[0]] != 1:
        return None
    return int(hot[0])
