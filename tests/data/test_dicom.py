"""DICOM films: the display pipeline (rescale, window, MONOCHROME1) and compressed syntaxes."""

import ast
import inspect

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless

from report.data import dicom, images, pixels
from report.data.images import decode_image, read_image_file
from report.data.records import UnreadableImage
from tests.data.builders import dicom_of, write_dicom

RAMP_12 = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))


def decoded(path) -> np.ndarray:
    rgb = decode_image(path.read_bytes(), path.suffix)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0].astype(int)


def test_twelve_bit_data_is_scaled_to_the_full_8_bit_range(tmp_path):
    gray = decoded(write_dicom(tmp_path / "a.dcm", RAMP_12, bits_stored=12))
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    # Linear: 4095 -> 255, so the 8-bit value is the 12-bit value / 16 (not clipped at 255).
    np.testing.assert_allclose(gray[0], RAMP_12[0] / 4095 * 255, atol=1)


def test_window_center_and_width_are_applied(tmp_path):
    values = np.tile(np.linspace(0, 40000, 81).round().astype(np.uint16), (4, 1))
    path = write_dicom(tmp_path / "w.dcm", values, bits_stored=16, window=(20000, 10000))
    gray = decoded(path)[0]
    row = values[0].astype(float)
    below, above = row < 15000, row > 25000
    inside = ~below & ~above & (row != 15000) & (row != 25000)
    assert (gray[below] == 0).all() and (gray[above] == 255).all()
    np.testing.assert_allclose(gray[inside], (row[inside] - 15000) * 255 / 10000, atol=1.5)


def test_sixteen_bit_data_without_a_window_uses_its_own_range(tmp_path):
    values = np.tile(np.linspace(1000, 33000, 64).round().astype(np.uint16), (4, 1))
    gray = decoded(write_dicom(tmp_path / "n.dcm", values, bits_stored=16))
    assert gray.min() == 0 and gray.max() == 255


def test_monochrome1_is_inverted(tmp_path):
    normal = decoded(write_dicom(tmp_path / "m2.dcm", RAMP_12, window=(2048, 4096)))
    inverted = decoded(
        write_dicom(tmp_path / "m1.dcm", RAMP_12, photometric="MONOCHROME1", window=(2048, 4096))
    )
    np.testing.assert_array_equal(inverted, 255 - normal)
    assert inverted[0, 0] == 255  # the lowest value is white in MONOCHROME1


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", RAMP_12, window=(0, 4096))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -2048  # stored 2048 is 0 after rescale
    ds.save_as(path)
    gray = decoded(path)[0]
    np.testing.assert_allclose(gray, RAMP_12[0] / 4095 * 255, atol=1)


def test_compressed_syntax_with_an_installed_decoder_reads(tmp_path):
    plain = decoded(write_dicom(tmp_path / "p.dcm", dicom_of(3), window=(2048, 4096)))
    rle = decoded(write_dicom(tmp_path / "rle.dcm", dicom_of(3), window=(2048, 4096),
                              transfer_syntax=RLELossless))
    np.testing.assert_array_equal(rle, plain)


def test_compressed_syntax_without_a_decoder_names_the_syntax(tmp_path):
    path = write_dicom(tmp_path / "ls.dcm", RAMP_12)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS"])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(UnreadableImage) as error:
        read_image_file(path, (32, 32))
    assert "JPEG-LS Lossless" in str(error.value) and str(JPEGLSLossless) in str(error.value)


def test_not_a_dicom_file_with_a_dcm_suffix(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(UnreadableImage, match="not a readable DICOM file"):
        read_image_file(path, (32, 32))


def test_only_the_first_frame_of_a_multi_frame_file_is_shown(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "f.dcm", RAMP_12, window=(2048, 4096))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = RAMP_12.tobytes() + (4095 - RAMP_12).tobytes()
    ds.save_as(path)
    gray = decoded(path)
    assert gray.shape == RAMP_12.shape and gray[0, 0] == 0 and gray[0, -1] == 255


def test_dicom_is_resized_to_the_model_size(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", dicom_of(0, size=96))
    assert read_image_file(path, (40, 48)).pixels.shape == (40, 48, 3)


def test_the_pixel_limit_refuses_a_dicom_film_before_decoding_it(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "big.dcm", RAMP_12)  # 64 x 8
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 8 - 1)
    with pytest.raises(UnreadableImage, match=r"megapixel limit \(64x8 ="):
        read_image_file(path, (8, 8))
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 8)
    assert read_image_file(path, (8, 8)).pixels.shape == (8, 8, 3)


def imported_modules(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_the_dicom_decoder_and_the_file_reader_do_not_import_each_other_in_a_circle():
    """images.py calls dicom.py; both take their pixel helpers from pixels.py."""
    assert "report.data.images" not in imported_modules(dicom)
    assert "report.data.pixels" in imported_modules(dicom)
    assert not {"report.data.images", "report.data.dicom"} & imported_modules(pixels)


def multi_frame(path, frames: int, values=RAMP_12):
    import pydicom

    write_dicom(path, values, window=(2048, 4096))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join((values + n).astype(np.uint16).tobytes() for n in range(frames))
    ds.save_as(path)
    return path


def test_only_the_first_frame_is_decoded(tmp_path, monkeypatch):
    """Decoding every frame and keeping one costs the whole volume in memory."""
    shapes = []
    original = dicom._pixel_array

    def spy(dataset):
        shapes.append(original(dataset).shape)
        return original(dataset)

    monkeypatch.setattr(dicom, "_pixel_array", spy)
    gray = decoded(multi_frame(tmp_path / "m.dcm", 5))
    assert gray.shape == RAMP_12.shape and gray[0, 0] == 0
    assert shapes and set(shapes) == {RAMP_12.shape}


@pytest.mark.parametrize(("frames", "bits", "samples"), [(40, 16, 1), (4, 16, 3), (1, 32, 1)])
def test_the_decoding_budget_counts_frames_samples_and_bytes(tmp_path, monkeypatch, frames,
                                                            bits, samples):
    """The header's rows x columns x frames x samples x bytes is checked before decoding."""
    import pydicom

    path = multi_frame(tmp_path / "m.dcm", frames)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.SamplesPerPixel = bits, samples
    ds.save_as(path)
    budget = 64 * 8 * 2 * frames * samples * bits // 16 - 1  # one byte short
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", budget)
    monkeypatch.setattr(dicom, "_pixel_array", lambda ds: pytest.fail("decoded anyway"))
    with pytest.raises(UnreadableImage, match=r"decoding limit \(64x8 x "):
        read_image_file(path, (8, 8))


@pytest.mark.parametrize("keyword", ["Rows", "NumberOfFrames", "BitsAllocated"])
def test_a_header_number_that_is_not_a_number_is_unreadable(tmp_path, keyword):
    import pydicom

    path = multi_frame(tmp_path / "m.dcm", 2)
    ds = pydicom.dcmread(path)
    ds[keyword].VR, ds[keyword].value = "LO", "many"
    ds.save_as(path)
    with pytest.raises(UnreadableImage):
        read_image_file(path, (8, 8))


@pytest.mark.parametrize("window", [(2048, 4096), None])
def test_the_display_pipeline_makes_no_full_size_float_copies(tmp_path, monkeypatch, window):
    """pydicom's LUT and window functions return float64 copies: 8 bytes a pixel each, a
    gigabyte and more for a 49-megapixel film. They run a block of rows at a time."""
    import tracemalloc

    side = 1000
    values = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
    data = write_dicom(tmp_path / "big.dcm", values, window=window).read_bytes()
    whole = decode_image(data, ".dcm")
    monkeypatch.setattr(dicom, "BLOCK_VALUES", 100_000)
    tracemalloc.start()
    try:
        blocked = decode_image(data, ".dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(blocked, whole)  # blocks change the memory, not the pixels
    assert peak < 12 * side * side  # the file's values, the 8-bit result, one block
