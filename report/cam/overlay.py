"""Heatmap overlays as the tutorial drew them, without its colour-order bugs.

Everything here is RGB uint8: the map is coloured with a matplotlib colormap, blended over the
image (kept grey underneath when the image is grey), and labelled with a black bar carrying
white text such as "COVID-19: 93%" above the image.
"""

from __future__ import annotations

import io
from functools import cache

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
    bar = Image.new("RGB", (image.shape[1], bar_height), (0, 0, 0))
    draw = ImageDraw.Draw(bar)
    margin = round(bar_height * 0.3)
    font = _fitting_font(draw, text, round(bar_height * 0.62), bar.width - 2 * margin)
    draw.text((margin, bar_height / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return np.vstack([np.asarray(bar), image])


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


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
