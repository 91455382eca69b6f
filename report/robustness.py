"""Do the maps survive realistic changes in how an image was acquired?

A radiograph of the same patient differs from one scan to the next by sensor noise, a few
pixels of positioning, JPEG compression on the way through a PACS, and the window a
technician chose. An explanation worth trusting should barely move under such changes
(the input-invariance / stability requirement of Kindermans et al. 2019, "The (un)reliability
of saliency methods", and Alvarez-Melis and Jaakkola 2018, "On the robustness of
interpretability methods"). Each change here is applied to the model inputs, the perturbed
images are explained for the same classes as the originals, and each new map is compared with
its original by SSIM (Wang et al. 2004) and Spearman rank correlation. Random maps of the same
smoothness give the floor a map reaches by chance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from report import measures
from report.i18n import N_

NOISE_SD = 0.03  # of each image's value range
SHIFT_PIXELS = 4
JPEG_QUALITY = 75
CONTRAST = 0.9  # values pulled towards the image's mean: 10% less contrast


@dataclass(frozen=True)
class Perturbation:
    """`apply(inputs (N, H, W, C), rng)` -> (perturbed inputs, shifts (N, 2)): the (dy, dx)
    pixels each image's content moved, zeros where nothing moved, so that a map of the
    perturbed image can be brought back to the original frame."""

    label: str
    apply: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _unmoved(inputs: np.ndarray) -> np.ndarray:
    return np.zeros((len(inputs), 2), dtype=int)


def _value_range(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's (low, span) over all its pixels and channels, shaped to broadcast."""
    low = inputs.min(axis=(1, 2, 3), keepdims=True)
    return low, inputs.max(axis=(1, 2, 3), keepdims=True) - low


def add_noise(inputs: np.ndarray, rng: np.random.Generator):
    _, span = _value_range(inputs)
    noise = rng.standard_normal(inputs.shape, dtype=np.float32) * (NOISE_SD * span)
    return (inputs + noise).astype(np.float32), _unmoved(inputs)


def shift(inputs: np.ndarray, rng: np.random.Generator):
    """Each image moved SHIFT_PIXELS in y and in x, each with a random sign; the uncovered
    border repeats the edge pixels, as a detector's edge rows would."""
    shifts = rng.choice([-SHIFT_PIXELS, SHIFT_PIXELS], size=(len(inputs), 2))
    pad = SHIFT_PIXELS
    padded = np.pad(inputs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = inputs.shape[1:3]
    moved = np.stack([
        image[pad - dy : pad - dy + height, pad - dx : pad - dx + width]
        for image, (dy, dx) in zip(padded, shifts, strict=True)
    ])
    return moved.astype(np.float32), shifts


def jpeg(inputs: np.ndarray, rng: np.random.Generator):
    """JPEG at quality 75 through each image's own 8-bit range, which undoes exactly for any
    linear preprocessing. One channel is coded as grey; three as colour (RGB inputs, which
    OpenCV expects as BGR). A flat image has no range to quantise and stays as it is."""
    if inputs.shape[-1] not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {inputs.shape[-1]}")
    return np.stack([_jpeg_round_trip(image) for image in inputs]), _unmoved(inputs)


def _jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image.astype(np.float32)
    pixels = np.round((image - low) / (high - low) * 255).astype(np.uint8)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., ::-1]
    _, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded[..., ::-1]
    return (decoded.astype(np.float32) / 255 * (high - low) + low).astype(np.float32)


def lower_contrast(inputs: np.ndarray, rng: np.random.Generator):
    mean = inputs.mean(axis=(1, 2, 3), keepdims=True)
    return (mean + CONTRAST * (inputs - mean)).astype(np.float32), _unmoved(inputs)


# Labels are English messages for the catalog (translated where shown), so they are written
# out rather than formatted from the constants above; tests/test_robustness.py keeps them in
# step with those.
PERTURBATIONS: dict[str, Perturbation] = {
    "noise": Perturbation(N_("Gaussian noise (sd 3%)"), add_noise),
    "shift": Perturbation(N_("shift by 4 px in x and y"), shift),
    "jpeg": Perturbation(N_("JPEG at quality 75"), jpeg),
    "contrast": Perturbation(N_("contrast lowered by 10%"), lower_contrast),
}
RANDOM_LABEL = N_("random maps of the same smoothness (chance)")


@dataclass(frozen=True)
class Robustness:
    ssim: dict[str, np.ndarray]  # perturbation name -> (n,) per image, nan for a flat map
    spearman: dict[str, np.ndarray]  # perturbation name -> (n,) per image, nan for a flat map
    flips: dict[str, int]  # perturbation name -> images whose predicted class changed
    n: int
    random_ssim: np.ndarray  # (n,) original maps against random maps: the chance floor
    random_spearman: np.ndarray

    def metrics(self) -> dict[str, float]:
        """Flat MLflow names: robustness.<perturbation>.ssim/.spearman/.flips and
        robustness.random.ssim/.spearman (means over the images with a defined value)."""
        flat = {}
        for name in self.ssim:
            flat[f"robustness.{name}.ssim"] = _mean(self.ssim[name])
            flat[f"robustness.{name}.spearman"] = _mean(self.spearman[name])
            flat[f"robustness.{name}.flips"] = float(self.flips[name])
        flat["robustness.random.ssim"] = _mean(self.random_ssim)
        flat["robustness.random.spearman"] = _mean(self.random_spearman)
        return flat

    @property
    def mean_spearman(self) -> float:
        """One number per method: the mean over the perturbations of their mean Spearman."""
        means = [_mean(values) for values in self.spearman.values()]
        finite = [value for value in means if np.isfinite(value)]
        return float(np.mean(finite)) if finite else float("nan")

    def rows(self) -> list[tuple[str, float, float, int | None, int]]:
        """(label, mean SSIM, mean Spearman, flips, n) per perturbation, then the random
        reference (flips None: no image was changed)."""
        rows = [(PERTURBATIONS[name].label, _mean(self.ssim[name]), _mean(self.spearman[name]),
                 self.flips[name], self.n) for name in self.ssim]
        rows.append((RANDOM_LABEL, _mean(self.random_ssim), _mean(self.random_spearman),
                     None, self.n))
        return rows


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def robustness(engine, inputs, maps, classes, batch_size: int, seed: int = 0) -> Robustness:
    """Every perturbation's maps against the original `maps` (which explain `classes`), and
    how many predictions each perturbation flips. Each perturbation draws from its own
    generator seeded by (seed, its place), so the results do not depend on which others run."""
    inputs = np.asarray(inputs, np.float32)
    classes = np.asarray(classes, np.int32)
    predicted = np.concatenate([engine.predict(inputs[i : i + batch_size])
                                for i in range(0, len(inputs), batch_size)]).argmax(axis=1)
    ssim, spearman, flips = {}, {}, {}
    for place, (name, perturbation) in enumerate(PERTURBATIONS.items()):
        perturbed, shifts = perturbation.apply(inputs, np.random.default_rng([seed, place]))
        new_maps, probabilities = _explained(engine, perturbed, classes, batch_size)
        ssim[name], spearman[name] = _similarities(maps, new_maps, shifts)
        flips[name] = int(np.sum(probabilities.argmax(axis=1) != predicted))
    random = measures.random_maps(np.shape(maps), seed=seed)
    random_ssim, random_spearman = _similarities(maps, random, _unmoved(random))
    return Robustness(ssim, spearman, flips, len(inputs), random_ssim, random_spearman)


def _explained(engine, inputs, classes, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    explanations = [engine.explain(inputs[i : i + batch_size], classes[i : i + batch_size])
                    for i in range(0, len(inputs), batch_size)]
    return (np.concatenate([e.maps for e in explanations]),
            np.concatenate([e.probabilities for e in explanations]))


def _similarities(maps, others, shifts) -> tuple[np.ndarray, np.ndarray]:
    """(SSIM, Spearman) per image, each pair compared on the region both frames show."""
    pairs = [aligned(a, b, shift) for a, b, shift in zip(maps, others, shifts, strict=True)]
    return (np.array([_ssim(a, b) for a, b in pairs]),
            np.array([measures.rank_correlation(a[None], b[None])[0] for a, b in pairs]))


def aligned(original: np.ndarray, moved: np.ndarray, shift) -> tuple[np.ndarray, np.ndarray]:
    """The parts of two (H, W) maps that show the same content, when `moved`'s content sits
    (dy, dx) = `shift` pixels away from `original`'s; edge-filled pixels are left out."""
    dy, dx = (int(value) for value in shift)
    height, width = original.shape
    return (original[max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)],
            moved[max(dy, 0) : height - max(-dy, 0), max(dx, 0) : width - max(-dx, 0)])


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the min-max normalised maps, so that it compares shapes, not scales; nan when
    either map is flat (it has no shape; two flat maps would otherwise score a perfect 1)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(structural_similarity(_unit(a), _unit(b), data_range=1.0))


def _unit(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / np.ptp(values)
