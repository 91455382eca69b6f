"""A data audit that needs no model: burned-in markers, and how strongly they follow the class.

Hospitals burn text, laterality tokens and rulers into films; when one class's films come
from one place they carry its markers, and any model trained on them can read the marker
instead of the lungs (DeGrave et al. 2021). This module finds such content on each film and
tests whether its presence is associated with the class, before any model is trained.

A film carries burned-in content when it has a connected group of near-saturated pixels
(`detect`) that:
  * lies in the outer EDGE_ZONE of the film (markers sit near the edges, the lungs do not);
  * covers MIN_PIXELS to MAX_AREA_SHARE of the film (not a speck of noise, not an
    over-exposed body part);
  * has a sharp edge: its mean brightness is at least EDGE_CONTRAST grey levels above the
    ring of pixels just around it. Bone and soft tissue brighten gradually (their edges are
    blurred by the physics of the film); drawn content steps from the background at once;
  * is flat: its grey levels vary by at most FLAT (standard deviation), as content drawn in
    one value does, where bright bone is textured.
Measured on the synthetic films: no clean film of 400 at 237 px, 1 of 400 at 64 px (a bright
streak of spine at the top edge) is found; every marker of 203 confounded films at 64 px is.
Letters of one word are grouped by a one-pixel dilation before labelling, so a word is one
group, and the boxes returned are the groups' bounding boxes.

Association (`MarkerCounts.results`): per class, the share of its films with markers; a one-
sided Fisher exact test of that class against all the others; and a chi-square test of
independence across all classes. A class is warned about when its share exceeds the others'
by at least PREVALENCE_GAP and its Fisher p-value is below ALPHA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import stats

from report.measures import MAX_CLASSES_SHOWN

BRIGHT = 235  # near-saturated, of 255
EDGE_ZONE = 0.15  # share of the shorter side, from every edge, where markers are looked for
MIN_PIXELS = 12  # below this, bright specks of bone and noise at small input sizes
MAX_AREA_SHARE = 0.05
EDGE_CONTRAST = 30.0  # grey levels between a group and the ring around it
FLAT = 6.0  # most standard deviation of a group's grey levels: drawn content is one value
PREVALENCE_GAP = 0.3
ALPHA = 0.01
EXAMPLES = 6  # films with markers kept (with their boxes) for display


@dataclass(frozen=True)
class Detection:
    found: bool
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # (x, y, width, height) per group


_NOTHING = Detection(False)


def detect(image: np.ndarray) -> Detection:
    """Burned-in content on one uint8 film, (H, W) or (H, W, C) (channels: the brightest
    counts, so coloured text is found too). See the module's docstring for the rule."""
    image = np.ascontiguousarray(image, np.uint8)
    if not _bright_in_zone(image):  # the common case, and cheap
        return _NOTHING
    gray = _brightest_channel(image)
    zone = _edge_zone(gray.shape)
    # cv2 for the per-pixel steps: numpy's reductions over a 3-long last axis are slow.
    _, bright = cv2.threshold(gray, BRIGHT - 1, 1, cv2.THRESH_BINARY)
    # Whole groups are labelled, then kept when they reach into the zone: cutting them at
    # the zone's edge would leave bright pixels in their ring.
    grouped = cv2.dilate(bright, _CROSS)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    if not _any_candidate(stats[1:], gray.shape):  # bright bone inside the film: cheap too
        return _NOTHING
    flat = labels.ravel()
    pixels = np.bincount(flat, weights=bright.ravel(), minlength=count)
    values = (gray * bright).ravel().astype(float)
    inner = np.bincount(flat, weights=values, minlength=count)
    squares = np.bincount(flat, weights=values**2, minlength=count)
    in_zone = np.bincount(flat, weights=(bright & zone).ravel(), minlength=count)
    # The ring: pixels just outside each group, labelled by the group they touch.
    grown = cv2.dilate(labels.astype(np.float32), _SQUARE).astype(np.int64)
    ring = (grown > 0) & (labels == 0)
    ring_pixels = np.bincount(grown[ring], minlength=count)
    ring_sum = np.bincount(grown[ring], weights=gray[ring].astype(float), minlength=count)
    with np.errstate(invalid="ignore", divide="ignore"):
        contrast = inner / pixels - ring_sum / ring_pixels
        spread = np.sqrt(np.maximum(squares / pixels - (inner / pixels) ** 2, 0.0))
    area_limit = MAX_AREA_SHARE * gray.size
    keep = [k for k in range(1, count)
            if in_zone[k] and MIN_PIXELS <= pixels[k] <= area_limit and ring_pixels[k]
            and contrast[k] >= EDGE_CONTRAST and spread[k] <= FLAT]
    if not keep:
        return _NOTHING
    return Detection(True, tuple(_box((labels == k) & (bright > 0)) for k in keep))


def _bright_in_zone(image: np.ndarray) -> bool:
    """Whether any channel of any pixel in the edge zone is near-saturated. Thresholding the
    channels as they lie (interleaved) costs a tenth of finding the brightest channel first,
    and most films stop here."""
    height, width = image.shape[:2]
    interleaved = image.reshape(height, -1)
    _, bright = cv2.threshold(interleaved, BRIGHT - 1, 1, cv2.THRESH_BINARY)
    zone = _edge_zone((height, width), interleaved.shape[1] // width)
    return bool(cv2.countNonZero(cv2.bitwise_and(bright, zone)))


def _any_candidate(stats: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether any group (cv2 stats rows of the dilated groups) can pass `detect`'s rule:
    at least MIN_PIXELS (a dilated group has at least as many pixels as its bright ones) and
    a bounding box reaching into the edge zone (else none of its pixels can). Necessary
    conditions only: `detect` still applies the whole rule to what passes."""
    height, width = shape
    margin = _zone_width(shape)
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = x + stats[:, cv2.CC_STAT_WIDTH]
    bottom = y + stats[:, cv2.CC_STAT_HEIGHT]
    inside = (x >= margin) & (y >= margin) & (right <= width - margin) & (
        bottom <= height - margin)
    return bool(((stats[:, cv2.CC_STAT_AREA] >= MIN_PIXELS) & ~inside).any())


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) of a mask's pixels."""
    x, y, width, height = cv2.boundingRect(mask.astype(np.uint8))
    return int(x), int(y), int(width), int(height)


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_SQUARE = np.ones((3, 3), np.uint8)
_ZONES: dict[tuple[int, int, int], np.ndarray] = {}


def _zone_width(shape: tuple[int, int]) -> int:
    return max(1, round(EDGE_ZONE * min(shape)))


def _edge_zone(shape: tuple[int, int], channels: int = 1) -> np.ndarray:
    """uint8 (H, W * channels), 1 in the outer EDGE_ZONE of the film on every side, each
    pixel repeated for its interleaved channels (cached per size)."""
    key = (*shape, channels)
    if key not in _ZONES:
        width = _zone_width(shape)
        zone = np.ones(shape, np.uint8)
        zone[width:-width, width:-width] = 0
        _ZONES[key] = np.repeat(zone, channels, axis=1)
    return _ZONES[key]


def _brightest_channel(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8: the brightest channel at each pixel."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image, np.uint8)
    gray = image[..., 0]
    for channel in range(1, image.shape[2]):
        gray = np.maximum(gray, image[..., channel])
    return np.ascontiguousarray(gray, np.uint8)


def detect_batch(images) -> list[Detection]:
    return [detect(np.asarray(image)) for image in images]


# --- association with the class -------------------------------------------------------------


@dataclass(frozen=True)
class ClassPrevalence:
    class_name: str
    films: int
    marked: int
    prevalence: float  # marked / films (nan without films)
    rest_prevalence: float  # the same over every other class's films
    p_value: float  # one-sided Fisher exact: this class carries markers more often
    warned: bool  # prevalence - rest_prevalence >= PREVALENCE_GAP and p_value < ALPHA


@dataclass(frozen=True)
class MarkerAuditResult:
    classes: tuple[ClassPrevalence, ...]
    films: int  # every film scanned, labelled or not
    marked: int
    chi_square_p: float  # independence of marker and class across classes (nan: untestable)
    examples: tuple[tuple[int, tuple[tuple[int, int, int, int], ...]], ...]  # (position, boxes)

    @property
    def warned_classes(self) -> list[str]:
        return [c.class_name for c in self.classes if c.warned]

    def metrics(self) -> dict[str, float]:
        values = {"markers.films": float(self.films), "markers.marked": float(self.marked),
                  "markers.warned_classes": float(len(self.warned_classes))}
        # Per class, as every per-class metric: the MAX_CLASSES_SHOWN with the most films.
        with_films = sorted((c for c in self.classes if c.films), key=lambda c: -c.films)
        for c in with_films[:MAX_CLASSES_SHOWN]:
            values[f"markers.prevalence.{c.class_name}"] = c.prevalence
        return values


@dataclass
class MarkerCounts:
    """Streaming counts: films and films with markers per class, and the first EXAMPLES
    marked films by position. Sums and a position-ordered list, so parts merge in any order
    into what one pass would give."""

    class_names: tuple[str, ...]
    films: np.ndarray = field(default=None)  # type: ignore[assignment]
    marked: np.ndarray = field(default=None)  # type: ignore[assignment]
    scanned: int = 0
    found: int = 0
    examples: list[tuple[int, tuple]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.class_names)
        self.films = np.zeros(n, int) if self.films is None else np.asarray(self.films, int)
        self.marked = np.zeros(n, int) if self.marked is None else np.asarray(self.marked, int)

    def add(self, positions: Sequence[int], labels: Sequence[int | None],
            detections: Sequence[Detection]) -> None:
        """One batch: `labels` are class indices, None (or -1) for unlabelled films."""
        for position, label, detection in zip(positions, labels, detections, strict=True):
            self.scanned += 1
            self.found += detection.found
            if label is not None and label >= 0:
                self.films[label] += 1
                self.marked[label] += detection.found
            if detection.found:
                self.examples.append((int(position), detection.boxes))
        self.examples = sorted(self.examples)[:EXAMPLES]

    def merge(self, other: MarkerCounts) -> MarkerCounts:
        if self.class_names != other.class_names:
            raise ValueError("only counts over the same classes merge")
        return MarkerCounts(self.class_names, self.films + other.films,
                            self.marked + other.marked, self.scanned + other.scanned,
                            self.found + other.found,
                            sorted(self.examples + other.examples)[:EXAMPLES])

    def results(self) -> MarkerAuditResult:
        return MarkerAuditResult(
            classes=tuple(_prevalence(name, k, self.films, self.marked)
                          for k, name in enumerate(self.class_names)),
            films=self.scanned, marked=self.found,
            chi_square_p=_chi_square_p(self.films, self.marked),
            examples=tuple(self.examples))


def _prevalence(name: str, k: int, films: np.ndarray, marked: np.ndarray) -> ClassPrevalence:
    rest_films, rest_marked = films.sum() - films[k], marked.sum() - marked[k]
    share = marked[k] / films[k] if films[k] else float("nan")
    rest = rest_marked / rest_films if rest_films else float("nan")
    p_value = float("nan")
    if films[k] and rest_films:
        table = [[marked[k], films[k] - marked[k]], [rest_marked, rest_films - rest_marked]]
        p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    warned = bool(films[k] and rest_films and share - rest >= PREVALENCE_GAP
                  and p_value < ALPHA)
    return ClassPrevalence(name, int(films[k]), int(marked[k]), float(share), float(rest),
                           p_value, warned)


def _chi_square_p(films: np.ndarray, marked: np.ndarray) -> float:
    """Chi-square test of independence over the classes with films; nan when a margin is
    empty (no markers at all, or markers on every film), where it is undefined."""
    present = films > 0
    table = np.stack([marked[present], films[present] - marked[present]])
    if present.sum() < 2 or (table.sum(axis=1) == 0).any():
        return float("nan")
    return float(stats.chi2_contingency(table).pvalue)


def audit_films(pixels: np.ndarray, labels: Sequence[int], class_names: Sequence[str]
                ) -> MarkerAuditResult:
    """The audit of a whole set of films in memory (uint8 (N, H, W[, C])): what `train`
    runs over its training data, before any model exists."""
    counts = MarkerCounts(tuple(class_names))
    counts.add(range(len(labels)), list(labels), detect_batch(pixels))
    return counts.results()


def warning(result: MarkerAuditResult) -> str | None:
    """One line for a person about to train on these films, or None when no class is
    warned about."""
    warned = [c for c in result.classes if c.warned]
    if not warned:
        return None
    named = "; ".join(f"{c.class_name} {c.prevalence:.0%} against {c.rest_prevalence:.0%} of "
                      f"the other classes' films (p = {c.p_value:.2g})" for c in warned)
    return (f"warning: burned-in markers are far more common in one class: {named}; a model "
            "can learn the class from the markers (see the report's Shortcuts section)")
