"""The checks that drive the model: sanity check, faithfulness, and the streaming scores."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest
from keras import layers

from report import checks, measures
from report.cam.engine import Explanation, GradCAM
from report.cam.layers import trace_model
from report.cam.normalise import per_image
from report.checks import (
    QualityAccumulator,
    QualityPlan,
    cascading_randomisation,
    faithfulness,
)
from report.data.records import LoadedImage

SIZE = 32


def small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(8, 3, activation="relu", name="c1"),
        layers.Conv2D(8, 3, activation="relu", name="c2"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax", name="out"),
    ])


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


class InputEdges:
    """An 'explainer' whose maps depend on the image only, like an edge detector: the case
    the sanity check exists to catch (Adebayo et al. 2018)."""

    def __init__(self, model):
        self.model, self.input_shape = model, (SIZE, SIZE, 3)
        self.trace = trace_model(model, self.input_shape)

    def explain(self, inputs, classes=None):
        edges = np.abs(np.diff(inputs[..., 0], axis=1, append=0)) + inputs[..., 1]
        return Explanation(np.zeros((len(inputs), 3)), np.zeros(len(inputs), int), edges, edges)


def test_sanity_check_passes_for_gradcam_and_restores_the_weights():
    model = small_model()
    before = [w.copy() for w in model.get_weights()]
    engine = GradCAM(model)
    sanity = cascading_randomisation(engine, images(6), np.zeros(6, int), max_stages=3)
    assert len(sanity.stages) == 3 and sanity.stages[0] == "out"
    assert sanity.passed, sanity.final_correlation
    for original, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, now)


def test_sanity_check_fails_for_maps_that_ignore_the_model():
    sanity = cascading_randomisation(InputEdges(small_model()), images(6), np.zeros(6, int),
                                     max_stages=3)
    assert not sanity.passed
    assert sanity.final_correlation == pytest.approx(1.0)


@dataclass
class TextureModel:
    """Class 0's probability is the stripe texture of the left half, a known answer: removing
    the left half's pixels (deletion) or blurring them (insertion's start) takes it away."""

    def predict(self, inputs):
        left = np.abs(np.diff(inputs[:, :, : SIZE // 2, 0], axis=2)).mean(axis=(1, 2))
        return np.stack([left, 1 - left, np.zeros_like(left)], axis=1)


def test_faithful_maps_beat_random_ones_on_deletion_and_insertion():
    inputs = np.zeros((4, SIZE, SIZE, 3), np.float32)
    inputs[:, :, : SIZE // 2 : 2] = 1.0  # vertical stripes on the left, black on the right
    truth = np.zeros((4, SIZE, SIZE), np.float32)
    truth[:, :, : SIZE // 2] = 1.0 + np.linspace(0, 0.1, SIZE // 2)  # the region that matters
    result = faithfulness(TextureModel(), inputs, truth, np.zeros(4, int), np.zeros(4, int),
                          steps=8, batch_size=3)
    deletion = result.curves["deletion"].mean(axis=0)
    # Removing the left half first: the score is gone once half the pixels are.
    assert deletion[0] == pytest.approx(1.0) and deletion[4] == pytest.approx(0.0)
    insertion = result.curves["insertion"].mean(axis=0)
    assert insertion[0] < 0.2 and insertion[4] == pytest.approx(1.0)
    auc = {k: np.trapezoid(v.mean(axis=0), result.fractions) for k, v in result.curves.items()}
    assert auc["deletion"] < auc["random deletion"]
    assert auc["insertion"] > auc["random insertion"]
    assert result.average_drop["cam"] < result.average_drop["random"]


def reference_faithfulness(model, inputs, maps, classes, steps: int) -> dict[str, np.ndarray]:
    """Petsiuk et al. (2018) written out image by image and step by step: at fraction f the
    round(f * H * W) most important pixels (stable order) are set to 0 (deletion) or put
    back into the blurred image (insertion), and the explained class's probability is read
    from a forward pass of that one image."""
    height, width = maps.shape[1:]
    curves = {"deletion": [], "insertion": []}
    for image, heatmap, c in zip(inputs, maps, classes, strict=True):
        order = np.argsort(-heatmap.ravel(), kind="stable")
        blurred = checks._blur(image)
        deletion, insertion = [], []
        for fraction in np.linspace(0, 1, steps + 1):
            changed = np.zeros(height * width, bool)
            changed[order[: round(fraction * height * width)]] = True
            changed = changed.reshape(height, width, 1)
            for curve, perturbed in ((deletion, np.where(changed, 0.0, image)),
                                     (insertion, np.where(changed, image, blurred))):
                probabilities = model(perturbed[None].astype(np.float32), training=False)
                curve.append(float(np.asarray(probabilities)[0, c]))
        curves["deletion"].append(deletion)
        curves["insertion"].append(insertion)
    return {name: np.array(rows) for name, rows in curves.items()}


@pytest.mark.parametrize("n, batch_size", [(5, 4), (3, 32)])  # uneven chunks; under a batch
def test_faithfulness_matches_the_per_image_reference(n, batch_size):
    model = small_model()
    inputs = images(n, seed=3)
    maps = np.random.default_rng(4).random((n, SIZE, SIZE), dtype=np.float32)
    classes = np.arange(n) % 3
    result = faithfulness(GradCAM(model), inputs, maps, classes, np.zeros(n, int), steps=4,
                          batch_size=batch_size)
    expected = reference_faithfulness(model, inputs, maps, classes, steps=4)
    for name in ("deletion", "insertion"):
        np.testing.assert_allclose(result.curves[name], expected[name], atol=1e-5)
    random = measures.random_maps(maps.shape, seed=1234)
    expected_random = reference_faithfulness(model, inputs, random, classes, steps=4)
    np.testing.assert_allclose(result.curves["random deletion"],
                               expected_random["deletion"], atol=1e-5)
    weighted = inputs * per_image(maps)[..., None]
    explained = np.asarray(model(weighted, training=False))[np.arange(n), classes]
    original = expected["deletion"][:, 0]
    assert result.average_drop["cam"] == pytest.approx(
        measures.average_drop(original, explained), abs=1e-5)


def loaded(lesion: np.ndarray | None, lungs: np.ndarray | None) -> LoadedImage:
    return LoadedImage(np.zeros((SIZE, SIZE, 3), np.uint8), "digest", lesion, lungs)


def test_accumulator_scores_localisation_and_flags_border_maps():
    plan = QualityPlan("fast", faithfulness_images=2, steps=2, sanity_images=1,
                       sanity_stages=1)
    accumulator = QualityAccumulator(plan, ("A", "B"), (SIZE, SIZE))
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[12:20, 12:20] = True
    lungs = np.zeros((SIZE, SIZE), bool)
    lungs[6:26, 6:26] = True
    on_lesion = lesion.astype(np.float32)
    in_corner = np.zeros((SIZE, SIZE), np.float32)
    in_corner[:3, :5] = 1.0
    maps = np.stack([on_lesion, in_corner])
    explanation = Explanation(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]), maps, maps)
    flags = accumulator.add_batch([0, 1], [loaded(lesion, lungs), loaded(None, lungs)],
                                  np.zeros((2, SIZE, SIZE, 3), np.float32), explanation)
    assert flags[0] == []
    assert any("border" in flag for flag in flags[1])
    assert any("outside the lungs" in flag for flag in flags[1])
    loc = accumulator.localisation
    assert loc.array("pointing").tolist() == [1.0]  # only the correct image with a lesion
    assert loc.array("energy").tolist() == [pytest.approx(1.0)]
    assert loc.array("iou").tolist() == [pytest.approx(1.0)]
    assert accumulator.shortcut.array("border").tolist() == [0.0, pytest.approx(1.0)]
