"""The checks that drive the model: sanity check, faithfulness, and the streaming scores."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest
from keras import layers

from report import checks, counterfactual, measures
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


# --- the counterfactual sample, the marker audit and the class verdict (issue 16) ----------

CF_SIZE = 64
CF_LUNGS = measures.estimated_lung_fields((CF_SIZE, CF_SIZE))


def test_the_plans_keep_a_larger_counterfactual_sample_in_fast_and_full_and_none_when_off():
    fast, full, off = (QualityPlan.of(level) for level in ("fast", "full", "off"))
    assert fast.counterfactual_images == checks.FAST_COUNTERFACTUAL
    assert full.counterfactual_images == checks.FULL_COUNTERFACTUAL
    assert fast.faithfulness_images < fast.counterfactual_images < full.counterfactual_images
    # Enough films for every class of three to reach the test's minimum with room to spare.
    assert fast.counterfactual_images >= 3 * 3 * counterfactual.MIN_IMAGES
    assert fast.sample_images == fast.counterfactual_images
    assert full.sample_images == max(full.faithfulness_images, full.counterfactual_images)
    assert (off.counterfactual_images, off.sample_images) == (0, 0)
    accumulator = QualityAccumulator(off, ("A",), (4, 4))
    accumulator.keep_sample([0], [0], [0], np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4)))
    assert accumulator.counterfactual_positions == accumulator.sample_positions == []


def corner_model_inputs(count: int) -> tuple[np.ndarray, list[int]]:
    """Films whose class 0 is a bright top-left corner (every third film), 1 and 2 their
    lungs' brightness, and their labels (what `corner_reader` predicts for them)."""
    rng = np.random.default_rng(5)
    films = np.full((count, CF_SIZE, CF_SIZE, 3), 0.4, np.float32)
    films += rng.normal(0, 0.02, films.shape).astype(np.float32)
    films[::3, :6, :6] = 1.0
    films[1::3][:, CF_LUNGS] = 0.2
    films[2::3][:, CF_LUNGS] = 0.8
    return films, [i % 3 for i in range(count)]


class CornerReader:
    """An engine-like object whose `predict` reads class 0 from the top-left corner only."""

    def predict(self, inputs):
        inputs = np.asarray(inputs)
        corner = inputs[:, :6, :6].mean(axis=(1, 2, 3))
        lungs = inputs[:, CF_LUNGS].mean(axis=(1, 2))
        logits = np.stack([20 * (corner - 0.6), 10 * (0.5 - lungs), 10 * (lungs - 0.5)], 1)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def marked_pixels(position: int) -> np.ndarray:
    """uint8 decoded film; every fourth one carries a flat white block near a corner."""
    pixels = np.full((CF_SIZE, CF_SIZE, 3), 90, np.uint8)
    if position % 4 == 0:
        pixels[2:8, 3:10] = 255
    return pixels


def corner_stream(count: int, plan: QualityPlan, parts, keep_sample: bool = True):
    """The accumulators of `parts` (lists of positions, each batched in threes, in the order
    given), scoring CornerReader's maps (zeros: the location scores do not matter here)."""
    films, labels = corner_model_inputs(count)
    engine = CornerReader()
    accumulators = []
    for part in parts:
        accumulator = QualityAccumulator(plan, ("marker", "dark", "bright"),
                                         (CF_SIZE, CF_SIZE), keep_sample=keep_sample)
        for start in range(0, len(part), 3):
            chosen = part[start : start + 3]
            probabilities = engine.predict(films[chosen])
            maps = np.zeros((len(chosen), CF_SIZE, CF_SIZE), np.float32)
            explanation = Explanation(probabilities, probabilities.argmax(axis=1), maps, maps)
            decoded = [LoadedImage(marked_pixels(p), "d", None, None) for p in chosen]
            accumulator.add_batch([labels[p] for p in chosen], decoded, films[chosen],
                                  explanation, positions=chosen)
        accumulators.append(accumulator)
    return accumulators, films, labels


def smallest_ranks(total: int, count: int) -> list[int]:
    """The positions a sample of `count` out of `total` keeps, in its order (a slow
    restatement of checks.sample_rank's rule: Knuth's multiplicative hash, smallest first)."""
    return sorted(range(total), key=lambda p: (p * 2654435761) % 2**32)[:count]


def test_the_sample_spreads_over_a_run_listed_class_by_class():
    """A folder per class lists 100 films of one class, then 100 of the next: a sample of 48
    must hold films of both, not the first 48 of the first class."""
    kept = smallest_ranks(200, 48)
    assert 15 < sum(p < 100 for p in kept) < 33
    assert [checks.sample_rank(p) for p in kept] == sorted(checks.sample_rank(p) for p in kept)


CORNER_PLAN = QualityPlan("fast", faithfulness_images=4, steps=2, sanity_images=2,
                          sanity_stages=1, counterfactual_images=30,
                          counterfactual_resamples=400)


def test_check_counterfactual_flags_the_class_read_from_a_corner_and_no_other():
    (accumulator,), _, _ = corner_stream(45, CORNER_PLAN, [list(range(45))])
    assert accumulator.counterfactual_positions == smallest_ranks(45, 30)
    assert accumulator.sample_positions == smallest_ranks(45, 4)
    result = accumulator.check_counterfactual(CornerReader(), batch_size=8)
    assert result.sample_images == 30 and result.resamples == 400
    assert result.lungs_estimated == 30  # no lung masks: the PA prior
    assert result.flagged_classes == ["marker"]
    # Every third film carries the marker and is read as "marker".
    assert result.classes[0].images == sum(p % 3 == 0 for p in smallest_ranks(45, 30))
    assert result.classes[0].condition("border").flip_rate == 1.0


def test_check_counterfactual_is_none_when_off_or_with_too_few_films():
    off = QualityPlan.of("off")
    (accumulator,), _, _ = corner_stream(12, off, [list(range(12))])
    assert accumulator.check_counterfactual(CornerReader(), 8) is None
    assert accumulator.results().markers is None and accumulator.results().counterfactual is None
    few = counterfactual.MIN_IMAGES - 1
    (accumulator,), _, _ = corner_stream(few, CORNER_PLAN, [list(range(few))])
    assert accumulator.check_counterfactual(CornerReader(), 8) is None
    without = QualityPlan("fast", faithfulness_images=4, steps=2, sanity_images=2,
                          sanity_stages=1)  # a plan without the test
    (accumulator,), _, _ = corner_stream(12, without, [list(range(12))])
    assert accumulator.check_counterfactual(CornerReader(), 8) is None


def test_a_sample_added_without_probabilities_is_predicted_for_the_same_result():
    (streamed,), films, labels = corner_stream(36, CORNER_PLAN, [list(range(36))])
    (added,), _, _ = corner_stream(36, CORNER_PLAN, [list(range(36))], keep_sample=False)
    assert added.counterfactual_positions == []
    maps = np.zeros((36, CF_SIZE, CF_SIZE), np.float32)
    predicted = CornerReader().predict(films).argmax(axis=1)
    decoded = [LoadedImage(marked_pixels(p), "d", None, None) for p in range(36)][::-1]
    added.keep_sample(list(range(36))[::-1], labels[::-1], predicted[::-1], films[::-1],
                      maps, decoded)  # as a Spark driver may: no probabilities, in any order
    assert added.counterfactual_positions == smallest_ranks(36, 30)
    assert (added.check_counterfactual(CornerReader(), 8)
            == streamed.check_counterfactual(CornerReader(), 8))


# Uneven parts, one reversed: the first 30 positions come from all three.
CORNER_PARTS = (list(range(0, 5)), list(range(5, 45, 2))[::-1], list(range(6, 45, 2)))


def test_split_streams_merge_into_one_pass_sample_markers_and_verdict():
    (single,), _, _ = corner_stream(45, CORNER_PLAN, [list(range(45))])
    a, b, c = corner_stream(45, CORNER_PLAN, CORNER_PARTS)[0]
    expected = single.results().markers
    assert expected.films == 45 and expected.marked == 12  # every fourth film
    assert [p for p, _ in expected.examples] == [0, 4, 8, 12, 16, 20]
    for merged in (a.merge(b).merge(c), c.merge(b.merge(a))):
        assert merged.counterfactual_positions == single.counterfactual_positions
        assert merged.sample_positions == single.sample_positions
        assert merged.results().markers == expected
        assert (merged.check_counterfactual(CornerReader(), 8)
                == single.check_counterfactual(CornerReader(), 8))


def verdict_results(border: dict[int, float], outside: dict[int, float], effects):
    """QualityResults with one film per class of the given location shares and the given
    per-class counterfactual effects (None: the test did not run)."""
    shortcut = checks.MapScores()
    shortcut.add_images(list(border), list(border))
    shortcut.add("border", list(border.values()))
    shortcut.add("outside_lungs", [outside[c] for c in border])
    results = checks.QualityResults(
        QualityPlan.of("fast"), ("A", "B", "C", "D"), np.zeros(0, int), np.zeros(0, int),
        np.zeros((0, 4)), checks.MapScores(), shortcut, "estimated", {})
    if effects is not None:
        results.counterfactual = counterfactual.CounterfactualResult(tuple(effects), 40, 40)
    return results


def class_effect(index: int, images: int, flagged_by: tuple[str, ...]):
    interval = counterfactual.Interval(0.5, 0.3, 0.7)
    conditions = tuple(counterfactual.ConditionEffect(
        name, 0.6, 0.1, 0.4, 0.05, interval, interval, 0.7, 0.25, name in flagged_by)
        for name in counterfactual.CONDITIONS) if images >= counterfactual.MIN_IMAGES else ()
    return counterfactual.ClassEffect("ABCD"[index], index, images, conditions)


def test_the_class_verdict_rests_on_the_effect_with_the_location_as_evidence():
    border = {0: 0.15, 1: 0.6, 2: 0.6, 3: 0.1}
    outside = {0: 0.62, 1: 0.7, 2: 0.7, 3: 0.95}
    effects = [class_effect(0, 12, ("border",)),  # location passes it, the effect flags it
               class_effect(1, 12, ()),  # location would flag it, the effect clears it
               class_effect(2, 3, ()),  # too few films: location decides
               class_effect(3, 0, ())]  # never predicted: location decides
    verdicts = {v.class_name: v for v in checks.shortcut_verdicts(
        verdict_results(border, outside, effects))}
    a, b, c, d = (verdicts[name] for name in "ABCD")
    assert (a.flagged, a.basis, a.flagged_by, a.past_location_thresholds) == (
        True, "effect", ("border",), False)
    assert (a.border, a.outside_lungs) == (0.15, 0.62) and a.effect is effects[0]
    assert (b.flagged, b.basis, b.past_location_thresholds) == (False, "effect", True)
    assert (c.flagged, c.basis, c.flagged_by) == (True, "location", ())
    assert (d.flagged, d.basis) == (True, "location")  # outside 0.95 > 0.90
    assert checks.flagged_classes(verdict_results(border, outside, effects)) == [
        ("A", 0.15, 0.62), ("C", 0.6, 0.7), ("D", 0.1, 0.95)]


def test_without_the_effect_test_the_location_thresholds_decide_as_before():
    border, outside = {0: 0.5, 1: 0.1}, {0: 0.5, 1: 0.5}
    verdicts = checks.shortcut_verdicts(verdict_results(border, outside, None))
    assert [(v.class_name, v.flagged, v.basis) for v in verdicts] == [
        ("A", True, "location"), ("B", False, "location")]
    # A class with sample films predicted as it but no labelled film has a verdict too.
    only_predicted = verdict_results({1: 0.1}, {1: 0.5}, [class_effect(0, 9, ("border",))])
    verdicts = checks.shortcut_verdicts(only_predicted)
    assert [(v.class_name, v.flagged, v.basis) for v in verdicts] == [
        ("A", True, "effect"), ("B", False, "location")]
    assert np.isnan(verdicts[0].border)


def test_hidden_examples_show_the_films_the_test_filled_and_the_predictions_after():
    (accumulator,), films, _ = corner_stream(45, CORNER_PLAN, [list(range(45))])
    examples = accumulator.hidden_examples(CornerReader(), count=3, classes=[0])
    # The first films of the sample (by rank) that are predicted as class 0 (every third).
    expected = [p for p in smallest_ranks(45, 30) if p % 3 == 0][:3]
    assert [e.position for e in examples] == expected
    first = examples[0]
    np.testing.assert_array_equal(first.model_input, films[expected[0]])
    outside = first.hidden["outside_lungs"]
    np.testing.assert_array_equal(outside[CF_LUNGS], films[expected[0]][CF_LUNGS])  # lungs kept
    assert outside[:6, :6].mean() < 0.6 < films[0][:6, :6].mean()  # the marker is gone
    assert first.probabilities.argmax() == 0
    assert first.hidden_probabilities["border"].argmax() != 0
    assert len(accumulator.hidden_examples(CornerReader(), count=10)) == 10
