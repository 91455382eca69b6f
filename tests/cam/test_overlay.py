import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from report.cam.overlay import (
    blend,
    colorize,
    draw_label_bar,
    encode,
    label_text,
    make_overlay,
)


@pytest.mark.parametrize("name", ["viridis", "jet", "inferno"])
def test_colorize_follows_the_matplotlib_colormap(name):
    heatmap = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    expected = np.round(matplotlib.colormaps[name](heatmap)[..., :3] * 255)
    assert np.abs(colorize(heatmap, name).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("overlay_format, tolerance", [("png", 0), ("jpeg", 8)])
def test_a_red_pixel_stays_red_through_overlay_and_encoding(overlay_format, tolerance):
    """OpenCV encodes BGR: the channel order must be flipped on the way in, in both formats."""
    image = np.zeros((240, 240, 3), np.uint8)
    image[200:, :, 0] = 255  # red stripe at the bottom, clear of the label bar
    overlay = make_overlay(image, np.zeros((240, 240), np.float32), "X: 1%", alpha=0.0)
    encoded = encode(overlay, overlay_format)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")).astype(int)
    assert Image.open(io.BytesIO(encoded)).format == overlay_format.upper()
    bar = decoded.shape[0] - 240
    assert np.abs(decoded[bar + 220, 20] - [255, 0, 0]).max() <= tolerance
    assert np.abs(decoded[bar + 100, 20] - [0, 0, 0]).max() <= tolerance


def test_blend_mixes_image_and_colored_map_by_alpha():
    image = np.full((4, 4, 3), 200, np.uint8)
    heatmap = np.ones((4, 4), np.float32)
    top = colorize(heatmap, "viridis").astype(float)
    expected = np.round(0.3 * top + 0.7 * 200)
    np.testing.assert_array_equal(blend(image, heatmap, 0.3, "viridis"), expected)


def test_grey_image_stays_grey_where_alpha_is_zero():
    image = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    out = blend(image, np.random.default_rng(0).random((8, 8)), 0.0, "jet")
    np.testing.assert_array_equal(out, image)


def test_label_bar_is_black_with_white_text_above_the_whole_image():
    image = np.full((237, 237, 3), 128, np.uint8)
    labelled = draw_label_bar(image, label_text("COVID-19", 0.934))
    bar_height = labelled.shape[0] - 237
    assert 25 <= bar_height <= 40
    bar = labelled[:bar_height]
    assert (bar == 0).mean() > 0.6  # mostly black
    assert (bar == 255).all(axis=2).any()  # some white text
    np.testing.assert_array_equal(labelled[bar_height:], image)  # the film is not covered


def test_label_text_is_the_tutorials_format():
    assert label_text("COVID-19", 0.934) == "COVID-19: 93%"


def test_small_inputs_are_enlarged_so_long_labels_fit():
    image = np.full((64, 64, 3), 90, np.uint8)
    overlay = make_overlay(image, np.zeros((64, 64), np.float32), "OTHER_INFECTION: 100%")
    assert overlay.shape[1:] == (237, 3) and overlay.shape[0] > 237
    text_columns = np.nonzero((overlay[:30] == 255).all(axis=2).any(axis=0))[0]
    assert text_columns.max() < 237 - 5  # the text ends inside the image, with a margin
