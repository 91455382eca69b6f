"""Decoding image files into RGB pixels at the model's size, without colour-order surprises.

PIL decodes (it knows image modes, EXIF orientation and 16-bit data); OpenCV only resizes,
which is colour-order agnostic. Every decoding failure becomes UnreadableImage, so one bad
file is skipped with a reason and never ends a run.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from report.data import containment
from report.data.pixels import gray_to_rgb, resize, resize_mask, scale_to_uint8
from report.data.records import Box, LoadedImage, UnreadableImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
# Images larger than this are skipped before decoding: a 10,000 x 10,000 RGB film would take
# 300 MB to decode, and no chest X-ray needs more than a few megapixels. Change it here.
MAX_PIXELS = 50_000_000
# What decoding may hold, pixels x frames x samples x bytes per sample, checked from the
# header before decoding: 50 megapixels of 32-bit grey (PIL's "I"/"F") or RGBA fit; a
# multi-frame DICOM whose frames together exceed it is refused, though only its first
# frame would be shown. Change it here.
MAX_DECODED_BYTES = 256 * 2**20
# Bytes per pixel as PIL holds each mode in memory (RGB takes four, like RGBA).
PIL_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "RGB": 4, "RGBA": 4, "CMYK": 4,
                  "YCbCr": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}
NOT_DECODABLE = "not a decodable PNG/JPEG image"
PIL_FORMATS = ("PNG", "JPEG")


def read_image_file(
    path: Path,
    image_size: tuple[int, int],
    boxes: tuple[Box, ...] | None = None,
) -> LoadedImage:
    """One file at the model's size, with a lesion mask drawn from `boxes` (in the
    original image's pixels) where the data set has them."""
    data = read_bytes(path)
    pixels = decode_pixels(data, path.suffix)
    lesion = None if boxes is None else boxes_mask(boxes, pixels.shape[:2], image_size)
    return LoadedImage(
        pixels=as_rgb(resize(pixels, image_size)),
        digest=hashlib.sha256(data).hexdigest(),
        lesion_mask=lesion,
    )


def read_bytes(path: Path) -> bytes:
    """The file's bytes, after stat says it is a regular file within the size limit; never
    more than the limit, even if the file grows in between."""
    refusal = containment.file_refusal(path)
    if refusal is not None:
        raise UnreadableImage(refusal)
    try:
        with path.open("rb") as handle:
            data = handle.read(containment.MAX_FILE_BYTES + 1)
    except FileNotFoundError as error:
        raise UnreadableImage("missing file") from error
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror}") from error
    if not data:
        raise UnreadableImage("empty file")
    if len(data) > containment.MAX_FILE_BYTES:
        raise UnreadableImage(containment.file_refusal(path) or "file grew past the limit")
    return data


def decode_image(data: bytes, suffix: str = "") -> np.ndarray:
    """Bytes -> uint8 (H, W, 3) RGB at the file's own size."""
    return as_rgb(decode_pixels(data, suffix))


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return gray_to_rgb(pixels) if pixels.ndim == 2 else pixels


def decode_pixels(data: bytes, suffix: str = "") -> np.ndarray:
    """Bytes -> uint8 (H, W) grey or (H, W, 3) RGB at the file's own size. Grey films stay
    one channel until they are resized: a third of the work on a 1024 px film."""
    if is_dicom(data, suffix):
        return _decode_dicom(data)
    try:
        with warnings.catch_warnings():
            # Our MAX_PIXELS check below replaces PIL's own decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Only the formats the product reads: whether an odd file is identified must not
            # depend on which of PIL's other plugins some library happened to load.
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError as error:
        raise UnreadableImage(NOT_DECODABLE) from error
    except Image.DecompressionBombError as error:
        # Only past PIL's own limit (twice Image.MAX_IMAGE_PIXELS), far above MAX_PIXELS.
        raise UnreadableImage(f"image over PIL's decompression-bomb limit ({error})") from error
    except Exception as error:  # e.g. a JPEG cut off inside its headers
        raise UnreadableImage(f"truncated or corrupt image: {error}") from error
    check_size(*image.size)
    check_decoded_bytes(*image.size, bytes_per_sample=PIL_MODE_BYTES.get(image.mode, 4))
    try:
        ImageOps.exif_transpose(image, in_place=True)  # a copy of the film when not in place
        return to_pixels(image)
    except Exception as error:  # a truncated or corrupt file can fail in many ways
        raise UnreadableImage(f"truncated or corrupt image: {error}") from error


def _decode_dicom(data: bytes) -> np.ndarray:
    """The size guard runs between reading the header and decoding the pixels, as for PNG."""
    from report.data import dicom  # pydicom is only needed for DICOM

    dataset = dicom.read_dataset(data)
    width, height = dicom.frame_size(dataset)
    check_size(width, height)
    check_decoded_bytes(width, height, *dicom.sample_layout(dataset))
    return dicom.to_rgb(dataset)


def is_dicom(data: bytes, suffix: str = "") -> bool:
    """DICOM files carry 'DICM' after a 128-byte preamble; old ones only have the suffix."""
    return data[128:132] == b"DICM" or suffix.lower() == ".dcm"


def check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise UnreadableImage(
            f"image over the {MAX_PIXELS / 1e6:g}-megapixel limit "
            f"({width}x{height} = {width * height / 1e6:g} megapixels; "
            "raise report.data.images.MAX_PIXELS to read it)"
        )


def check_decoded_bytes(
    width: int, height: int, frames: int = 1, samples: int = 1, bytes_per_sample: int = 1
) -> None:
    total = width * height * frames * samples * bytes_per_sample
    if total > MAX_DECODED_BYTES:
        raise UnreadableImage(
            f"image over the {MAX_DECODED_BYTES / 2**20:g} MiB decoding limit ({width}x{height}"
            f" x {frames} frame(s) x {samples} sample(s) x {bytes_per_sample} byte(s) = "
            f"{total / 2**20:.0f} MiB; raise report.data.images.MAX_DECODED_BYTES to read it)"
        )


def to_pixels(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 grey (H, W) for grey modes, else RGB (H, W, 3); 16- and
    32-bit images are closed once copied out. Alpha is dropped, not composited: on an
    X-ray, blending onto black or white would invent density where the film has none."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image)
        image.close()  # PIL's own copy is not needed while this one is scaled (98 MB at 49 MP)
        return scale_to_uint8(values)
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("P", "PA"):
        # Palette images may carry transparency; going through RGBA keeps PIL from warning.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")  # a copy; an RGB film is not copied for nothing
    return np.array(image, dtype=np.uint8)


def read_mask(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """A mask image (white = inside) as bool at the model's size."""
    gray = decode_image(read_bytes(path), path.suffix)[:, :, 0]
    return resize_mask(gray > 127, image_size)


def boxes_mask(
    boxes: tuple[Box, ...], original: tuple[int, int], image_size: tuple[int, int]
) -> np.ndarray:
    """Boxes given in the original image's pixels, drawn on the resized image.

    Resizing stretches each axis by its own factor, so each box is scaled the same way; a
    pixel is inside when its centre is, and every box keeps at least one pixel."""
    height, width = image_size
    scale_y, scale_x = height / original[0], width / original[1]
    mask = np.zeros(image_size, bool)
    for x, y, w, h in boxes:
        cols = _span(x * scale_x, (x + w) * scale_x, width)
        rows = _span(y * scale_y, (y + h) * scale_y, height)
        mask[rows, cols] = True
    return mask


def _span(start: float, stop: float, limit: int) -> slice:
    first = int(np.ceil(start - 0.5))
    last = int(np.ceil(stop - 0.5))
    first = min(max(first, 0), limit - 1)
    return slice(first, min(max(last, first + 1), limit))
