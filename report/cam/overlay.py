"""Heatmap overlays as the tutorial drew them, without its colour-order bugs.

Everything here is RGB uint8: the map is coloured with a matplotlib colormap, blended over the
image (kept grey underneath when the image is grey), and labelled with a black bar carrying
white text such as "COVID-19: 93%" above the image.
"""

from __future__ import annotations

from functools import cache, lru_cache

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS = ("viridis", "jet", "inferno")
LABEL_BAR_FRACTION = 0.13  # the tutorial's 40 px bar on a 237 px image, a little slimmer
MIN_OVERLAY_SIZE = 237


@cache
def colormap_table(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table, so colouring a map is one indexing operation."""
    ramp = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(ramp * 255).astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) RGB."""
    index = np.clip(np.round(heatmap * 255), 0, 255).astype(np.uint8)
    return colormap_table(colormap)[index]


def blend(image: np.ndarray, heatmap: np.ndarray, alpha: float, colormap: str) -> np.ndarray:
    """alpha * coloured map + (1 - alpha) * image, as cv2.addWeighted did in the tutorial."""
    colored = colorize(heatmap, colormap).astype(np.float32)
    mixed = alpha * colored + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def label_text(class_name: str, probability: float) -> str:
    return f"{class_name}: {probability:.0%}"


def draw_label_bar(image: np.ndarray, text: str) -> np.ndarray:
    """A black bar with white text, added above the image. The tutorial painted it over the
    top of the film, which hides exactly where hospital tags and laterality markers sit."""
    bar_height = max(12, round(image.shape[0] * LABEL_BAR_FRACTION))
    return np.vstack([_label_bar(text, image.shape[1], bar_height), image])


# Labels repeat ("COVID-19: 93%" for many films): drawing text costs more than blending, so
# bars are drawn once and reused. Bounded: class names x 101 percentages x a few widths.
@lru_cache(maxsize=2048)
def _label_bar(text: str, width: int, height: int) -> np.ndarray:
    bar = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(bar)
    margin = round(height * 0.3)
    font = _fitting_font(draw, text, round(height * 0.62), bar.width - 2 * margin)
    draw.text((margin, height / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    array = np.asarray(bar)
    array.flags.writeable = False  # shared between overlays and threads
    return array


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, size: int, width: int):
    """The largest font up to `size` in which `text` fits `width`: long class names shrink
    rather than run off the image."""
    while size > 6 and draw.textlength(text, font=_font(size)) > width:
        size -= 1
    return _font(size)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font: no system font needed, same look on every machine.
    return ImageFont.load_default(size=size)


def make_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    label: str,
    alpha: float = 0.5,
    colormap: str = "viridis",
) -> np.ndarray:
    image, heatmap = _at_least(MIN_OVERLAY_SIZE, image, heatmap)
    return draw_label_bar(blend(image, heatmap, alpha, colormap), label)


def _at_least(size: int, image: np.ndarray, heatmap: np.ndarray):
    """Small model inputs (64 px, say) are enlarged so the label and the map stay legible."""
    factor = size / min(image.shape[:2])
    if factor <= 1:
        return image, heatmap
    new_size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return (
        cv2.resize(image, new_size, interpolation=cv2.INTER_NEAREST),
        cv2.resize(heatmap, new_size, interpolation=cv2.INTER_LINEAR),
    )


# Overlay file formats: (file suffix, media type). PNG is lossless and the default; JPEG is
# about 9x cheaper to encode and 6x smaller (README, "Speed"). OpenCV's encoders release
# the GIL, so overlays encode in parallel threads; Pillow's PNG (zlib level 6) cost 7x more.
OVERLAY_FORMATS = {"png": (".png", "image/png"), "jpeg": (".jpg", "image/jpeg")}
PNG_COMPRESSION = 1  # zlib level: 14% larger files than level 6 for a fraction of the time
JPEG_QUALITY = 90


def encode(image: np.ndarray, overlay_format: str = "png") -> bytes:
    """RGB uint8 (H, W, 3) -> PNG or JPEG bytes."""
    bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV writes BGR
    if overlay_format == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} overlay")
    return data.tobytes()

