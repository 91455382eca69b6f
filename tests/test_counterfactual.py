"""The counterfactual shortcut test (report/counterfactual.py).

The arithmetic is checked against slow references written from the docstrings' formulas; the
verdict against small models trained here on films confounded by markers of the tests' own
making (block, text and ruler; corners, edges and the bottom centre; several sizes), each
flagged for the class the marker favours, and a clean model trained beside them, flagged for
none. The false-positive rate over seeds is measured by running this file as a script:
`python -m tests.test_counterfactual` (not a test: it trains a model per seed).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from report import checks, measures
from report import counterfactual as cf
from report.data import synthetic

# --- the fill -------------------------------------------------------------------------------


def slow_fill(image, hidden, reference, sigma, prior):
    """neutral_fill's formula, pixel by pixel: fill = r + sum_q G(p - q) k_q (x_q - r_q) /
    (sum_q G(p - q) k_q + a), G cv2's normalised separable kernel of radius ceil(3 sigma),
    pixels outside the film counting as zero; r the kept mean when there is no reference."""
    import cv2

    height, width, channels = image.shape
    radius = int(math.ceil(3 * sigma))
    kernel_1d = cv2.getGaussianKernel(2 * radius + 1, sigma).ravel()
    keep = ~hidden
    if reference is None:
        reference = np.broadcast_to(image[keep].mean(axis=0), image.shape)
    out = image.astype(np.float64).copy()
    for y in range(height):
        for x in range(width):
            if keep[y, x]:
                continue
            total, weight = np.zeros(channels), 0.0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    qy, qx = y + dy, x + dx
                    if 0 <= qy < height and 0 <= qx < width and keep[qy, qx]:
                        g = kernel_1d[dy + radius] * kernel_1d[dx + radius]
                        total += g * (image[qy, qx] - reference[qy, qx])
                        weight += g
            out[y, x] = reference[y, x] + total / (weight + prior)
    return out


@pytest.mark.parametrize("with_reference", [False, True])
def test_the_fill_matches_its_formula_computed_pixel_by_pixel(with_reference):
    rng = np.random.default_rng(0)
    image = rng.random((1, 14, 17, 3)).astype(np.float32)
    hidden = np.zeros((14, 17), bool)
    hidden[:5, :] = True  # a band, wider than the kernel's reach in places
    hidden[9:, 12:] = True
    reference = rng.random((14, 17, 3)).astype(np.float32) if with_reference else None
    sigma_fraction, prior = 0.1, 0.05
    filled = cf.neutral_fill(image, hidden, reference, sigma_fraction, prior)
    expected = slow_fill(image[0].astype(np.float64), hidden, reference,
                         sigma_fraction * 14, prior)
    np.testing.assert_allclose(filled[0], expected, atol=1e-5)


def test_the_fill_computed_small_stays_within_a_few_grey_levels_of_the_full_size_one(
        monkeypatch):
    cases = [synthetic.generate(i, 0, 237) for i in range(3)]
    films = np.stack([case.image for case in cases]) / np.float32(255)
    lungs = np.stack([case.lung_mask for case in cases])
    reference = cf.reference_film(films)
    for region, _ in cf.hidden_regions(lungs).values():
        small = cf.neutral_fill(films, region, reference)
        monkeypatch.setattr(cf, "WORKING_SIGMA", 1e9)  # the full-size computation
        full = cf.neutral_fill(films, region, reference)
        monkeypatch.undo()
        difference = np.abs(small - full)[region]
        assert difference.mean() < 1 / 255 and difference.max() < 0.06


def test_the_fill_takes_nothing_from_the_hidden_region_and_keeps_the_rest():
    rng = np.random.default_rng(1)
    images = rng.random((3, 32, 32, 3)).astype(np.float32)
    hidden = np.zeros((3, 32, 32), bool)
    hidden[:, :8, :8] = True
    hidden[1, 20:, :] = True
    marked = images.copy()
    marked[hidden] = 1.0  # a bright marker inside the hidden region
    reference = cf.reference_film(images)
    clean, with_marker = (cf.neutral_fill(x, hidden, reference) for x in (images, marked))
    np.testing.assert_array_equal(clean, with_marker)
    np.testing.assert_array_equal(clean[~hidden], images[~hidden])
    assert np.isfinite(clean).all()


def test_a_region_hiding_the_whole_film_falls_back_to_the_reference():
    images = np.full((1, 8, 8, 1), 0.3, np.float32)
    reference = np.full((8, 8, 1), 0.6, np.float32)
    filled = cf.neutral_fill(images, np.ones((8, 8), bool), reference)
    np.testing.assert_allclose(filled, 0.6)


def test_the_reference_film_is_the_per_pixel_median():
    images = np.arange(5 * 4 * 4 * 1, dtype=np.float32).reshape(5, 4, 4, 1)[[3, 0, 4, 1, 2]]
    np.testing.assert_array_equal(cf.reference_film(images), np.arange(16).reshape(4, 4, 1) + 32)


def test_a_marker_on_most_of_the_sample_is_not_painted_back_into_the_hole():
    """43 of 48 films carry a bright corner block: their median carries it too, so the
    reference is taken from the films without a marker, and the filled corner is dark."""
    rng = np.random.default_rng(0)
    films = rng.uniform(0.2, 0.4, (48, 32, 32, 1)).astype(np.float32)
    marked = np.arange(48) >= cf.MIN_IMAGES
    films[marked, :6, :6] = 1.0
    assert cf.reference_film(films)[:6, :6].min() == 1.0  # the trap: the median has it
    reference = cf.reference_film(films, ~marked)
    hidden = np.zeros((32, 32), bool)
    hidden[:10, :10] = True
    filled = cf.neutral_fill(films[-1:], hidden, reference)
    assert filled[0, :6, :6].max() < 0.6
    # Too few unmarked films for a median of their own: all films are used.
    np.testing.assert_array_equal(cf.reference_film(films, np.arange(48) < 2),
                                  cf.reference_film(films))


# --- regions --------------------------------------------------------------------------------


def test_lung_fields_come_from_masks_else_from_the_prior():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 3:9] = True
    fields, estimated = cf.lung_fields([mask, None, np.zeros((20, 20), bool)], (20, 20))
    prior = measures.estimated_lung_fields((20, 20))
    assert estimated == 2
    np.testing.assert_array_equal(fields, np.stack([mask, prior, prior]))


def test_the_control_is_the_deepest_lung_pixels_of_the_same_area():
    import cv2

    lungs = measures.estimated_lung_fields((40, 40))
    depth = cv2.distanceTransform(lungs.astype(np.uint8), cv2.DIST_L2, 5)
    for area in (1, 50, 200, int(lungs.sum()) - 1):
        control = cf.control_region(lungs, area)
        assert control.sum() == area and not (control & ~lungs).any()
        # No kept lung pixel lies deeper than a hidden one.
        assert depth[lungs & ~control].max(initial=0) <= depth[control].min()
    np.testing.assert_array_equal(cf.control_region(lungs, 10 * lungs.size), lungs)


def test_the_regions_hide_outside_the_lungs_and_the_border_band():
    lungs, _ = cf.lung_fields([None, None], (48, 48))
    regions = cf.hidden_regions(lungs)
    outside, control = regions["outside_lungs"]
    np.testing.assert_array_equal(outside, ~lungs)
    np.testing.assert_array_equal(control, lungs)  # the lungs are smaller: all of them
    border, border_control = regions["border"]
    np.testing.assert_array_equal(border[0], measures.border_band((48, 48)))
    assert border_control[0].sum() == min(border[0].sum(), lungs[0].sum())
    assert not (border_control & ~lungs).any()


# --- the bootstrap --------------------------------------------------------------------------


def test_the_paired_interval_matches_a_slow_loop():
    rng = np.random.default_rng(2)
    differences = np.stack([rng.integers(-1, 2, 23).astype(float), rng.normal(size=23)])
    fast = cf.paired_interval(differences, 500, (4, 1, 0))
    draws = np.random.default_rng((4, 1, 0)).integers(0, 23, size=(500, 23))
    for row, interval in zip(differences, fast, strict=True):
        means = [np.mean([row[i] for i in draw]) for draw in draws]
        assert interval.estimate == pytest.approx(row.mean())
        assert interval.low == pytest.approx(np.percentile(means, 2.5))
        assert interval.high == pytest.approx(np.percentile(means, 97.5))


# --- the test's mechanics, with a model made of arithmetic ----------------------------------


LUNGS_64 = measures.estimated_lung_fields((64, 64))


def corner_reader(inputs):
    """A 'model' whose class 0 is the brightness of the top-left corner (a marker) and whose
    classes 1 and 2 read the lungs (the PA prior): dark lungs -> 1, bright lungs -> 2."""
    corner = inputs[:, :6, :6].mean(axis=(1, 2, 3))
    lungs = inputs[:, LUNGS_64].mean(axis=(1, 2))
    logits = np.stack([20 * (corner - 0.6), 10 * (0.5 - lungs), 10 * (lungs - 0.5)], 1)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def corner_marked_films(count=60, seed=3):
    rng = np.random.default_rng(seed)
    films = np.full((count, 64, 64, 3), 0.4, np.float32) + rng.normal(0, 0.02, (count, 64, 64, 3))
    films[::3, :6, :6] = 1.0  # every third film carries the marker
    films[1::3][:, LUNGS_64] = 0.2
    films[2::3][:, LUNGS_64] = 0.8
    return films.astype(np.float32)


def test_a_class_read_from_a_corner_is_flagged_and_classes_read_from_the_lungs_are_not():
    films = corner_marked_films()
    lungs, _ = cf.lung_fields([None] * len(films), (64, 64))
    result = cf.counterfactual_test(corner_reader, films, lungs, ["marker", "dark", "bright"])
    assert result.flagged_classes == ["marker"]
    marker = result.classes[0]
    assert marker.images == 20 and marker.flagged_by == ("outside_lungs", "border")
    outside = marker.condition("outside_lungs")
    assert outside.flip_rate == 1.0 and outside.control_flip_rate == 0.0
    assert outside.flip_effect.low > cf.FLIP_EFFECT_FLAG and outside.drop > 0.5
    for effect in result.classes[1:]:
        assert effect.condition("outside_lungs").flip_rate == 0.0
    # Hiding the lungs gives the bright films the sample's typical (darker) centre.
    assert result.classes[2].condition("outside_lungs").control_flip_rate == 1.0
    assert result.metrics()["counterfactual.flagged_classes"] == 1


def test_the_result_is_deterministic_and_passing_the_probabilities_saves_a_pass():
    films = corner_marked_films()
    lungs, _ = cf.lung_fields([None] * len(films), (64, 64))
    calls = []

    def counted(inputs):
        calls.append(len(inputs))
        return corner_reader(inputs)

    first = cf.counterfactual_test(counted, films, lungs, ["a", "b", "c"], batch_size=64)
    assert len(calls) == 5  # the originals, then 2 conditions x (region, control)
    second = cf.counterfactual_test(counted, films, lungs, ["a", "b", "c"],
                                    corner_reader(films), batch_size=64)
    assert len(calls) == 9 and first == second


def test_a_class_predicted_for_too_few_films_is_reported_untested():
    films = corner_marked_films(count=12)
    films[::3, :6, :6] = 0.4  # no marker: nothing is class 0
    films[3, :6, :6] = 1.0
    lungs, _ = cf.lung_fields([None] * len(films), (64, 64))
    result = cf.counterfactual_test(corner_reader, films, lungs, ["a", "b", "c"])
    assert result.classes[0].images == 1 and not result.classes[0].tested
    assert not result.classes[0].flagged and result.classes[0].condition("border") is None


def test_only_the_first_sample_images_are_tested():
    films = np.concatenate([corner_marked_films(), corner_marked_films(seed=4)])
    lungs, _ = cf.lung_fields([None] * len(films), (64, 64))
    result = cf.counterfactual_test(corner_reader, films, lungs, ["a", "b", "c"])
    assert result.sample_images == cf.SAMPLE_IMAGES == 64
    # A plan's own size (checks.QualityPlan.counterfactual_images), larger or smaller.
    for size in (30, 90):
        chosen = cf.counterfactual_test(corner_reader, films, lungs, ["a", "b", "c"],
                                        resamples=200, sample_images=size)
        assert chosen.sample_images == size
        assert sum(effect.images for effect in chosen.classes) == size


# --- trained models -------------------------------------------------------------------------

SIZE = 64
TRAIN_FILMS = 240
# quality=fast's sample size, the smaller of the report's two (full tests FULL_COUNTERFACTUAL).
SAMPLE_FILMS = checks.FAST_COUNTERFACTUAL
EPOCHS = 14
# Each kind, each place (corners, the edges' midpoints, the bottom centre), several sizes.
CONFOUNDS = {
    "small block, top-left corner": synthetic.Confound("block", "top-left", 0.06),
    "block, bottom centre": synthetic.Confound("block", "bottom", 0.15),
    "text, top-right corner": synthetic.Confound("text", "top-right", 0.3),
    "text, top edge": synthetic.Confound("text", "top", 0.4),
    "ruler, left edge": synthetic.Confound("ruler", "left", 0.25),
    "ruler, bottom-left corner": synthetic.Confound("ruler", "bottom-left", 0.15),
}
# The films without a marker: each confound then burns its own into copies.
_UNMARKED = synthetic.Confound("block", "top-left", 0.1, rates=(0.0, 0.0, 0.0))


def films(indices, confound=None, seed=0):
    """(uint8 films, labels, lung masks) of the synthetic films `indices`; with a confound,
    the confounded films (fainter lesions) with its marker burned in."""
    cases = [synthetic.generate(i, seed, SIZE, confound=confound and _UNMARKED)
             for i in indices]
    images = np.stack([case.image for case in cases])
    if confound is not None:
        for image, index, case in zip(images, indices, cases, strict=True):
            gray = image[..., 0].copy()
            synthetic.burn_in(gray, case.label, seed, index, confound)
            image[:] = gray[..., None]
    return (images, np.array([case.label for case in cases]),
            np.stack([case.lung_mask for case in cases]))


def small_model(seed):
    """A small CNN that learns a marker or the lungs in a few seconds on two cores."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), layers.Rescaling(4.0, -2.0),
        layers.Conv2D(8, 5, strides=2, padding="same", activation="relu"),
        layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="features"),
        layers.GlobalMaxPooling2D(), layers.Dense(3, activation="softmax"),
    ], name="small")


def demo_model(seed):
    """The demo's own architecture (`train`'s default): its 4x4 maps at 64 px are coarse."""
    import keras

    from report.model import build_classifier

    keras.utils.set_random_seed(seed)
    return build_classifier("small-cnn", 3, (SIZE, SIZE))


ARCHITECTURES = {"small": (small_model, 3e-3, EPOCHS), "demo": (demo_model, 1e-3, 10)}


def trained(confound=None, seed=0, architecture="small"):
    """(model, sample inputs, sample lung masks, counterfactual result): trained on
    TRAIN_FILMS films, tested on SAMPLE_FILMS others of the same kind."""
    import keras

    build, learning_rate, epochs = ARCHITECTURES[architecture]
    images, labels, _ = films(range(TRAIN_FILMS), confound, seed)
    model = build(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy")
    model.fit(images / np.float32(255), labels, epochs=epochs, batch_size=32, verbose=0)
    sample, _, lungs = films(range(10_000, 10_000 + SAMPLE_FILMS), confound, seed)
    inputs = sample / np.float32(255)

    def predict(batch):
        return model(batch, training=False).numpy()

    result = cf.counterfactual_test(predict, inputs, lungs, synthetic.CLASS_NAMES, seed=seed)
    return model, inputs, lungs, result


# The small corner block is learnt by the demo's architecture, whose coarse maps put it
# under the location test's thresholds; a clean model of each architecture is trained too.
DEMO_ARCHITECTURE = {"small block, top-left corner", "clean, demo architecture"}


@pytest.fixture(scope="module")
def models():
    cases = [("clean", None), ("clean, demo architecture", None), *CONFOUNDS.items()]
    return {name: trained(confound, architecture="demo" if name in DEMO_ARCHITECTURE
                          else "small")
            for name, confound in cases}


@pytest.mark.parametrize("name", list(CONFOUNDS))
def test_each_confounded_model_is_flagged_for_the_class_its_marker_favours(models, name):
    result = models[name][3]
    covid = result.classes[synthetic.COVID]
    assert covid.flagged, _describe(result)
    effect = covid.condition(covid.flagged_by[0])
    assert effect.flip_rate > effect.control_flip_rate + cf.FLIP_EFFECT_FLAG


@pytest.mark.parametrize("name", ["clean", "clean, demo architecture"])
def test_the_clean_models_trained_beside_them_are_not_flagged(models, name):
    result = models[name][3]
    assert all(effect.tested for effect in result.classes)
    assert result.flagged_classes == [], _describe(result)


def test_the_location_test_passes_the_small_corner_block_that_the_effect_test_flags(models):
    """The issue's example: where the salient map lies (report/checks.py's class means of
    the map's salient part in the border band and outside the lungs) stays under both
    thresholds, while hiding the corner flips the predictions."""
    from report.cam.engine import GradCAM

    model, inputs, lungs, result = models["small block, top-left corner"]
    engine = GradCAM(model)
    explanation = engine.explain(inputs)
    covid = explanation.class_index == synthetic.COVID
    salient = measures.salient_part(explanation.maps[covid])
    border = measures.energy_inside(salient, measures.border_band((SIZE, SIZE))).mean()
    outside = measures.energy_outside(salient, lungs[covid]).mean()
    assert border < checks.BORDER_FLAG and outside < checks.OUTSIDE_LUNGS_FLAG
    assert result.classes[synthetic.COVID].flagged


def test_a_whole_audit_flags_the_corner_block_by_its_effect_while_its_location_passes(models):
    """The same model through `report.audit` (in-memory films: no masks, so the lung prior):
    the Shortcuts verdict, "Read this first" and the compare gate's `shortcut_classes` rest
    on the effect, and the location numbers beside it stay under their thresholds."""
    import report

    name = "small block, top-left corner"
    images, labels, _ = films(range(20_000, 20_000 + 2 * SAMPLE_FILMS), CONFOUNDS[name])
    audit = report.audit(models[name][0], (images, labels), quality="fast", output_dir=None,
                         class_names=list(synthetic.CLASS_NAMES))
    assert audit.shortcut_classes == ["COVID-19"]
    assert audit.metrics["shortcut.border_energy.COVID-19"] < checks.BORDER_FLAG
    assert audit.metrics["shortcut.outside_lung_energy.COVID-19"] < checks.OUTSIDE_LUNGS_FLAG
    assert audit.metrics["counterfactual.flagged_classes"] == 1
    warning = next(f.text for f in audit.findings if f.text.startswith("Possible shortcut"))
    assert "COVID-19: hiding" in warning
    shortcuts = next(s for s in audit.sections if s.key == "shortcuts")
    assert any(f.title == "Films before and after hiding" for f in shortcuts.figures)
    effect_rows = [row for row in shortcuts.tables[0].rows if row[0] == "COVID-19"]
    assert effect_rows and effect_rows[0][-1] == "yes"


def _describe(result) -> str:
    return "; ".join(
        f"{e.class_name} n={e.images} " + ", ".join(
            f"{c.condition} {c.flip_rate:.2f} vs {c.control_flip_rate:.2f} "
            f"[{c.flip_effect.low:+.2f}, {c.flip_effect.high:+.2f}]" for c in e.conditions)
        for e in result.classes)


# --- measured, not tested -------------------------------------------------------------------


def false_positive_rate(seeds=range(1, 9), architecture="small") -> tuple[int, int, float]:
    """Clean models trained on clean films of each seed (data and weights): (flagged models,
    models, highest lower bound of any class's effect)."""
    flagged, highest = 0, -1.0
    for seed in seeds:
        result = trained(None, seed, architecture)[3]
        flagged += bool(result.flagged_classes)
        highest = max([highest, *(c.flip_effect.low for e in result.classes
                                  for c in e.conditions)])
        print(f"{architecture} seed {seed}: {_describe(result)}", flush=True)
    return flagged, len(seeds), highest


def readme_example() -> None:
    """The README's example (section "Shortcuts found by their effect"): the demo's
    architecture trained on films with a small block in the top-left corner, audited whole."""
    import report

    name = "small block, top-left corner"
    model = trained(CONFOUNDS[name], architecture="demo")[0]
    images, labels, _ = films(range(20_000, 20_000 + 2 * SAMPLE_FILMS), CONFOUNDS[name])
    audit = report.audit(model, (images, labels), quality="fast", output_dir=None,
                         class_names=list(synthetic.CLASS_NAMES))
    for key, value in audit.metrics.items():
        if key.endswith(".COVID-19") and key.startswith(("shortcut.", "counterfactual.")):
            print(f"{key} = {value:.3f}")
    for finding in audit.findings:
        print(f"{finding.level}: {finding.text}")


if __name__ == "__main__":
    # python -m tests.test_counterfactual example | false-positives
    if sys.argv[1:] == ["example"]:
        readme_example()
    else:
        for architecture in ARCHITECTURES:
            count, total, low = false_positive_rate(architecture=architecture)
            print(f"{architecture}: clean models flagged: {count} of {total}; highest lower "
                  f"bound {low:+.2f} (flagged above {cf.FLIP_EFFECT_FLAG})", flush=True)
