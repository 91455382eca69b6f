"""The robustness check: each perturbation against a direct version written here, the
alignment of shifted maps, the ordering of stable and unstable explainers, and flip counts."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from report import measures, robustness
from report.cam.engine import Explanation, make_engine
from report.robustness import PERTURBATIONS, Robustness

SIZE = 32


def smooth_images(n: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Images with structure at the scale of a few pixels, each with its own offset and range,
    like preprocessed radiographs rather than white noise."""
    rng = np.random.default_rng(seed)
    base = measures.random_maps((n * channels, SIZE, SIZE), seed=seed, cells=7)
    base = base.reshape(n, channels, SIZE, SIZE).transpose(0, 2, 3, 1)
    scale = rng.uniform(0.5, 3.0, (n, 1, 1, 1))
    offset = rng.uniform(-2.0, 2.0, (n, 1, 1, 1))
    return (base * scale + offset).astype(np.float32)


class FakeEngine:
    """The engine's interface with maps and probabilities from plain functions of the input;
    records the classes and batch sizes it was asked for."""

    def __init__(self, map_of, probabilities_of=None):
        self.map_of = map_of
        self.probabilities_of = probabilities_of or (lambda x: np.tile([0.9, 0.1], (len(x), 1)))
        self.explained_classes, self.batch_sizes = [], []

    def predict(self, images):
        self.batch_sizes.append(len(images))
        return self.probabilities_of(images)

    def explain(self, images, classes):
        self.batch_sizes.append(len(images))
        self.explained_classes.append(np.asarray(classes).copy())
        maps = self.map_of(images).astype(np.float32)
        probabilities = self.probabilities_of(images)
        return Explanation(probabilities, np.asarray(classes), maps, maps)


def first_channel(images):
    """A perfectly equivariant explainer: the map is the image itself."""
    return images[..., 0]


def blurred_first_channel(images):
    """Equivariant and smooth, as a CAM upsampled from a coarse feature map is."""
    return np.stack([cv2.GaussianBlur(image[..., 0], (0, 0), 2.0) for image in images])


class RandomEachCall:
    """An explainer that ignores its input: fresh random maps of CAM smoothness every call."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return measures.random_maps(images.shape[:3], seed=1000 + self.calls)


# --- the perturbations ------------------------------------------------------------------------


def test_noise_has_three_percent_of_each_images_range_as_sd():
    images = smooth_images(6, seed=1)
    noisy, shifts = PERTURBATIONS["noise"].apply(images, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and noisy.shape == images.shape
    assert not shifts.any()
    for image, changed in zip(images, noisy, strict=True):
        added = changed.astype(np.float64) - image
        value_range = image.max() - image.min()
        assert added.std() == pytest.approx(0.03 * value_range, rel=0.05)
        assert abs(added.mean()) < 0.005 * value_range


def test_contrast_is_pulled_towards_each_images_mean_by_ten_percent():
    images = smooth_images(4, seed=2)
    lowered, shifts = PERTURBATIONS["contrast"].apply(images, np.random.default_rng(0))
    for image, changed in zip(images, lowered, strict=True):
        mean = image.astype(np.float64).mean()
        np.testing.assert_allclose(changed, mean + 0.9 * (image - mean), rtol=0, atol=1e-5)
    assert not shifts.any()


def pil_jpeg(image: np.ndarray) -> np.ndarray:
    """Quality-75 JPEG round trip with Pillow, through the image's own 8-bit range."""
    low, high = image.min(), image.max()
    pixels = np.round((image - low) / (high - low) * 255).astype(np.uint8)
    grey = image.shape[-1] == 1
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if grey else pixels).save(buffer, "JPEG", quality=75)
    decoded = np.asarray(Image.open(buffer), dtype=np.float64)
    decoded = decoded[..., None] if grey else decoded
    return decoded / 255 * (high - low) + low


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_a_pillow_round_trip(channels):
    images = smooth_images(3, seed=3, channels=channels)
    # Distinct channels, so that a swapped channel order would show in the colour coding.
    images[..., -1] = -images[..., -1]
    compressed, shifts = PERTURBATIONS["jpeg"].apply(images, np.random.default_rng(0))
    assert compressed.shape == images.shape and not shifts.any()
    for image, changed in zip(images, compressed, strict=True):
        value_range = image.max() - image.min()
        assert np.abs(changed - image).mean() > 1e-3 * value_range  # it did compress
        np.testing.assert_allclose(changed, pil_jpeg(image), rtol=0, atol=1e-4 * value_range)


def test_jpeg_leaves_a_flat_image_alone_and_refuses_two_channels():
    flat = np.full((1, SIZE, SIZE, 3), 0.25, np.float32)
    np.testing.assert_array_equal(PERTURBATIONS["jpeg"].apply(flat, None)[0], flat)
    with pytest.raises(ValueError, match="channels"):
        PERTURBATIONS["jpeg"].apply(np.zeros((1, SIZE, SIZE, 2), np.float32), None)


def test_shift_moves_each_image_four_pixels_and_repeats_the_edge():
    images = smooth_images(40, seed=4)
    moved, shifts = PERTURBATIONS["shift"].apply(images, np.random.default_rng(0))
    assert set(map(tuple, shifts)) == {(4, 4), (4, -4), (-4, 4), (-4, -4)}
    for image, changed, (dy, dx) in zip(images, moved, shifts, strict=True):
        for y, x in [(10, 12), (0, 0), (SIZE - 1, 5), (7, SIZE - 1)]:
            source = np.clip(y - dy, 0, SIZE - 1), np.clip(x - dx, 0, SIZE - 1)
            np.testing.assert_array_equal(changed[y, x], image[source])


# --- alignment and ordering -------------------------------------------------------------------


def test_aligning_a_shifted_map_recovers_the_original():
    images = smooth_images(12, seed=5)
    maps = first_channel(images)
    result = robustness.robustness(FakeEngine(first_channel), images, maps,
                                   np.zeros(12, int), batch_size=5)
    np.testing.assert_allclose(result.spearman["shift"], 1.0, atol=1e-9)
    np.testing.assert_allclose(result.ssim["shift"], 1.0, atol=1e-6)
    # The same maps compared in place, without moving them back, agree far less.
    moved, _ = PERTURBATIONS["shift"].apply(images, np.random.default_rng(0))
    unaligned = measures.rank_correlation(maps, first_channel(moved))
    assert np.mean(unaligned) < 0.5


def test_a_stable_explainer_beats_one_that_ignores_the_input():
    images = smooth_images(30, seed=6)
    classes = np.zeros(30, int)
    maps = blurred_first_channel(images)
    stable = robustness.robustness(FakeEngine(blurred_first_channel), images, maps, classes, 8)
    unstable = robustness.robustness(FakeEngine(RandomEachCall()), images, maps, classes, 8)
    reference = stable.metrics()["robustness.random.spearman"]
    assert abs(reference) < 0.15 and stable.metrics()["robustness.random.ssim"] < 0.3
    for name in PERTURBATIONS:
        assert np.nanmean(stable.spearman[name]) > 0.9
        assert np.nanmean(stable.ssim[name]) > 0.8
        assert abs(np.nanmean(unstable.spearman[name]) - reference) < 0.15
        assert np.nanmean(unstable.ssim[name]) < 0.4


# --- flips, classes, batches ------------------------------------------------------------------

THRESHOLD = 1.0


def by_contrast(images):
    """Class 1 when the image's standard deviation passes THRESHOLD, else class 0."""
    high = images.std(axis=(1, 2, 3)) > THRESHOLD
    return np.column_stack([~high, high]).astype(np.float32)


def test_flips_count_the_images_the_contrast_change_pushes_below_the_threshold():
    images = smooth_images(20, seed=7)
    images -= images.mean(axis=(1, 2, 3), keepdims=True)
    # std targets: far below, far above, and just above the threshold (which 10% less
    # contrast takes below it).
    targets = np.array([0.4] * 6 + [2.5] * 9 + [1.05] * 5) * THRESHOLD
    images *= (targets / images.std(axis=(1, 2, 3)))[:, None, None, None]
    engine = FakeEngine(first_channel, by_contrast)
    # Explain a class nobody predicts: flips compare predictions, not the explained class.
    classes = np.full(20, 1)
    result = robustness.robustness(engine, images, first_channel(images), classes, 6)
    assert result.flips["contrast"] == 5
    assert result.flips["noise"] == 0  # noise only adds variance: nobody crosses downwards
    np.testing.assert_array_equal(np.concatenate(engine.explained_classes),
                                  np.tile(classes, len(PERTURBATIONS)))
    assert max(engine.batch_sizes) <= 6
    assert result.n == 20


# --- reporting and determinism ----------------------------------------------------------------


def test_metrics_names_rows_and_determinism():
    images = smooth_images(8, seed=8)
    maps = first_channel(images)
    engine = FakeEngine(first_channel)

    def run(seed):
        return robustness.robustness(engine, images, maps, np.zeros(8, int), 4, seed=seed)

    first, again, other = run(0), run(0), run(1)
    expected = {f"robustness.{name}.{measure}" for name in PERTURBATIONS
                for measure in ("ssim", "spearman", "flips")}
    expected |= {"robustness.random.ssim", "robustness.random.spearman"}
    assert set(first.metrics()) == expected
    assert all(isinstance(value, float) for value in first.metrics().values())
    assert first.metrics() == again.metrics()
    assert first.metrics()["robustness.noise.ssim"] != other.metrics()["robustness.noise.ssim"]
    rows = first.rows()
    assert [row[0] for row in rows[:-1]] == [p.label for p in PERTURBATIONS.values()]
    assert rows[-1][3] is None and all(row[4] == 8 for row in rows)
    assert rows[0][1] == pytest.approx(np.mean(first.ssim["noise"]))


def test_means_leave_out_flat_maps():
    result = Robustness(
        ssim={"noise": np.array([0.5, np.nan])}, spearman={"noise": np.array([np.nan, np.nan])},
        flips={"noise": 1}, n=2, random_ssim=np.array([0.1, 0.3]),
        random_spearman=np.array([0.0, np.nan]))
    metrics = result.metrics()
    assert metrics["robustness.noise.ssim"] == 0.5
    assert np.isnan(metrics["robustness.noise.spearman"])
    assert metrics["robustness.random.ssim"] == pytest.approx(0.2)


def test_flat_maps_have_no_similarity():
    images = smooth_images(3, seed=9)
    flat = FakeEngine(lambda x: np.zeros(x.shape[:3]))
    result = robustness.robustness(flat, images, np.zeros((3, SIZE, SIZE)), np.zeros(3, int), 3)
    assert np.isnan(result.ssim["jpeg"]).all() and np.isnan(result.spearman["jpeg"]).all()


# --- a real model -----------------------------------------------------------------------------


def test_gradcam_on_a_tiny_model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(8, 3, activation="relu"),
        layers.Conv2D(8, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax"),
    ])
    engine = make_engine("gradcam", model)
    images = smooth_images(6, seed=10)
    explanation = engine.explain(images)
    result = robustness.robustness(engine, images, explanation.maps,
                                   explanation.class_index, batch_size=4)
    for name in PERTURBATIONS:
        assert result.ssim[name].shape == result.spearman[name].shape == (6,)
        assert 0 <= result.flips[name] <= 6
    metrics = result.metrics()
    # Gaussian noise and a 10% contrast change hardly move a CNN's Grad-CAM: far above chance.
    for name in ("noise", "contrast"):
        assert metrics[f"robustness.{name}.spearman"] > metrics["robustness.random.spearman"] + 0.3


def test_the_labels_say_what_the_constants_do():
    # The labels are written out for the translation catalog; they must not drift.
    from report.robustness import (
        CONTRAST,
        JPEG_QUALITY,
        NOISE_SD,
        PERTURBATIONS,
        SHIFT_PIXELS,
    )

    assert f"{NOISE_SD:.0%}" in PERTURBATIONS["noise"].label
    assert f"{SHIFT_PIXELS} px" in PERTURBATIONS["shift"].label
    assert f"quality {JPEG_QUALITY}" in PERTURBATIONS["jpeg"].label
    assert f"{1 - CONTRAST:.0%}" in PERTURBATIONS["contrast"].label
