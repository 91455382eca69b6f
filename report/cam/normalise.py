"""Scaling maps to [0, 1] for display.

`image`: per-image min-max, the tutorial's; every map uses the full colour range, so maps
cannot be compared with each other. `global`: one scale for the whole report (the largest
value of any map), so a faint map looks faint next to a strong one.
"""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("image", "global")


def per_image(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) -> min-max per map; a flat map becomes zeros rather than NaN."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def by_scale(maps: np.ndarray, scale: float) -> np.ndarray:
    """Divide by one shared scale (ReLU maps start at 0)."""
    if scale <= 0:
        return np.zeros_like(maps)
    return np.clip(maps / scale, 0.0, 1.0)
