"""Pixel arrays -> uint8 RGB at the model's size. Plain array helpers: no files, no decoding,
so both the file readers (images.py, dicom.py) and the in-memory source can use them."""

from __future__ import annotations

import cv2
import numpy as np


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit and integer data scaled onto 0..255 (PIL's own conversion clips at 255).

    Unsigned 16-bit data is scaled by its type's range, as OpenCV (and so the tutorial) does;
    anything else by its own range."""
    values = values.astype(np.float64)
    low, high = 0.0, 65535.0
    if values.min() < 0 or values.max() > 65535:
        low, high = float(values.min()), float(values.max())
    return stretch(values, low, high)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of low -> 0 and high -> 255, rounded; a flat image becomes black."""
    if high == low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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
