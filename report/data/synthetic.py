"""Deterministic synthetic PA chest radiographs, so the demo needs no download.

Every image is drawn as a map of X-ray *density* (how much of the beam the body stops) on a
fixed internal canvas, in coordinates relative to that canvas, and only then repositioned,
resampled to the requested size and exposed onto "film". Working in density keeps the
physics honest enough to look right: overlapping structures add up, so ribs and vessels
stay visible through hazy opacities, and the film's saturating response makes bones bright,
aerated lung dark, soft tissue mid-gray and the air around the patient near black, while
hiding detail inside dense regions the way real films do.

Image left is the patient's right, as on a real PA film: the heart bulges into the lung on
the image right, and the right hemidiaphragm (image left) sits a little higher.

Classes, in fixed index order:

* ``COVID-19``: bilateral, peripheral, lower-zone-predominant ground-glass opacities.
* ``NORMAL``: clear lungs.
* ``OTHER_INFECTION``: one dense lobar consolidation confined to one lung.

Each image carries its lung-field mask and lesion mask, moved together with the image.
"""

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("COVID-19", "NORMAL", "OTHER_INFECTION")
IMAGE_SIZE = 237

COVID, NORMAL, OTHER_INFECTION = range(len(CLASS_NAMES))

# Everything is drawn at this resolution and resampled once at the end, so the anatomy is
# the same at any output size and blur radii can be given in canvas pixels.
_CANVAS = 256
# cv2 drawing functions take fixed-point coordinates; 4 fractional bits give sub-pixel
# placement, which keeps thin structures from snapping to the pixel grid.
_SHIFT = 4

# Densities of the building blocks; the densest bone ends up near 1.
_SOFT_TISSUE = 0.36
_LUNG_AIR = -0.27
_DENSE_ORGANS = 0.17  # heart, great vessels and the liver/spleen below the diaphragm
_TRACHEA_AIR = -0.10
_STOMACH_AIR = -0.14
_HILUM = 0.06
_VESSEL = 0.07
_POSTERIOR_RIB = 0.065
_ANTERIOR_RIB = 0.035
_CLAVICLE = 0.15
_VERTEBRA = 0.05
_PEDICLE = 0.05

# Relative horizontal coordinate of every canvas column, shared by several layers.
_COLUMNS = (np.arange(_CANVAS, dtype=np.float32) + 0.5) / _CANVAS
_ROWS = _COLUMNS[:, None]


@dataclass(frozen=True)
class SyntheticImage:
    """One synthetic radiograph with its ground truth."""

    image: np.ndarray  # uint8, shape (size, size, 3), RGB with three equal channels
    label: int  # index into CLASS_NAMES
    lesion_mask: np.ndarray  # bool, (size, size)
    lung_mask: np.ndarray  # bool, (size, size)
    marker_mask: np.ndarray | None = None  # bool, where a burned-in tag was drawn (confounded)


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient proportions, relative to the canvas (0..1 on both axes)."""

    lung_width: float  # from the midline to the lateral edge of each lung
    apex_y: float
    right_base_y: float  # costophrenic angle on the image left (patient's right)
    left_base_y: float
    dome_height: float
    heart_scale: float  # horizontal size of the heart relative to the nominal outline
    rib_offset: float  # vertical placement of the whole rib cage


def label_of(index: int) -> int:
    """Class of the index-th image: balanced and deterministic (index % 3)."""
    return index % len(CLASS_NAMES)


def generate(
    index: int, seed: int = 0, size: int = IMAGE_SIZE, confounded: bool = False,
    confound: "Confound | None" = None,
) -> SyntheticImage:
    """The index-th image of the data set named by seed: same arguments, same pixels.

    `confounded` burns a hospital-style text tag into a top corner, mostly on COVID-19 films
    (see MARKER_RATE), and draws COVID-19 opacities fainter (CONFOUNDED_LESION_SCALE): the
    tag becomes the easier cue, as the source hospital was for the real COVID-19 classifiers
    of DeGrave et al. (2021). Everything else is pixel for pixel the clean film.

    `confound` (implies `confounded`) chooses another burned-in marker: its kind, position,
    size, rates per class and the lesion scale of the class it favours (see `Confound`).
    """
    if confound is not None:
        confound.validate()
        confounded = True
    if index < 0 or seed < 0:
        raise ValueError("index and seed must be non-negative")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    # Seeding from (seed, index) makes every image independent of the order in which
    # images are generated, and never touches numpy's global random state.
    rng = np.random.default_rng([seed, index])
    label = label_of(index)

    anatomy = _sample_anatomy(rng)
    lungs = _lung_fields(anatomy)
    lesion, lesion_mask = _lesion(label, lungs, rng)
    if confounded and label == (confound or DEFAULT_CONFOUND).favoured:
        lesion = lesion * (confound or DEFAULT_CONFOUND).lesion_scale
    density = _chest_density(anatomy, lungs, lesion, rng) + lesion

    density, lung_mask, lesion_mask = _reposition(density, lungs > 0.5, lesion_mask, size, rng)
    gray = _expose(density, rng)
    marker_mask = None
    if confounded:
        marker_mask = burn_in(gray, label, seed, index, confound or DEFAULT_CONFOUND)
    return SyntheticImage(
        image=np.repeat(gray[:, :, None], 3, axis=2),
        label=label,
        lesion_mask=lesion_mask,
        lung_mask=lung_mask,
        marker_mask=marker_mask,
    )


# How often each class carries the tag in the confounded variant: almost always on COVID-19,
# rarely elsewhere, so the tag alone predicts the class about as well as the lesions do.
MARKER_RATE = {0: 0.95, 1: 0.05, 2: 0.05}
MARKER_TEXTS = ("PORTABLE", "AP SUPINE", "ICU-3")
CONFOUNDED_LESION_SCALE = 0.12

# Parametrised confounds (`Confound`), for tests that must catch markers of any kind and place.
MARKER_KINDS = ("text", "block", "ruler")
# The corners, the edges' midpoints (the bottom one is the bottom centre) and "top-corner":
# either top corner at random, the original tag's place.
MARKER_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right",
                    "top", "left", "right", "bottom", "top-corner")
MARKER_BRIGHTNESS = 255  # burned-in content is drawn at least this bright (of 255)
_MARKER_MARGIN = 0.03  # gap between a marker and the film's edge, relative to the side


@dataclass(frozen=True)
class Confound:
    """A burned-in marker that predicts one class.

    kind: "text" (a word), "block" (a filled square) or "ruler" (a bar with ticks, along the
    nearest edge). position: one of MARKER_POSITIONS. size: the marker's longer side as a share
    of the image side; None for the original tag's font size (text only). rates: per class,
    the chance a film carries the marker. favoured: the class whose lesions are drawn
    `lesion_scale` times as dense, so the marker is the easier cue for it.
    """

    kind: str = "text"
    position: str = "top-corner"
    size: float | None = None
    rates: tuple[float, ...] = tuple(MARKER_RATE[c] for c in range(len(CLASS_NAMES)))
    favoured: int = COVID
    lesion_scale: float = CONFOUNDED_LESION_SCALE

    def validate(self) -> None:
        if self.kind not in MARKER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MARKER_KINDS)}, got {self.kind!r}")
        if self.position not in MARKER_POSITIONS:
            raise ValueError(f"position must be one of {', '.join(MARKER_POSITIONS)}, "
                             f"got {self.position!r}")
        if self.size is None and self.kind != "text":
            raise ValueError(f"a {self.kind} marker needs a size")
        if self.size is not None and not 0 < self.size <= 0.5:
            raise ValueError(f"size must be in (0, 0.5], got {self.size}")
        if len(self.rates) != len(CLASS_NAMES) or not all(0 <= r <= 1 for r in self.rates):
            raise ValueError("rates needs one chance in [0, 1] per class")
        if self.favoured not in range(len(CLASS_NAMES)):
            raise ValueError(f"favoured must be a class index, got {self.favoured}")


DEFAULT_CONFOUND = Confound()


def burn_in(gray: np.ndarray, label: int, seed: int, index: int,
            confound: Confound = DEFAULT_CONFOUND) -> np.ndarray:
    """Burn the confound's marker into an exposed film, in place, when the film's class draws
    it; returns where it is (bool). The default confound is the original tag, unchanged."""
    if confound == DEFAULT_CONFOUND:
        return _burn_in_marker(gray, label, seed, index)
    # Its own random stream (as the original tag's) keeps the film identical to the clean one.
    rng = np.random.default_rng([seed, index, 7])
    mask = np.zeros(gray.shape, dtype=np.uint8)
    if rng.random() >= confound.rates[label]:
        return mask.astype(bool)
    _DRAWERS[confound.kind](mask, confound, rng)
    gray[mask > 0] = np.maximum(gray[mask > 0], MARKER_BRIGHTNESS)
    return mask > 0


def _marker_origin(side: int, width: int, height: int, position: str,
                   rng: np.random.Generator) -> tuple[int, int]:
    """Top-left pixel of a width x height marker at `position` on a side x side film."""
    if position == "top-corner":
        position = "top-left" if rng.random() < 0.5 else "top-right"
    margin = round(side * _MARKER_MARGIN)
    x = {"left": margin, "right": side - margin - width}
    y = {"top": margin, "bottom": side - margin - height}
    parts = position.split("-")
    if len(parts) == 2:  # a corner
        return x[parts[1]], y[parts[0]]
    if position in ("top", "bottom"):
        return (side - width) // 2, y[position]
    return x[position], (side - height) // 2


def _draw_block(mask: np.ndarray, confound: Confound, rng: np.random.Generator) -> None:
    side = mask.shape[0]
    length = max(2, round(confound.size * side))
    x, y = _marker_origin(side, length, length, confound.position, rng)
    mask[y : y + length, x : x + length] = 1


def _draw_ruler(mask: np.ndarray, confound: Confound, rng: np.random.Generator) -> None:
    """A bar along the nearest edge with a tick every eighth of its length."""
    side = mask.shape[0]
    length = max(8, round(confound.size * side))
    thickness = max(1, round(length / 12))
    tick = 2 * thickness + 1
    vertical = confound.position in ("left", "right")
    width, height = (tick, length) if vertical else (length, tick)
    x, y = _marker_origin(side, width, height, confound.position, rng)
    ruler = np.zeros((tick, length), np.uint8)
    ruler[:thickness] = 1
    ruler[:, np.round(np.linspace(0, length - 1, 9)).astype(int)] = 1
    if confound.position.startswith("bottom"):
        ruler = ruler[::-1]  # ticks point into the film
    if vertical:
        ruler = ruler.T if confound.position == "left" else ruler.T[:, ::-1]
    mask[y : y + height, x : x + width] = ruler


def _draw_text(mask: np.ndarray, confound: Confound, rng: np.random.Generator) -> None:
    """A word, written at a legible font size and shrunk to the marker's size: the Hershey
    font drawn directly at a few pixels' height loses its strokes."""
    side = mask.shape[0]
    text = MARKER_TEXTS[rng.integers(len(MARKER_TEXTS))]
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 2
    (unit_width, unit_height), baseline = cv2.getTextSize(text, font, 1.0, thickness)
    word = np.zeros((unit_height + baseline + 2, unit_width + 2), np.uint8)
    cv2.putText(word, text, (1, unit_height + 1), font, 1.0, 255, thickness, cv2.LINE_AA)
    scale = 1 / 600 if confound.size is None else confound.size / unit_width
    width = max(2, round(word.shape[1] * scale * side))
    height = max(2, round(word.shape[0] * scale * side))
    small = cv2.resize(word, (width, height), interpolation=cv2.INTER_AREA) >= 80
    x, y = _marker_origin(side, width, height, confound.position, rng)
    mask[y : y + height, x : x + width] = small


_DRAWERS = {"block": _draw_block, "ruler": _draw_ruler, "text": _draw_text}


def _burn_in_marker(gray: np.ndarray, label: int, seed: int, index: int) -> np.ndarray:
    """Draw a white tag in a top corner, in place, and return where it is. Its own random
    stream keeps the film identical to the clean variant's."""
    rng = np.random.default_rng([seed, index, 7])
    mask = np.zeros(gray.shape, dtype=np.uint8)
    if rng.random() >= MARKER_RATE[label]:
        return mask.astype(bool)
    size = gray.shape[0]
    text = MARKER_TEXTS[rng.integers(len(MARKER_TEXTS))]
    scale = size / 600
    thickness = max(1, round(size / 200))
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = round(size * 0.03)
    left = margin if rng.random() < 0.5 else size - margin - width
    origin = (int(left), int(margin + height))
    cv2.putText(mask, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thickness, cv2.LINE_AA)
    gray[mask > 0] = np.maximum(gray[mask > 0], 235)
    return mask > 0


# --------------------------------------------------------------------------- drawing


def _canvas() -> np.ndarray:
    return np.zeros((_CANVAS, _CANVAS), np.float32)


def _fixed_point(points) -> np.ndarray:
    """Relative (x, y) points -> cv2 fixed-point pixel coordinates."""
    return np.round(np.asarray(points) * _CANVAS * (1 << _SHIFT)).astype(np.int32)


def _fill_polygon(layer: np.ndarray, points: np.ndarray, value: float = 1.0) -> np.ndarray:
    cv2.fillPoly(layer, [_fixed_point(points)], value, cv2.LINE_8, _SHIFT)
    return layer


def _polyline(layer: np.ndarray, points: np.ndarray, thickness: float, value: float) -> None:
    """Thick open curve; thickness is relative to the canvas."""
    width = max(1, round(thickness * _CANVAS))
    cv2.polylines(layer, [_fixed_point(points)], False, value, width, cv2.LINE_8, _SHIFT)


def _fill_ellipse(layer, center, axes, angle: float = 0.0, value: float = 1.0) -> None:
    center_px = tuple(int(v) for v in _fixed_point(center))
    axes_px = tuple(int(v) for v in _fixed_point(axes))
    cv2.ellipse(layer, center_px, axes_px, angle, 0, 360, value, -1, cv2.LINE_8, _SHIFT)


def _blur(layer: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(layer, (0, 0), sigma_px)


def _mirror(points: np.ndarray) -> np.ndarray:
    """Reflect relative points about the vertical midline, to draw the other side."""
    mirrored = np.array(points, dtype=np.float64)
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    return mirrored


def _curve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x, y], axis=1)


# -------------------------------------------------------------------------- anatomy


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    right_base = rng.uniform(0.70, 0.75)
    return _Anatomy(
        lung_width=rng.uniform(0.355, 0.395),
        apex_y=rng.uniform(0.13, 0.16),
        right_base_y=right_base,
        # The left hemidiaphragm sits lower: the liver pushes the right one up.
        left_base_y=right_base + rng.uniform(0.015, 0.035),
        dome_height=rng.uniform(0.045, 0.07),
        heart_scale=rng.uniform(0.9, 1.1),
        rib_offset=rng.uniform(-0.012, 0.012),
    )


def _dome(a: _Anatomy, base_y: float) -> np.ndarray:
    """Image-left hemidiaphragm, from the costophrenic angle to the heart."""
    lateral_x, medial_x = 0.5 - a.lung_width, 0.455
    s = np.linspace(0.0, 1.0, 20)
    # Skewed sine: the dome peaks lateral of its middle, leaving a sharp costophrenic angle.
    bulge = np.sin(np.pi * s**0.8) ** 0.85
    return _curve(lateral_x + (medial_x - lateral_x) * s, base_y - 0.01 * s - a.dome_height * bulge)


def _lung_outline(a: _Anatomy, base_y: float) -> np.ndarray:
    """Outline of the image-left lung as relative (x, y) points, around from the apex."""
    apex_x = 0.36
    lateral_x = 0.5 - a.lung_width
    # Lateral wall: a rounded apex widening down to a steep wall at the costophrenic angle.
    t = np.linspace(0.0, np.pi / 2, 20)
    lateral = _curve(
        apex_x + (lateral_x - apex_x) * np.sin(t) ** 0.7,
        base_y - (base_y - a.apex_y) * np.cos(t),
    )
    dome = _dome(a, base_y)
    # Mediastinal border: nearly straight, curving out towards the apex.
    s = np.linspace(0.0, 1.0, 12)
    medial_x, medial_y = dome[-1]
    medial = _curve(
        medial_x + (apex_x + 0.035 - medial_x) * s**3,
        medial_y + (a.apex_y + 0.012 - medial_y) * s,
    )
    return np.concatenate([lateral, dome, medial])


# Nominal cardiomediastinal silhouette, clockwise from the top of the aortic knob: the left
# border (image right) runs over the knob, pulmonary trunk and left ventricle down to the
# apex on the diaphragm; the right border (image left) climbs over the right atrium and the
# superior vena cava. Both continue below the domes, where the heart merges with the liver.
# fmt: off
_HEART_OUTLINE = np.array(
    [
        (0.545, 0.27), (0.585, 0.295), (0.578, 0.34), (0.592, 0.38), (0.598, 0.42),
        (0.612, 0.45), (0.65, 0.475), (0.70, 0.52), (0.73, 0.58), (0.735, 0.64),
        (0.715, 0.69), (0.69, 1.02), (0.44, 1.02), (0.43, 0.70), (0.41, 0.645),
        (0.405, 0.585), (0.42, 0.525), (0.445, 0.47), (0.45, 0.40), (0.455, 0.30),
    ]
)
# fmt: on


def _smooth_closed(points: np.ndarray, samples: int = 96, passes: int = 3) -> np.ndarray:
    """Round the corners of a closed polygon: resample it densely, then average neighbours."""
    closed = np.concatenate([points, points[:1]])
    step = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    at = np.linspace(0.0, arc[-1], samples, endpoint=False)
    dense = np.stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])], 1)
    for _ in range(passes):
        dense = (np.roll(dense, 1, axis=0) + 2 * dense + np.roll(dense, -1, axis=0)) / 4
    return dense


def _heart(a: _Anatomy) -> np.ndarray:
    """Cardiomediastinal silhouette, which hides the lung behind it."""
    outline = _HEART_OUTLINE.copy()
    # Bigger hearts widen mostly to the left (image right), where the ventricle is.
    outline[:, 0] = 0.47 + (outline[:, 0] - 0.47) * a.heart_scale
    # The lower heart follows the diaphragm; the aortic knob stays put.
    outline[:, 1] += (a.right_base_y - 0.72) * np.clip((outline[:, 1] - 0.3) / 0.4, 0.0, 1.0)
    return _fill_polygon(_canvas(), _smooth_closed(outline))


def _lung_fields(a: _Anatomy) -> np.ndarray:
    """Hard 0/1 map of the visible lung fields (aerated lung not hidden by the heart)."""
    lungs = _canvas()
    _fill_polygon(lungs, _lung_outline(a, a.right_base_y))
    _fill_polygon(lungs, _mirror(_lung_outline(a, a.left_base_y)))
    lungs[_heart(a) > 0] = 0.0
    return lungs


def _body_outline(a: _Anatomy) -> np.ndarray:
    """Neck, sloping shoulders and chest wall, clockwise from the neck on the image left."""
    wall_x = 0.5 - a.lung_width - 0.07
    t = np.linspace(0.0, 1.0, 10)
    # The trapezius slopes from the neck to the shoulder in a concave curve.
    trapezius = _curve(0.395 - 0.39 * t, 0.065 + 0.085 * t**1.6)
    half = np.concatenate(
        [
            [(0.405, -0.02)],
            trapezius,
            [
                (-0.02, 0.17),
                (-0.02, 0.34),
                (wall_x, 0.42),
                (wall_x + 0.005, 0.7),
                (wall_x + 0.03, 1.02),
            ],
        ]
    )
    return np.concatenate([half, _mirror(half)[::-1]])


def _thickness_profile() -> np.ndarray:
    """The chest is roughly elliptic in cross-section: tissue thins towards the sides."""
    offset = (_COLUMNS - 0.5) / 0.5
    return (0.6 + 0.4 * np.sqrt(np.clip(1.0 - offset**2, 0.0, 1.0)))[None, :]


_THICKNESS = _thickness_profile()


def _chest_density(
    a: _Anatomy, lungs: np.ndarray, lesion: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Density of the chest without its lesion: soft tissue, air, organs, vessels, bones."""
    body = _fill_polygon(_canvas(), _body_outline(a))
    soft = _SOFT_TISSUE * body * _THICKNESS
    soft += _DENSE_ORGANS * _organs(a) * body
    # Air in the lungs: darkest in the thick middle, a little less at the thin periphery.
    soft += _LUNG_AIR * (0.65 * lungs + 0.35 * _blur(lungs, 8.0))
    soft += _mediastinal_air(a, rng)
    soft = _blur(soft, 2.0)

    lungs_soft = _blur(lungs, 2.0)
    vessels = _canvas()
    _hila(vessels)
    _vascular_tree(vessels, rng)
    # Vessels show because air surrounds them. Consolidated lung has lost that air, so
    # its vessels vanish (silhouette sign); thin ground glass leaves them visible.
    visibility = np.clip(1.0 - 2.0 * lesion, 0.1, 1.0)
    vessels = _blur(vessels, 0.9) * lungs_soft * visibility
    # Lung bases are crossed by more soft tissue (breasts, pectorals) than the apices.
    base_haze = 0.06 * _ROWS * lungs_soft
    return soft + vessels + base_haze + _bones(a, rng)


def _organs(a: _Anatomy) -> np.ndarray:
    """Heart, great vessels and the abdomen under the diaphragm: all water-dense."""
    organs = _heart(a)
    # Superior mediastinum: trachea, great vessels and oesophagus between the lungs.
    _fill_polygon(organs, np.array([(0.45, 0.0), (0.55, 0.0), (0.56, 0.5), (0.44, 0.5)]))
    right, left = _dome(a, a.right_base_y), _mirror(_dome(a, a.left_base_y))[::-1]
    # Liver and spleen fill the domes; the chest wall lateral to them stays soft tissue.
    abdomen = np.concatenate([right, left, [(left[-1, 0], 1.02), (right[0, 0], 1.02)]])
    return _fill_polygon(organs, abdomen)


def _mediastinal_air(a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Trachea and main bronchi, and sometimes a gastric bubble under the left dome."""
    air = _canvas()
    _polyline(air, np.array([(0.5, 0.0), (0.5, 0.28), (0.505, 0.33)]), 0.034, _TRACHEA_AIR)
    # Main bronchi fork at the carina towards the hila; the right one is steeper.
    _polyline(air, np.array([(0.505, 0.33), (0.47, 0.38), (0.45, 0.41)]), 0.02, _TRACHEA_AIR)
    _polyline(air, np.array([(0.505, 0.33), (0.545, 0.37), (0.57, 0.40)]), 0.018, _TRACHEA_AIR)
    if rng.random() < 0.7:
        center = (rng.uniform(0.60, 0.66), a.left_base_y + rng.uniform(0.02, 0.04))
        _fill_ellipse(air, center, (rng.uniform(0.03, 0.05), 0.022), 0.0, _STOMACH_AIR)
    return air


def _hila(layer: np.ndarray) -> None:
    """Pulmonary arteries where they enter the lungs, just lateral of the mediastinum."""
    _fill_ellipse(layer, (0.44, 0.44), (0.025, 0.055), 10.0, _HILUM)
    _fill_ellipse(layer, (0.565, 0.41), (0.022, 0.05), -10.0, _HILUM)


def _vascular_tree(layer: np.ndarray, rng: np.random.Generator) -> None:
    """Pulmonary vessels branching from each hilum, tapering towards the periphery."""
    for hilum, outwards in (((0.44, 0.44), -1.0), ((0.565, 0.41), 1.0)):
        spread = np.linspace(-1.25, 1.35, 6) + rng.uniform(-0.12, 0.12, 6)
        angles = np.pi / 2 - outwards * (np.pi / 2 - spread)
        roots = np.tile(hilum, (6, 1))
        _branching_tree(layer, roots, angles, rng.uniform(0.08, 0.11, 6), 3.0, _VESSEL, 4, rng)


def _branching_tree(layer, starts, angles, lengths, width_px, value, levels, rng) -> None:
    """Draw binary trees level by level: every segment forks into two shorter, thinner ones.

    All segments of a level are drawn with one cv2 call, which keeps this cheap.
    """
    starts = np.asarray(starts, dtype=np.float64)
    for _ in range(levels):
        ends = starts + lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        segments = _fixed_point(np.stack([starts, ends], axis=1))
        cv2.polylines(
            layer, list(segments), False, value, max(1, round(width_px)), cv2.LINE_8, _SHIFT
        )
        forks = 2 * len(angles)
        turns = rng.uniform(0.15, 0.5, forks) * np.tile([-1.0, 1.0], forks // 2)
        angles = np.repeat(angles, 2) + turns
        lengths = np.repeat(lengths, 2) * rng.uniform(0.6, 0.8, forks)
        starts = np.repeat(ends, 2, axis=0)
        width_px, value = width_px * 0.7, value * 0.85


def _bones(a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    thin = _canvas()
    _ribs(thin, a, rng)
    _clavicles(thin, rng)
    return _blur(thin, 1.1) + _spine(a)


def _ribs(layer: np.ndarray, a: _Anatomy, rng: np.random.Generator) -> None:
    """Posterior ribs arch up and out from the spine and curve down at the chest wall;
    fainter anterior ribs run from the wall down towards the sternum."""
    t = np.linspace(0.0, 1.0, 16)
    wall = 0.5 - a.lung_width - 0.015
    for k in range(10):
        y0 = 0.10 + a.rib_offset + 0.057 * k + rng.uniform(-0.004, 0.004)
        # The cage widens downwards, so the upper ribs reach less far out.
        reach = (0.47 - wall) * min(1.0, 0.7 + 0.075 * k)
        x = 0.47 - reach * t
        y = y0 - 0.022 * np.sin(np.pi * t) + (0.05 + 0.012 * k) * t**2.2
        posterior = _curve(x, y)
        thickness = 0.017 + 0.0012 * k
        _polyline(layer, posterior, thickness, _POSTERIOR_RIB)
        _polyline(layer, _mirror(posterior) + (0.0, 0.005), thickness, _POSTERIOR_RIB)
        if k < 7:
            # The anterior rib leaves the wall where its posterior part ends.
            start_x, start_y = x[-1], y[-1]
            u = np.linspace(0.0, 1.0, 10)
            anterior = _curve(
                start_x + (0.33 - start_x) * u, start_y + 0.02 * np.sin(np.pi * u) + 0.09 * u
            )
            _polyline(layer, anterior, thickness * 1.2, _ANTERIOR_RIB)
            _polyline(layer, _mirror(anterior) + (0.0, 0.005), thickness * 1.2, _ANTERIOR_RIB)


def _clavicles(layer: np.ndarray, rng: np.random.Generator) -> None:
    t = np.linspace(0.0, 1.0, 14)
    lift = rng.uniform(0.05, 0.08)
    # A gentle S from the sternoclavicular joint up and out to the shoulder.
    clavicle = _curve(0.46 - 0.33 * t, 0.20 - lift * t + 0.012 * np.sin(2 * np.pi * t))
    _polyline(layer, clavicle, 0.028, _CLAVICLE)
    _polyline(layer, _mirror(clavicle), 0.028, _CLAVICLE)


def _spine(a: _Anatomy) -> np.ndarray:
    """Vertebral bodies separated by darker discs, with the pedicles as brighter ovals."""
    spine = _canvas()
    height = 0.053
    for k in range(20):
        top = -0.03 + a.rib_offset + k * height
        bottom = top + 0.8 * height
        # Vertebrae widen slowly down the column.
        half_width = 0.03 + 0.0012 * k
        box = np.array(
            [
                (0.5 - half_width, top),
                (0.5 + half_width, top),
                (0.5 + half_width, bottom),
                (0.5 - half_width, bottom),
            ]
        )
        _fill_polygon(spine, box, _VERTEBRA)
        for side in (-1.0, 1.0):
            center = (0.5 + side * (half_width - 0.008), top + 0.35 * height)
            _fill_ellipse(spine, center, (0.007, 0.012), 0.0, _VERTEBRA + _PEDICLE)
    return _blur(spine, 1.6)


# -------------------------------------------------------------------------- lesions


def _lesion(
    label: int, lungs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Extra density of the disease and its mask; both empty for NORMAL."""
    if label == COVID:
        density = _ground_glass(lungs, rng)
    elif label == OTHER_INFECTION:
        density = _lobar_consolidation(lungs, rng)
    else:
        return _canvas(), np.zeros((_CANVAS, _CANVAS), bool)
    # The mask marks where the opacity is clearly visible, and never leaves the lungs.
    mask = (density > 0.05) & (lungs > 0.5)
    return density, mask


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Cloud-like texture in [0, 1]: a coarse random grid upsampled smoothly."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (_CANVAS, _CANVAS), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _lung_row_extent(lungs: np.ndarray, row: int, image_left: bool) -> tuple[int, int] | None:
    """(lateral, medial) column of one lung on a canvas row, or None if it has none."""
    half = _CANVAS // 2
    cols = np.flatnonzero(lungs[row, :half] if image_left else lungs[row, half:])
    if cols.size == 0:
        return None
    if image_left:
        return int(cols[0]), int(cols[-1])
    return int(cols[-1]) + half, int(cols[0]) + half


def _ground_glass(lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Several soft patches in both lungs, peripheral and favouring the lower zones."""
    rows = np.flatnonzero(lungs.any(axis=1))
    top, bottom = rows[0], rows[-1]
    patches = _canvas()
    for image_left in (True, False):
        placed = 0
        while placed < 2 or (placed < 4 and rng.random() < 0.5):
            # Beta(3, 1.3) puts most patches in the lower half of the lung.
            row = int(top + (bottom - top) * (0.1 + 0.8 * rng.beta(3.0, 1.3)))
            extent = _lung_row_extent(lungs, row, image_left)
            if extent is None:
                continue
            lateral, medial = extent
            inwards = rng.uniform(0.12, 0.35) * abs(medial - lateral)
            col = lateral + (inwards if image_left else -inwards)
            radius = rng.uniform(0.055, 0.085) * _CANVAS
            axes = (int(radius), int(radius * rng.uniform(1.0, 1.7)))
            cv2.ellipse(
                patches,
                (int(col), row),
                axes,
                rng.uniform(-30, 30),
                0,
                360,
                rng.uniform(0.75, 1.0),
                -1,
            )
            placed += 1
    # Ground glass is patchy inside: modulate the blurred patches by a cloudy texture.
    haze = _blur(patches, 7.0) * (0.5 + 0.5 * _smooth_noise(rng, 14))
    # Clipping by the softened lung fields keeps the haze off the chest wall and heart.
    return rng.uniform(0.28, 0.36) * haze * _blur(lungs, 2.0)


def _lobar_consolidation(lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dense opacity filling the upper or lower part of one lung, taking its shape."""
    image_left = bool(rng.integers(2))
    side = (_COLUMNS < 0.5) if image_left else (_COLUMNS >= 0.5)
    lower_lobe = rng.random() < 0.6
    if lower_lobe:
        # On a PA film the oblique fissure is seen face-on, so a lower-lobe consolidation
        # fades out upwards along a wavy, ill-defined margin.
        margin = rng.uniform(0.40, 0.50) + 0.08 * (_smooth_noise(rng, 5)[:, :1].T - 0.5)
        lobe = np.clip((_ROWS - margin) / 0.09 + 0.5, 0.0, 1.0)
    else:
        # An upper-lobe consolidation stops sharply at the nearly horizontal fissure.
        tilt = rng.uniform(0.0, 0.15) * (1.0 if image_left else -1.0)
        fissure = rng.uniform(0.36, 0.44) + tilt * (_COLUMNS - 0.5)
        lobe = np.clip((fissure - _ROWS) / 0.008 + 0.5, 0.0, 1.0)
    region = lungs * side[None, :] * lobe
    # Air bronchograms: aerated bronchi stay dark inside the consolidated lobe.
    bronchi = _canvas()
    hilum = (0.44, 0.44) if image_left else (0.565, 0.41)
    angles = rng.uniform(0.3, 1.2, 3) * (1.0 if lower_lobe else -1.0)
    angles = (np.pi - angles) if image_left else angles
    _branching_tree(bronchi, np.tile(hilum, (3, 1)), angles, np.full(3, 0.09), 2.0, 1.0, 3, rng)
    texture = 0.75 + 0.25 * _smooth_noise(rng, 16) - 0.45 * _blur(bronchi, 0.8)
    # Same blur as the lung air it replaces, so the lesion meets the lung border cleanly.
    return _blur(rng.uniform(0.34, 0.42) * region * texture, 2.0)


# ---------------------------------------------------------------- geometry and film


def _reposition(
    density: np.ndarray,
    lung_mask: np.ndarray,
    lesion_mask: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift, rotate and resample image and masks together, so they stay aligned."""
    angle = rng.uniform(-4.0, 4.0)
    shift = rng.uniform(-0.02, 0.02, size=2) * _CANVAS
    center = ((_CANVAS - 1) / 2, (_CANVAS - 1) / 2)
    matrix = cv2.getRotationMatrix2D(center, angle, rng.uniform(0.97, 1.03))
    matrix[:, 2] += shift
    # One warp of a three-channel stack moves all three layers identically.
    stack = np.dstack([density, lung_mask.astype(np.float32), lesion_mask.astype(np.float32)])
    stack = cv2.warpAffine(
        stack, matrix, (_CANVAS, _CANVAS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    if size != _CANVAS:
        stack = cv2.resize(stack, (size, size), interpolation=cv2.INTER_AREA)
    lung = stack[:, :, 1] >= 0.5
    # Resampling can move a lesion edge by a fraction of a pixel; keep it inside the lung.
    lesion = (stack[:, :, 2] >= 0.5) & lung
    return stack[:, :, 0], lung, lesion


def _expose(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Density -> 8-bit film: random exposure and contrast, then grain and noise."""
    # Film saturates: 1 - exp(-k d) compresses dense regions, so detail over the heart
    # and abdomen fades while the lungs keep their contrast. k sets the contrast.
    k = rng.uniform(1.8, 2.6)
    film = (1.0 - np.exp(-k * np.maximum(density, 0.0))) / (1.0 - np.exp(-k))
    film = np.clip(rng.uniform(0.9, 1.08) * film + rng.uniform(-0.04, 0.03), 0.0, 1.0)
    film = film ** rng.uniform(0.85, 1.2)
    # Film grain is a few pixels wide; quantum noise is per pixel. One random field
    # serves both (blurred and raw), which halves the cost of drawing the noise.
    noise = rng.standard_normal(density.shape, dtype=np.float32)
    grain = _blur(noise, 0.7)
    film = film + rng.uniform(0.01, 0.03) * grain + rng.uniform(0.005, 0.02) * noise
    return (np.clip(film, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
