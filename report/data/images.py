"""Decoding image files into RGB pixels at the model's size, without colour-order surprises."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from report.data.records import LoadedImage, UnreadableImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image_file(path: Path, image_size: tuple[int, int]) -> LoadedImage:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror}") from error
    if not data:
        raise UnreadableImage("empty file")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise UnreadableImage("not a decodable PNG/JPEG image")
    # OpenCV decodes to BGR; everything downstream of here is RGB.
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return LoadedImage(pixels=resize(rgb, image_size), digest=hashlib.sha256(data).hexdigest())


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
