"""Images the caller already holds, as a source: `report.audit(model, (images, labels), ...)`.

images: a numpy array (N, H, W), (N, H, W, 1) or (N, H, W, 3), or a list of (H, W), (H, W, 1)
or (H, W, 3) arrays of any sizes. Raw pixels 0-255: uint8, or integers or floats in that
range; uint16 and int16 are scaled as 16-bit files are. Three channels are RGB. Each image is
made RGB and resized only when it is loaded, so the caller's arrays are read in place.

labels: None (unlabelled), class indices, class names (through the label map, like any data
set's labels) or one-hot rows, one per image.

Every mistake in either is a UserError found when the source is opened, never mid-run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from report.data.arrays import one_hot_index
from report.data.labels import LabelMap
from report.data.pixels import gray_to_rgb, resize, scale_to_uint8
from report.data.records import LoadedImage, Record, row_index, row_source
from report.data.source import ImageSource, images
from report.errors import UserError
from report.i18n import _

IMAGE_SHAPES = "(H, W), (H, W, 1) or (H, W, 3)"
SCALED_FIX = 'pass raw 0-255 pixels, e.g. (images * 255).astype("uint8")'
# A row's label: a model class index, a name still to resolve, or None (unlabelled).
RowLabel = int | str | None


class MemorySource(ImageSource):
    """One record per image, in the caller's order. The split does not apply: the caller
    already chose these images, and a model's train/test split of them is not ours to redo."""

    name = "memory"
    keeps_duplicates = True  # the caller's rows stay as given, repeats included
    applies_split = False

    def __init__(
        self, images, labels, class_names: tuple[str, ...], split: str,
        label_map: LabelMap | None = None,
    ):
        self._images = image_rows(images)
        self._labels = labels
        super().__init__(class_names, split, label_map)

    def list_records(self) -> None:
        labels = row_labels(self._labels, len(self._images), self.class_names)
        for index, label in enumerate(labels):
            key, source = f"image-{index:05d}", row_source(self.name, index)
            if isinstance(label, str):
                self._add_named(key, source, index, label)
            else:
                class_name = None if label is None else self.class_names[label]
                self.keep(key, source, label, class_name)
        self.notes.append(
            f"in-memory arrays: all {len(self._images)} images used, in the order given; "
            f"the split ({self.split}) applies only to data read from disk"
        )

    def _add_named(self, key: str, source: str, index: int, name: str) -> None:
        # A name nothing knows is a typo; only names the label map sends to None are skipped.
        if not self.resolve.knows(name):
            raise UserError(
                f"labels[{index}] is '{name}', which is not one of class_names "
                f"({', '.join(self.class_names)}); use those names, or pass a label_map that "
                f"maps '{name}' to one of them (or to None to skip it)"
            )
        self.add(key, source, name)

    def describe(self) -> str:
        return _("arrays in memory (%(given)s, all used; no split): %(found)s") % {
            "given": images(len(self._images)), "found": images(len(self.records))}

    def load(self, record: Record, image_size: tuple[int, int]) -> LoadedImage:
        stored = np.asarray(self._images[row_index(record.source)])
        rgb = np.ascontiguousarray(_rgb(_to_uint8(stored)))
        return LoadedImage(
            pixels=resize(rgb, image_size),
            digest=hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest(),
        )


# ------------------------------------------------------------------------------------ images


def image_rows(images) -> Sequence[np.ndarray]:
    """The caller's images, checked, as rows that index without copying."""
    if isinstance(images, list | tuple):
        rows = [np.asarray(image) for image in images]
        for index, row in enumerate(rows):
            if not _is_image_shape(row.shape):
                raise UserError(
                    f"images[{index}] has shape {row.shape}; each image must be {IMAGE_SHAPES}"
                )
    else:
        rows = np.asarray(images)
        if rows.ndim not in (3, 4) or not _is_image_shape(rows.shape[1:]):
            raise UserError(
                f"images has shape {rows.shape}; pass an array (N, H, W), (N, H, W, 1) or "
                f"(N, H, W, 3), or a list of {IMAGE_SHAPES} arrays"
            )
    if len(rows) == 0:
        raise UserError("images is empty; pass at least one image")
    for index, row in enumerate(rows):
        _check_values(row, f"images[{index}]")
    return rows


def _is_image_shape(shape: tuple[int, ...]) -> bool:
    channels_ok = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))
    return channels_ok and min(shape[:2]) > 0


def _check_values(row: np.ndarray, what: str) -> None:
    """Integers are read as raw pixels whatever their range; floats must look like them."""
    if row.dtype.kind not in "uif":
        raise UserError(f"{what} holds {row.dtype} values; pass numbers, raw 0-255 pixels")
    if row.dtype.kind != "f":
        return
    if not np.isfinite(row).all():
        raise UserError(f"{what} has NaN or infinite values; pass finite raw 0-255 pixels")
    low, high = float(row.min()), float(row.max())
    # An all-black image reads the same on either scale, so only 0 < max <= 1 is refused.
    if 0 < high <= 1.0:
        raise UserError(f"{what} is floats up to {high:g}, already scaled to 0..1; {SCALED_FIX}")
    if low < 0 or high > 255:
        raise UserError(
            f"{what} has values from {low:g} to {high:g}, outside 0..255; pass raw 0-255 "
            "pixels, or 16-bit data as uint16"
        )


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind == "f":
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)  # checked to be 0..255
    if pixels.dtype.itemsize == 2 or pixels.min() < 0 or pixels.max() > 255:
        return scale_to_uint8(pixels)  # 16-bit (or wider) data, scaled as 16-bit files are
    return pixels.astype(np.uint8)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    return gray_to_rgb(pixels.reshape(pixels.shape[:2]))


# ------------------------------------------------------------------------------------ labels


def row_labels(labels, count: int, class_names: tuple[str, ...]) -> list[RowLabel]:
    """One label per image: a class index, a class name (resolved by the source), or None."""
    if labels is None:
        return [None] * count
    array = _label_array(labels)
    if array.ndim == 0 or len(array) != count:
        size = "a single value" if array.ndim == 0 else f"{len(array)} entries"
        raise UserError(
            f"labels has {size} for {count} images; pass one label per image "
            "(or None for unlabelled images)"
        )
    if array.ndim == 2 and array.dtype.kind in "iufb":
        return _one_hot_labels(array, class_names)
    if array.ndim == 1 and _are_names(array):
        return [str(name) for name in array]
    if array.ndim == 1 and _are_whole_numbers(array):
        return _index_labels(array.astype(np.int64), class_names)
    raise UserError(
        f"labels holds {array.dtype} values of shape {array.shape}; pass class indices, "
        "class names or one-hot rows, one per image"
    )


def _label_array(labels) -> np.ndarray:
    # numpy would turn [0, "NORMAL"] into two strings, and the 0 into an unknown name.
    if isinstance(labels, list | tuple) and len({isinstance(x, str) for x in labels}) > 1:
        raise UserError("labels mixes class names and other values; pass one kind for all")
    try:
        return np.asarray(labels)
    except ValueError as error:  # ragged nesting
        raise UserError(
            f"labels cannot be read as an array ({error}); pass class indices, class names "
            "or one-hot rows, one per image"
        ) from error


def _are_names(array: np.ndarray) -> bool:
    if array.dtype.kind in "US":
        return True
    return array.dtype.kind == "O" and all(isinstance(value, str) for value in array)


def _are_whole_numbers(array: np.ndarray) -> bool:
    if array.dtype.kind in "iu":
        return True
    return array.dtype.kind == "f" and bool(np.all(np.isfinite(array) & (array % 1 == 0)))


def _index_labels(indices: np.ndarray, class_names: tuple[str, ...]) -> list[RowLabel]:
    bad = np.flatnonzero((indices < 0) | (indices >= len(class_names)))
    if len(bad):
        raise UserError(
            f"labels[{bad[0]}] is {indices[bad[0]]}, not a class index 0..{len(class_names) - 1};"
            f" pass indices into class_names ({', '.join(class_names)}) or class names"
        )
    return [int(index) for index in indices]


def _one_hot_labels(rows: np.ndarray, class_names: tuple[str, ...]) -> list[RowLabel]:
    if rows.shape[1] != len(class_names):
        raise UserError(
            f"labels has {rows.shape[1]} one-hot columns for {len(class_names)} classes "
            f"({', '.join(class_names)}); pass one column per class, in class_names order"
        )
    indices = [one_hot_index(row) for row in rows]
    if None in indices:
        first = indices.index(None)
        raise UserError(
            f"labels[{first}] is not a one-hot row ({rows[first].tolist()}); pass exactly one "
            "1 per row, or class indices"
        )
    return indices
