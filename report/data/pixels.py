"""Pixel arrays -> uint8 RGB at the model's size. Plain array helpers: no files, no decoding,
so both the file readers (images.py, dicom.py) and the in-memory source can use them."""

from __future__ import annotations

import cv2
import numpy as np

# Values converted at a time by `stretch`: its float64 temporaries stay near 32 MB however
# large the image, where converting a 49-megapixel film at once took over a gigabyte.
BLOCK_VALUES = 1 << 22


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit and integer data scaled onto 0..255 (PIL's own conversion clips at 255).

    Unsigned 16-bit data is scaled by its type's range, as OpenCV (and so the tutorial) does;
    anything else by its own range."""
    low, high = 0.0, 65535.0
    smallest, largest = values.min(), values.max()  # no float copy of the whole image
    if smallest < 0 or largest > 65535:
        low, high = float(smallest), float(largest)
    return stretch(values, low, high)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of low -> 0 and high -> 255, rounded; a flat image becomes black.

    8- and 16-bit integers go through a lookup table of every value of their type; other
    types are converted BLOCK_VALUES at a time. Either way the result is the same as one
    float64 conversion of the whole array, without its copies."""
    if high == low:
        return np.zeros(values.shape, np.uint8)
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 2:
        return _lookup_table(values.dtype, low, high)[values]
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    for start in range(0, flat.size, BLOCK_VALUES):
        out[start:start + BLOCK_VALUES] = _stretch_block(flat[start:start + BLOCK_VALUES],
                                                         low, high)
    return out.reshape(values.shape)


def _lookup_table(dtype: np.dtype, low: float, high: float) -> np.ndarray:
    """uint8 for every value of an integer type, indexable by the values themselves:
    negative values of a signed type index from the end, where their entries are."""
    info = np.iinfo(dtype)
    levels = np.arange(info.min, info.max + 1, dtype=np.float64)
    table = _stretch_block(levels, low, high)
    return np.roll(table, info.min) if info.min < 0 else table


def _stretch_block(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def resize(pixels: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    height, width = image_size
    if pixels.shape[:2] == (height, width):
        return pixels
    shrinking = pixels.shape[0] > height or pixels.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def resize_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    height, width = image_size
    if mask.shape == (height, width):
        return mask
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)
