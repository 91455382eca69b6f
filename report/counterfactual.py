"""Shortcuts found by their effect: hide what lies outside the lungs and watch the predictions.

Where a saliency map sits says little on its own (DeGrave et al. 2021): a marker's size, its
place or a coarse map moves the map's share under any threshold. This module asks the model
instead. On a sample of films it hides a suspect region (everything outside the lung fields;
the border band alone), fills it with a neutral fill, predicts again, and compares what
changed with a CONTROL that hides a region of the same area inside the lungs. A class whose
predictions depend on what lies outside the lungs far more than on the lungs is flagged, with
the effect size and its paired bootstrap interval.

Cost: one predict pass per hidden stack (the region and its control, for each of the two
conditions): 4 passes over at most SAMPLE_IMAGES films, plus one for the original films when
the caller does not pass their probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from report import measures

SAMPLE_IMAGES = 64  # films tested: a constant, so the cost does not grow with the data set
# Neutral fill: normalised convolution with a Gaussian of this sigma (share of the shorter
# side), drawn towards the reference film with weight FILL_PRIOR where no kept pixel is near.
FILL_SIGMA = 0.06
FILL_PRIOR = 1e-3
WORKING_SIGMA = 3.0  # the fill is computed at the size where sigma is this many pixels
CONDITIONS = ("outside_lungs", "border")
MIN_IMAGES = 5  # a class predicted for fewer sample films is reported, not tested
BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95
# A class is flagged when, for either condition, the lower bound of the 95% interval of
# (flip rate hiding the region - flip rate hiding the control) is above FLIP_EFFECT_FLAG.
FLIP_EFFECT_FLAG = 0.2


# --- the neutral fill -----------------------------------------------------------------------


def neutral_fill(images: np.ndarray, hidden: np.ndarray, reference: np.ndarray | None = None,
                 sigma_fraction: float = FILL_SIGMA, prior: float = FILL_PRIOR) -> np.ndarray:
    """`images` (B, H, W, C) float with the `hidden` (B, H, W) or (H, W) pixels replaced by

        fill = r + G * ((x - r) k) / (G * k + a)

    per channel, where r is the `reference` film (H, W, C) (when None, each film's own mean
    over its kept pixels, a constant), k = 1 - hidden the kept mask, G a Gaussian of sigma =
    sigma_fraction * min(H, W) (cv2's kernel, radius ceil(3 sigma), zero outside the film)
    and a = `prior`. This is normalised convolution (Knutsson & Westin 1993) of the film's
    difference to the reference, from the kept pixels only: next to kept pixels the fill
    follows their local brightness, so no seam appears; deeper than a few sigma into the
    region, where G * k falls under a, it becomes the reference itself, without a division
    by zero. (With r the kept mean this is (G * (x k) + a r) / (G * k + a).)

    Why this fill: it carries no information from the hidden region itself (a blur of the
    whole film would smear a bright marker into its own hole, and a median of the region
    would keep its level); it is not black (a black hole is a new, strong feature on its
    own); and it costs two blurs per film, where inpainting (cv2.inpaint, Telea) is slow on
    regions covering most of the film. With `reference_film` (the sample's per-pixel median)
    a hidden region gets what a typical film of the sample has there, the body's outline
    included, instead of a smooth plain: hiding three quarters of a film then still leaves
    a chest film, which a model that reads the lungs classifies as before. The film's own
    brightness is not carried across the region (only within a few sigma of its edge): a
    film with dense lungs does not get a brighter corner.

    Where sigma exceeds WORKING_SIGMA pixels, the correction term is computed on the film
    shrunk (area-averaged) by sigma / WORKING_SIGMA and resized back linearly."""
    images = np.asarray(images, np.float32)
    kept = np.broadcast_to(~np.asarray(hidden, bool), images.shape[:3]).astype(np.float32)
    sigma = sigma_fraction * min(images.shape[1:3])
    # The fill is smooth on the scale of sigma: computing it where sigma is WORKING_SIGMA
    # pixels and resizing it back costs a fraction of the full-size blur (tested against it).
    factor = max(1.0, sigma / WORKING_SIGMA)
    if reference is None:
        # Each film's own mean over its kept pixels, per channel.
        means = (images * kept[..., None]).sum(axis=(1, 2)) / np.maximum(
            kept.sum(axis=(1, 2)), 1.0)[:, None]
        base = np.broadcast_to(means[:, None, None, :], images.shape)
    else:
        base = np.broadcast_to(np.asarray(reference, np.float32), images.shape)
    filled = np.empty_like(images)
    for i, keep in enumerate(kept):
        kept_pixels = keep[..., None] > 0
        if kept_pixels.all():
            filled[i] = images[i]
            continue
        difference = images[i] - base[i]
        difference *= keep[..., None]
        np.add(base[i], _smooth_correction(difference, keep, sigma, prior, factor),
               out=filled[i])
        np.copyto(filled[i], images[i], where=kept_pixels)
    return filled


def _smooth_correction(difference, keep, sigma, prior, factor) -> np.ndarray:
    """G * difference / (G * keep + prior), (H, W, C); at 1/factor of the size when factor
    > 1 (area-averaged down, which mixes kept pixels only since hidden ones are zero in both
    planes; linearly back up)."""
    height, width = keep.shape
    if factor > 1.0:
        small = (max(1, round(width / factor)), max(1, round(height / factor)))
        keep = cv2.resize(keep, small, interpolation=cv2.INTER_AREA)
        difference = cv2.resize(difference, small, interpolation=cv2.INTER_AREA)
        sigma = sigma * small[1] / height
    weight = _gaussian(keep, sigma).reshape(*keep.shape, 1)
    correction = _gaussian(difference, sigma).reshape(*keep.shape, -1) / (weight + prior)
    if factor > 1.0:
        correction = cv2.resize(correction, (width, height), interpolation=cv2.INTER_LINEAR)
    return correction.reshape(height, width, -1)


def reference_film(images: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
    """(H, W, C) per-pixel median of the sample's films: a typical film, without what only a
    minority of films carry at a place (a marker on fewer than half of them). `usable`
    (bool per film): the films to take it from, those without a burned-in marker
    (marker_audit), when at least MIN_IMAGES are; a marker on most of the sample would
    otherwise be part of the median and painted back into every hole."""
    images = np.asarray(images, np.float32)
    if usable is not None and np.count_nonzero(usable) >= MIN_IMAGES:
        images = images[np.asarray(usable, bool)]
    return np.median(images, axis=0)


def _gaussian(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with zero outside the film: the normalised convolution's denominator
    then counts only real pixels."""
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(plane, (size, size), sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_CONSTANT)


# --- regions --------------------------------------------------------------------------------


def lung_fields(masks: Sequence[np.ndarray | None], shape: tuple[int, int]
                ) -> tuple[np.ndarray, int]:
    """(B, H, W) lung fields: each film's mask from the data when it has a non-empty one, else
    the PA prior (`measures.estimated_lung_fields`); and how many films used the prior."""
    prior = measures.estimated_lung_fields(shape)
    fields = [mask if mask is not None and mask.any() else prior for mask in masks]
    estimated = sum(field is prior for field in fields)
    return np.stack(fields).astype(bool), estimated


def control_region(lungs: np.ndarray, area: int) -> np.ndarray:
    """The `area` pixels of the lung fields (H, W) farthest from the lungs' boundary: the
    lung cores, one blob per lung, hidden as a block as the suspect region is.

    When the lungs hold fewer than `area` pixels (hiding everything outside the lungs hides
    about 3/4 of a film, the lungs are about 1/4), the control is the whole lung fields. The
    control then hides LESS than the suspect region, yet all of the lungs' evidence: for a
    model that reads the lungs, hiding them changes more predictions than hiding the rest,
    so the effect (region minus control) is negative or small; for a model that reads what
    lies outside, the control changes few predictions and the effect is large. Rescaling the
    rates per unit area instead would assume effects grow linearly with area, which a flip
    (a threshold) does not. Ties in distance go in raster order, so the region is
    reproducible."""
    lungs = np.asarray(lungs, bool)
    if area >= lungs.sum():
        return lungs.copy()
    depth = cv2.distanceTransform(lungs.astype(np.uint8), cv2.DIST_L2, 5)
    order = np.argsort(-depth.ravel(), kind="stable")[:area]
    control = np.zeros(lungs.size, bool)
    control[order] = True
    return control.reshape(lungs.shape)


def hidden_regions(lungs: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Condition -> ((B, H, W) region hidden, (B, H, W) its control inside the lungs), for
    (B, H, W) lung fields: "outside_lungs" hides everything but the lungs; "border" hides
    `measures.border_band` (8% of the shorter side on every edge, where markers, text and
    rulers sit) and nothing else."""
    lungs = np.asarray(lungs, bool)
    outside = ~lungs
    border = np.broadcast_to(measures.border_band(lungs.shape[1:]), lungs.shape)
    regions = {}
    for name, region in (("outside_lungs", outside), ("border", border)):
        controls = np.stack([control_region(lung, int(hidden.sum()))
                             for lung, hidden in zip(lungs, region, strict=True)])
        regions[name] = (np.array(region), controls)
    return regions


# --- the test -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ConditionEffect:
    """One class under one condition, over the sample films the model predicted as it."""

    condition: str  # "outside_lungs" or "border"
    flip_rate: float  # share whose predicted class changes when the region is hidden
    control_flip_rate: float  # the same, hiding the control inside the lungs
    drop: float  # mean drop of the class's probability, region hidden
    control_drop: float
    flip_effect: Interval  # flip_rate - control_flip_rate, paired bootstrap interval
    drop_effect: Interval  # drop - control_drop
    hidden_share: float  # mean share of the film hidden
    control_share: float
    flagged: bool  # flip_effect.low > FLIP_EFFECT_FLAG


@dataclass(frozen=True)
class ClassEffect:
    class_name: str
    index: int
    images: int  # sample films predicted as this class
    conditions: tuple[ConditionEffect, ...]  # empty when images < MIN_IMAGES

    @property
    def tested(self) -> bool:
        return bool(self.conditions)

    @property
    def flagged_by(self) -> tuple[str, ...]:
        return tuple(c.condition for c in self.conditions if c.flagged)

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_by)

    def condition(self, name: str) -> ConditionEffect | None:
        return next((c for c in self.conditions if c.condition == name), None)


@dataclass(frozen=True)
class CounterfactualResult:
    classes: tuple[ClassEffect, ...]
    sample_images: int
    lungs_estimated: int  # films whose lung fields came from the PA prior
    threshold: float = FLIP_EFFECT_FLAG
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0

    @property
    def flagged_classes(self) -> list[str]:
        return [c.class_name for c in self.classes if c.flagged]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a tracking store: counterfactual.<measure>.<condition>.<class>."""
        values: dict[str, float] = {"counterfactual.flagged_classes":
                                    float(len(self.flagged_classes)),
                                    "counterfactual.sample_images": float(self.sample_images)}
        for effect in self.classes:
            for c in effect.conditions:
                key = f"{c.condition}.{effect.class_name}"
                values[f"counterfactual.flip_rate.{key}"] = c.flip_rate
                values[f"counterfactual.control_flip_rate.{key}"] = c.control_flip_rate
                values[f"counterfactual.flip_effect.{key}"] = c.flip_effect.estimate
                values[f"counterfactual.flip_effect_low.{key}"] = c.flip_effect.low
                values[f"counterfactual.drop_effect.{key}"] = c.drop_effect.estimate
        return values


def counterfactual_test(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                        lungs: np.ndarray, class_names: Sequence[str],
                        probabilities: np.ndarray | None = None, *, lungs_estimated: int = 0,
                        seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                        batch_size: int = 32, threshold: float = FLIP_EFFECT_FLAG,
                        sample_images: int = SAMPLE_IMAGES,
                        unmarked: np.ndarray | None = None) -> CounterfactualResult:
    """Per class c, over the films the model predicts as c (argmax of `probabilities`, the
    model's outputs for `inputs`; predicted here when None):

        flip_i(R) = [argmax p(fill(x_i, R)) != c]      drop_i(R) = p_c(x_i) - p_c(fill(x_i, R))

    for each condition's region R and its control R' (`hidden_regions`), and the paired
    differences d_i = flip_i(R) - flip_i(R') (and the same for drops). The effect is mean d,
    its interval the 2.5th and 97.5th percentiles of mean d over `resamples` bootstrap
    resamples of the films (`paired_interval`). Flagged: the interval's low end is above
    `threshold`.

    `predict`: (N, H, W, C) model inputs -> (N, classes) probabilities (an engine's
    `predict`). `inputs`: the sample's model inputs (at most `sample_images` are used, the
    first ones). `lungs`: (N, H, W) bool lung fields (`lung_fields`). `unmarked`: (N,) bool,
    the films without a burned-in marker, from which the fill's reference film is taken
    (`reference_film`). Deterministic for a seed.
    """
    inputs = np.asarray(inputs, np.float32)[:sample_images]
    lungs = np.asarray(lungs, bool)[: len(inputs)]
    if probabilities is None:
        probabilities = _predict_in_batches(predict, inputs, batch_size)
    probabilities = np.asarray(probabilities, float)[: len(inputs)]
    predicted = probabilities.argmax(axis=1)
    reference = reference_film(inputs, None if unmarked is None
                               else np.asarray(unmarked, bool)[: len(inputs)])
    hidden = {}
    for name, (region, control) in hidden_regions(lungs).items():
        for key, mask in ((name, region), (f"{name} control", control)):
            filled = neutral_fill(inputs, mask, reference)
            hidden[key] = (_predict_in_batches(predict, filled, batch_size),
                           float(mask.mean()))
    classes = tuple(
        _class_effect(index, str(class_name), predicted, probabilities, hidden, seed,
                      resamples, threshold)
        for index, class_name in enumerate(class_names))
    return CounterfactualResult(classes, len(inputs), lungs_estimated, threshold, resamples,
                                seed)


def _class_effect(index, class_name, predicted, probabilities, hidden, seed, resamples,
                  threshold) -> ClassEffect:
    chosen = predicted == index
    count = int(chosen.sum())
    if count < MIN_IMAGES:
        return ClassEffect(class_name, index, count, ())
    original = probabilities[chosen, index]
    conditions = []
    for number, name in enumerate(CONDITIONS):
        (region, share), (control, control_share) = hidden[name], hidden[f"{name} control"]
        flips = region[chosen].argmax(axis=1) != index
        control_flips = control[chosen].argmax(axis=1) != index
        drops = original - region[chosen, index]
        control_drops = original - control[chosen, index]
        flip_effect, drop_effect = paired_interval(
            np.stack([flips.astype(float) - control_flips, drops - control_drops]),
            resamples, (seed, index, number))
        conditions.append(ConditionEffect(
            name, float(flips.mean()), float(control_flips.mean()), float(drops.mean()),
            float(control_drops.mean()), flip_effect, drop_effect, share, control_share,
            flagged=flip_effect.low > threshold))
    return ClassEffect(class_name, index, count, tuple(conditions))


def paired_interval(differences: np.ndarray, resamples: int, seed, level: float = LEVEL
                    ) -> list[Interval]:
    """Mean and percentile bootstrap interval of each row of `differences` (M, n), the rows
    resampled together (the same films in every resample, so paired measures stay paired):
    one (resamples, n) draw of film indices from numpy's default_rng(seed), then
    percentiles (1 - level)/2 and (1 + level)/2 of the resampled means."""
    differences = np.atleast_2d(np.asarray(differences, float))
    n = differences.shape[1]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    means = differences[:, picks].mean(axis=2)  # (M, resamples)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=1)
    return [Interval(float(row.mean()), float(lo), float(hi))
            for row, lo, hi in zip(differences, low, high, strict=True)]


def _predict_in_batches(predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(predict(images[i : i + batch_size]))
                           for i in range(0, len(images), batch_size)])
