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

from report.data.pixels import gray_to_rgb, stretch
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
    return int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))


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
    """Radiographs have one frame; of a multi-frame file only the first is shown."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return pixels[0] if frames > 1 else pixels


def _gray_to_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    values = apply_modality_lut(pixels, dataset)
    voi_range = _voi_output_range(dataset)
    if voi_range is None:
        # No VOI in the file: show the data's own range, as viewers do.
        return stretch(values, float(values.min()), float(values.max()))
    if dataset.get("VOILUTSequence"):
        values = apply_voi(values, dataset)
    else:
        values = apply_windowing(values, dataset)
    return stretch(values, *voi_range)


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
