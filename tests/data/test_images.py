"""Decoding every kind of file a data set can contain: read correctly, or skipped with a reason."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from report.data import images, open_source
from report.data.batches import iter_batches
from report.data.images import boxes_mask, decode_image, read_image_file
from report.data.records import UnreadableImage
from tests.data.builders import CLASSES, film, write_image


def encoded(pixels, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def unreadable_reason(data: bytes, suffix: str = ".png") -> str:
    with pytest.raises(UnreadableImage) as error:
        decode_image(data, suffix)
    return str(error.value)


def test_png_and_jpeg_decode_to_rgb_in_rgb_order():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    assert decode_image(encoded(red, "PNG"))[0, 0].tolist() == [200, 0, 0]
    assert abs(int(decode_image(encoded(red, "JPEG", quality=100))[0, 0, 0]) - 200) < 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is a text file, not a PNG", "not a decodable PNG/JPEG image"),
        (b"\x89PNG\r\n\x1a\n not really", "not a decodable PNG/JPEG image"),
    ],
)
def test_non_images_are_not_decodable(data, reason):
    assert unreadable_reason(data) == reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_unreadable_with_a_reason(fmt):
    data = encoded(film(0), fmt)
    assert unreadable_reason(data[: len(data) // 2]).startswith("truncated or corrupt image")


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    gray = decode_image(encoded(ramp, "PNG"))[:, :, 0]
    assert gray.min() == 0 and gray.max() == 255
    assert abs(int(gray.flat[128]) - 128) <= 1  # mid-range stays mid-gray, no clip to 255
    assert np.all(np.diff(gray.ravel().astype(int)) >= 0)


def test_rgba_drops_alpha_instead_of_compositing():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (120, 60, 30)
    rgba[..., 3] = 0  # fully transparent: compositing on black would give (0, 0, 0)
    assert decode_image(encoded(rgba, "PNG"))[0, 0].tolist() == [120, 60, 30]


def test_gray_with_alpha_and_palette_images():
    la = Image.fromarray(np.full((4, 4, 2), (90, 0), np.uint8), "LA")
    assert decode_image(encoded(la, "PNG"))[0, 0].tolist() == [90, 90, 90]
    palette = Image.fromarray(film(1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    decoded = decode_image(encoded(palette, "PNG"))
    assert decoded.shape == film(1).shape
    assert np.abs(decoded.astype(int) - film(1).astype(int)).mean() < 10


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    red, green, blue = decode_image(encoded(cmyk, "JPEG", quality=100))[4, 4].tolist()
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied():
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255  # a bright band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    decoded = decode_image(encoded(tall, "JPEG", exif=exif, quality=100))
    assert decoded.shape == (10, 20, 3)
    assert decoded[:, -5:].mean() > 200 and decoded[:, :5].mean() < 50


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header for a huge gray image, with no pixel data behind it: enough for
    the size check, which must run before any decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_decompression_bomb_is_refused_with_size_and_limit():
    reason = unreadable_reason(png_claiming_size(10_000, 10_000))
    assert reason.startswith("image over the 50-megapixel limit")
    assert "10000x10000" in reason and "MAX_PIXELS" in reason


def test_the_pixel_limit_is_configurable(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 63 * 64)
    assert "limit" in unreadable_reason(encoded(film(0), "PNG"))
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    assert decode_image(encoded(film(0), "PNG")).shape == (64, 64, 3)


def test_unicode_and_spaces_in_paths(tmp_path):
    path = write_image(tmp_path / "NORMAL" / "bilder är här" / "röntgen 1 (kopia).png", film(1))
    loaded = read_image_file(path, (32, 32))
    assert loaded.pixels.shape == (32, 32, 3)
    source = open_source(str(tmp_path), CLASSES, "all")
    assert [r.source for r in source.records] == [str(path)]
    assert source.records[0].image_id.isascii() and " " not in source.records[0].image_id


def test_bad_files_are_skipped_and_the_rest_explained(tmp_path):
    """Every bad-input case in one folder: nothing is lost, nothing ends the run."""
    folder = tmp_path / "NORMAL"
    write_image(folder / "good.png", film(1))
    write_image(folder / "good copy.png", film(1))  # same pixels, same encoder: same bytes
    write_image(folder / "sixteen.png", (film(4)[:, :, 0].astype(np.uint16) * 257))
    write_image(folder / "rgba.png", np.dstack([film(7), np.full((64, 64), 9, np.uint8)]))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "cut.jpeg").write_bytes(encoded(film(10), "JPEG")[:300])
    (folder / "huge.png").write_bytes(png_claiming_size(10_000, 10_000))
    source = open_source(str(tmp_path), CLASSES, "all")
    skipped = []
    batches = list(iter_batches(source, source.records, (32, 32), 2, skipped))
    explained = sorted(r.source.rsplit("/", 1)[1] for b in batches for r in b.records)
    # Reasons without their details (the decoder's own words vary between versions).
    reasons = {s.source.rsplit("/", 1)[1]: s.reason.split(" (")[0].split(": ")[0] for s in skipped}
    assert explained == ["good copy.png", "rgba.png", "sixteen.png"]
    assert reasons == {
        "good.png": f"duplicate of {folder / 'good copy.png'}",
        "empty.png": "empty file",
        "text.jpg": "not a decodable PNG/JPEG image",
        "cut.jpeg": "truncated or corrupt image",
        "huge.png": "image over the 50-megapixel limit",
    }
    assert len(explained) + len(skipped) == len(source.records)


def test_a_missing_file_is_skipped_not_fatal(tmp_path):
    with pytest.raises(UnreadableImage, match="missing file"):
        read_image_file(tmp_path / "gone.png", (8, 8))


@pytest.mark.parametrize(
    ("box", "rows", "cols"),
    [
        ((256, 512, 128, 256), slice(32, 48), slice(16, 24)),  # exact multiples of 16
        ((0, 0, 1024, 1024), slice(0, 64), slice(0, 64)),  # the whole film
        ((1000, 1000, 4, 4), slice(62, 63), slice(62, 63)),  # tiny: still one pixel
    ],
)
def test_boxes_scale_with_the_resize(box, rows, cols):
    mask = boxes_mask((box,), (1024, 1024), (64, 64))
    expected = np.zeros((64, 64), bool)
    expected[rows, cols] = True
    np.testing.assert_array_equal(mask, expected)


def test_boxes_scale_each_axis_by_its_own_factor():
    # A 2000 wide x 1000 high film resized to 100 x 100: x shrinks by 20, y by 10.
    mask = boxes_mask(((400, 200, 600, 300),), (1000, 2000), (100, 100))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 49, 20, 49)


def test_a_truncated_file_stays_unreadable_after_a_pdf_was_rendered(tmp_path):
    """WeasyPrint turns on PIL's LOAD_TRUNCATED_IMAGES for the whole process when imported;
    the next audit in the same process must still skip truncated films, not decode half."""
    from PIL import ImageFile

    from report.render import write_pdf

    write_pdf("<p>x</p>", tmp_path / "x.pdf")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encoded(film(0), "PNG")
    assert unreadable_reason(data[: len(data) // 2]).startswith("truncated or corrupt image")


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float32])
def test_scaling_to_8_bit_makes_no_full_size_float_copies(dtype):
    """A 49-megapixel 16-bit film took 1.6 GB: float64 copies of the whole image."""
    import tracemalloc

    from report.data.pixels import scale_to_uint8

    values = (np.arange(2000 * 2000) % 60000 - (1000 if dtype in (np.int16, np.int32) else 0))
    values = values.astype(dtype).reshape(2000, 2000)
    low, high = (0.0, 65535.0) if values.min() >= 0 else (values.min(), values.max())
    expected = np.clip(np.rint((values.astype(np.float64) - low)
                               * (255.0 / (float(high) - low))), 0, 255)
    tracemalloc.start()
    try:
        gray = scale_to_uint8(values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(gray, expected.astype(np.uint8))
    assert peak < gray.nbytes + 40 * 2**20  # the result and one block, not 8 bytes a pixel


def test_decoding_a_large_16_bit_png_stays_near_its_own_size(tmp_path):
    """Peak memory of one decode, measured in a fresh process: under 12 bytes a pixel
    (the 16-bit values, PIL's copy of them and the 8-bit result), where it was ~34."""
    import subprocess
    import sys

    side = 2000
    ramp = (np.add.outer(np.arange(side), np.arange(side)) * 7 % 65536).astype(np.uint16)
    path = write_image(tmp_path / "big16.png", ramp)
    script = (
        "import resource, sys; from pathlib import Path\n"
        "from report.data.images import read_image_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "read_image_file(Path(sys.argv[1]), (224, 224))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kib = int(subprocess.run([sys.executable, "-c", script, str(path)], check=True,
                                   capture_output=True, text=True).stdout.split()[-1])
    assert grown_kib * 1024 < 12 * side * side
