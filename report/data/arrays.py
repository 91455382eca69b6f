"""The tutorial's arrays: `X_Train.npy` (uint8 images as cv2 read them, BGR) and `Y_Train.npy`
(one-hot, in the order COVID-19, NORMAL, OTHER_INFECTION), split as the tutorial split them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from report.data.containment import DataFolder, printable
from report.data.labels import LabelMap
from report.data.pixels import resize
from report.data.records import LoadedImage, Record, row_index, row_source
from report.data.source import Request, RootedSource
from report.data.split import split_indices
from report.errors import UserError

X_FILE, Y_FILE = "X_Train.npy", "Y_Train.npy"
ARRAY_CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")
CHANNEL_ORDERS = ("bgr", "rgb")


def is_arrays_folder(path: Path) -> bool:
    return (path / X_FILE).is_file() and (path / Y_FILE).is_file()


class ArraySource(RootedSource):
    """Rows of memory-mapped arrays: only the rows being explained are ever in memory.

    Records keep the order `train_test_split` gives, so `--split test` yields the tutorial's
    X_test in its own order. Duplicate rows are kept for the same reason.
    """

    name = "arrays"
    keeps_duplicates = True

    def __init__(
        self, root: Path, class_names: tuple[str, ...], split: str,
        label_map: LabelMap | None = None, channel_order: str = "bgr",
        follow_symlinks: bool = False,
    ):
        if channel_order not in CHANNEL_ORDERS:
            raise UserError(f"channel order '{channel_order}': use one of {CHANNEL_ORDERS}")
        self.channel_order = channel_order
        super().__init__(root, class_names, split, label_map, follow_symlinks)

    matches = staticmethod(is_arrays_folder)

    @classmethod
    def find_root(cls, path: Path) -> Path:
        return path  # _open_arrays says what is wrong with the files, more precisely

    @classmethod
    def from_spec(cls, location: str, request: Request) -> ArraySource:
        root = cls.named_folder(location)
        return cls(root, request.class_names, request.split, request.label_map,
                   request.channel_order, request.follow_symlinks)

    def list_records(self) -> None:
        self.x_path = self.root / X_FILE
        self._x, labels = _open_arrays(self.root, self.folder)
        for index in split_indices(len(labels), self.split):
            self._add(int(index), labels[index])
        self.notes.append(
            f"arrays read as {self.channel_order.upper()} and shown as RGB; rows in the order "
            "of train_test_split(test_size=0.2, random_state=40)"
        )

    def _add(self, index: int, row: np.ndarray) -> None:
        key, source = f"arrays-{index:05d}", row_source(self.x_path, index)
        class_index = one_hot_index(row)
        if class_index is None:
            self.skip(key, source, None, "label row is not one-hot")
        else:
            self.add(key, source, ARRAY_CLASSES[class_index])

    def refusal(self, path: str) -> str | None:
        return None  # a row of X (`FILE[index]`), not a file: X was checked on opening

    def listing_refusal(self, path: str) -> str | None:
        return None

    def file_size(self, record: Record) -> int | None:
        return None

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        stored = np.asarray(self._x[row_index(record.source)])
        pixels = stored[..., ::-1] if self.channel_order == "bgr" else stored
        return LoadedImage(
            pixels=resize(np.ascontiguousarray(pixels), image_size),
            digest=hashlib.sha256(stored.tobytes()).hexdigest(),
        )


def _open_arrays(root: Path, folder: DataFolder) -> tuple[np.ndarray, np.ndarray]:
    """X memory-mapped (it can be gigabytes, and is never checked for size); Y is small and
    read whole, so it is size-checked first. Both must be in the data folder."""
    x_path = root / X_FILE
    if folder.refusal(x_path):
        raise UserError(f"'{printable(str(x_path))}' not read: {folder.refusal(x_path)}")
    y_path = folder.index_file(root / Y_FILE, "label array")
    try:
        x = np.load(x_path, mmap_mode="r", allow_pickle=False)
        y = np.load(y_path, allow_pickle=False)
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


def one_hot_index(row: np.ndarray) -> int | None:
    """The column of the single 1 in a label row, or None when the row is not one-hot."""
    hot = np.flatnonzero(row)
    if len(hot) != 1 or row[hot[0]] != 1:
        return None
    return int(hot[0])
