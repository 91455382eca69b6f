"""DICOM files -> 8-bit RGB, the way a radiology viewer would first show them.

Reading the header (read_dataset, frame_size) and decoding the pixels (to_rgb) are separate
steps, so images.py can refuse an oversized film in between.

Order matters and follows the standard's display pipeline: stored values -> modality LUT
(rescale slope/intercept) -> VOI LUT or window -> 0..255 -> inverted for MONOCHROME1, whose
low values mean white.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder

from report.data.pixels import BLOCK_VALUES, gray_to_rgb, stretch
from report.data.records import UnreadableImage


def read_dataset(data: bytes) -> pydicom.Dataset:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as error:
        raise UnreadableImage(f"not a readable DICOM file: {error}") from error
    if "PixelData" not in dataset:
        raise UnreadableImage("DICOM file has no pixel data")
    return dataset


def frame_size(dataset: pydicom.Dataset) -> tuple[int, int]:
    """Width and height from the header, known before any pixel data is decoded."""
    return _header_int(dataset, "Columns", 0), _header_int(dataset, "Rows", 0)


def sample_layout(dataset: pydicom.Dataset) -> tuple[int, int, int]:
    """Frames, samples per pixel and bytes per sample, from the header."""
    frames = max(_header_int(dataset, "NumberOfFrames", 1), 1)
    samples = max(_header_int(dataset, "SamplesPerPixel", 1), 1)
    bits = max(_header_int(dataset, "BitsAllocated", 16), 1)
    return frames, samples, (bits + 7) // 8


def _header_int(dataset: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        value = dataset.get(keyword, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError) as error:
        raise UnreadableImage(f"DICOM header {keyword} is not a number: {error}") from error


def to_rgb(dataset: pydicom.Dataset) -> np.ndarray:
    """A read DICOM file -> uint8 (H, W, 3) RGB of its first frame."""
    pixels = _first_frame(_pixel_array(dataset), dataset)
    if int(dataset.get("SamplesPerPixel", 1)) == 3:
        return _colour_to_uint8(pixels, dataset)
    gray = _gray_to_uint8(pixels, dataset)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 255 - gray
    return gray_to_rgb(gray)


def _pixel_array(dataset: pydicom.Dataset) -> np.ndarray:
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        decoder = _decoder(syntax)
        if decoder is None or not decoder.is_available:
            needs = "; ".join(getattr(decoder, "missing_dependencies", [])) or "no known plugin"
            raise UnreadableImage(
                f"DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded with the "
                f"installed packages (needs: {needs})"
            )
    try:
        # Only the first frame is decoded: a multi-frame file's others are never shown.
        dataset.pixel_array_options(index=0)
        return dataset.pixel_array
    except Exception as error:  # decoders raise many types; the file is what is wrong
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise UnreadableImage(f"cannot decode DICOM pixel data ({name}): {error}") from error


def _decoder(syntax):
    try:
        return get_decoder(syntax)
    except NotImplementedError:
        return None


def _first_frame(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Radiographs have one frame; of a multi-frame file only the first is decoded (see
    _pixel_array), and kept should a decoder still return them all."""
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    return pixels[0] if pixels.ndim > (3 if samples > 1 else 2) else pixels


def _gray_to_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """The display pipeline, a block of rows at a time: pydicom's LUT and window functions
    return float64 copies, which for a whole 50-megapixel film took over a gigabyte."""
    blocks = [slice(start, start + _rows_per_block(pixels))
              for start in range(0, pixels.shape[0], _rows_per_block(pixels))]
    voi_range = _voi_output_range(dataset)
    if voi_range is None:
        # No VOI in the file: show the data's own range, as viewers do.
        low, high = _modality_range(pixels, dataset, blocks)
    gray = np.empty(pixels.shape, np.uint8)
    for rows in blocks:
        values = apply_modality_lut(pixels[rows], dataset)
        if voi_range is None:
            gray[rows] = stretch(values, low, high)
        elif dataset.get("VOILUTSequence"):
            gray[rows] = stretch(apply_voi(values, dataset), *voi_range)
        else:
            gray[rows] = stretch(apply_windowing(values, dataset), *voi_range)
    return gray


def _rows_per_block(pixels: np.ndarray) -> int:
    return max(1, BLOCK_VALUES // max(1, pixels.shape[1] if pixels.ndim > 1 else 1))


def _modality_range(pixels: np.ndarray, dataset: pydicom.Dataset, blocks: list[slice]
                    ) -> tuple[float, float]:
    lows, highs = [], []
    for rows in blocks:
        values = apply_modality_lut(pixels[rows], dataset)
        lows.append(float(values.min()))
        highs.append(float(values.max()))
    return min(lows), max(highs)


def _voi_output_range(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """The range the VOI step maps onto (PS3.3 C.11.2), which is what becomes 0..255.

    pydicom's windowing writes into the range of the data type (after any rescale), not
    into 0..1, so the range is needed to scale >8-bit data correctly."""
    if dataset.get("VOILUTSequence"):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    bits = int(dataset.get("BitsStored", 8))
    if dataset.get("ModalityLUTSequence"):
        bits = int(dataset.ModalityLUTSequence[0].LUTDescriptor[2])
        low, high = 0.0, float(2**bits - 1)
    elif int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        # As pydicom does; a negative slope swaps the ends, and so it should the display.
        low, high = (low * float(slope) + float(intercept), high * float(slope) + float(intercept))
    return low, high


def _colour_to_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Colour DICOM (secondary captures): pydicom already converts YBR to RGB."""
    bits = int(dataset.get("BitsStored", 8))
    if pixels.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(pixels)
    return stretch(pixels, 0.0, float(2**bits - 1))
