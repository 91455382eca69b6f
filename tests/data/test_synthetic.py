"""Tests of the synthetic chest radiograph generator."""

from functools import cache

import cv2
import numpy as np
import pytest

from report.data.synthetic import (
    CLASS_NAMES,
    IMAGE_SIZE,
    SyntheticImage,
    generate,
    label_of,
)

COVID = CLASS_NAMES.index("COVID-19")
NORMAL = CLASS_NAMES.index("NORMAL")
OTHER = CLASS_NAMES.index("OTHER_INFECTION")
IMAGES_PER_CLASS = 30


@cache
def _sample(index: int, seed: int = 0, size: int = IMAGE_SIZE) -> SyntheticImage:
    """Generated images are shared between tests; the generator itself is deterministic."""
    return generate(index, seed, size)


def _class_samples(label: int, size: int = IMAGE_SIZE) -> list[SyntheticImage]:
    return [_sample(label + 3 * k, 0, size) for k in range(IMAGES_PER_CLASS)]


def _gray(sample: SyntheticImage) -> np.ndarray:
    return sample.image[:, :, 0].astype(np.float64)


def _halves(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-left and image-right halves, leaving out the middle column of odd widths."""
    half = mask.shape[1] // 2
    return mask[:, :half], mask[:, mask.shape[1] - half :]


def _edge_contrast(gray: np.ndarray, mask: np.ndarray) -> float:
    """Mean brightness just outside the mask minus just inside it (2-pixel bands)."""
    kernel = np.ones((5, 5), np.uint8)
    mask_u8 = mask.astype(np.uint8)
    inner = mask & ~cv2.erode(mask_u8, kernel).astype(bool)
    outer = cv2.dilate(mask_u8, kernel).astype(bool) & ~mask
    return gray[outer].mean() - gray[inner].mean()


def test_class_names_are_in_the_agreed_order():
    assert CLASS_NAMES == ("COVID-19", "NORMAL", "OTHER_INFECTION")
    assert IMAGE_SIZE == 237


def test_labels_cycle_through_the_classes_and_are_balanced():
    labels = [label_of(i) for i in range(300)]
    assert labels[:6] == [0, 1, 2, 0, 1, 2]
    assert np.bincount(labels).tolist() == [100, 100, 100]
    assert [_sample(i).label for i in range(6)] == labels[:6]


def test_same_arguments_give_identical_pixels_and_masks():
    first, second = generate(7, seed=3), generate(7, seed=3)
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.lesion_mask, second.lesion_mask)
    assert np.array_equal(first.lung_mask, second.lung_mask)
    assert first.label == second.label


def test_an_image_does_not_depend_on_what_was_generated_before_or_global_random_state():
    alone = generate(5, seed=1)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    for index in range(5):
        generate(index, seed=1)
    assert np.array_equal(generate(5, seed=1).image, alone.image)
    assert np.array_equal(np.random.get_state()[1], state)


def test_different_seed_or_index_gives_different_pixels():
    base = generate(4, seed=0)
    other_seed = generate(4, seed=1)
    other_index = generate(4 + len(CLASS_NAMES), seed=0)  # same class, different patient
    assert other_seed.label == other_index.label == base.label
    assert not np.array_equal(base.image, other_seed.image)
    assert not np.array_equal(base.image, other_index.image)
    assert not np.array_equal(base.lung_mask, other_seed.lung_mask)


@pytest.mark.parametrize("size", [IMAGE_SIZE, 64])
def test_shapes_and_dtypes(size):
    for index in range(3):
        sample = _sample(index, 0, size)
        assert sample.image.shape == (size, size, 3)
        assert sample.image.dtype == np.uint8
        assert sample.lesion_mask.shape == sample.lung_mask.shape == (size, size)
        assert sample.lesion_mask.dtype == sample.lung_mask.dtype == np.bool_
        assert np.array_equal(sample.image[:, :, 0], sample.image[:, :, 1])
        assert np.array_equal(sample.image[:, :, 0], sample.image[:, :, 2])
        # Uses the range: dark air around the body, bright bone.
        assert sample.image.min() < 30 and sample.image.max() > 180


@pytest.mark.parametrize("size", [IMAGE_SIZE, 64])
def test_masks_lie_inside_the_image_and_lesions_inside_the_lungs(size):
    for index in range(30):
        sample = _sample(index, 0, size)
        lungs, lesion = sample.lung_mask, sample.lesion_mask
        assert not (lesion & ~lungs).any()
        left, right = _halves(lungs)
        assert left.any() and right.any(), "both lungs are present"
        # The lungs are well inside the film, never cut by its edge.
        border = np.concatenate([lungs[0], lungs[-1], lungs[:, 0], lungs[:, -1]])
        assert not border.any()
        assert 0.15 < lungs.mean() < 0.5


@pytest.mark.parametrize("size", [IMAGE_SIZE, 64])
def test_only_normal_images_have_empty_lesion_masks(size):
    for index in range(15):
        sample = _sample(index, 0, size)
        assert sample.lesion_mask.any() == (sample.label != NORMAL)


def test_lesions_brighten_the_lungs_on_average():
    lung_mean = {
        label: np.mean([_gray(s)[s.lung_mask].mean() for s in _class_samples(label)])
        for label in (COVID, NORMAL, OTHER)
    }
    assert lung_mean[COVID] > lung_mean[NORMAL] + 5
    assert lung_mean[OTHER] > lung_mean[NORMAL] + 10


def test_each_lesion_is_brighter_than_the_rest_of_its_lungs():
    for label in (COVID, OTHER):
        for sample in _class_samples(label):
            gray = _gray(sample)
            clear = sample.lung_mask & ~sample.lesion_mask
            assert gray[sample.lesion_mask].mean() > gray[clear].mean() + 15


def test_consolidation_stays_in_one_lung():
    sides = []
    for sample in _class_samples(OTHER):
        left, right = _halves(sample.lesion_mask)
        assert left.any() != right.any()
        sides.append(left.any())
    # Both lungs get their turn across the data set.
    assert 0 < sum(sides) < len(sides)


def test_covid_opacities_are_in_both_lungs():
    for sample in _class_samples(COVID):
        left, right = _halves(sample.lesion_mask)
        assert left.any() and right.any()


def test_covid_opacities_favour_the_lower_lungs():
    lower = []
    for sample in _class_samples(COVID):
        rows = np.flatnonzero(sample.lung_mask.any(axis=1))
        middle = (rows[0] + rows[-1]) // 2
        lesion = sample.lesion_mask
        lower.append(lesion[middle:].sum() / lesion.sum())
    assert np.mean(lower) > 0.6


def test_lungs_are_darker_than_the_mediastinum():
    for sample in _class_samples(NORMAL):
        gray = _gray(sample)
        size = gray.shape[0]
        # The central column between the lungs: spine, trachea, heart and great vessels.
        middle = gray[int(0.3 * size) : int(0.6 * size), int(0.46 * size) : int(0.54 * size)]
        assert gray[sample.lung_mask].mean() < middle.mean() - 40


def test_background_outside_the_body_is_near_black():
    for sample in _class_samples(NORMAL)[:10]:
        size = sample.image.shape[0]
        corner = _gray(sample)[: size // 20, : size // 8]  # above the shoulder
        assert corner.mean() < 30


def test_lung_mask_is_aligned_with_the_lung_edges_in_the_image():
    # If the mask had not been moved with the image, a shifted copy would fit the dark
    # lung fields at least as well as the mask itself.
    for index in range(12):
        sample = _sample(index)
        gray = _gray(sample)
        fit = _edge_contrast(gray, sample.lung_mask)
        for axis in (0, 1):
            for shift in (-3, 3):
                moved = np.roll(sample.lung_mask, shift, axis=axis)
                assert fit > _edge_contrast(gray, moved)


@pytest.mark.parametrize(
    ("index", "seed", "size"), [(-1, 0, IMAGE_SIZE), (0, -1, IMAGE_SIZE), (0, 0, 8)]
)
def test_rejects_invalid_arguments(index, seed, size):
    with pytest.raises(ValueError):
        generate(index, seed, size)


# --- confounded variants ----------------------------------------------------------------------


def _digest(confounded: bool) -> str:
    import hashlib

    digest = hashlib.sha256()
    for index in range(6):
        for size in (64, 237):
            case = generate(index, 2, size, confounded)
            for array in (case.image, case.lesion_mask, case.lung_mask, case.marker_mask):
                if array is not None:
                    digest.update(array.tobytes())
    return digest.hexdigest()


def test_clean_and_original_confounded_films_stay_byte_identical():
    """Digests of the generator as it was before markers were parametrised."""
    assert _digest(False) == "a6c1acac284bf88d131832b69c708ca77e7a9c35f05c68325514785203663036"
    assert _digest(True) == "47a19206ffe75687cc93ef1e957b99b591ef43f18f35fc00ccc52e6012522001"


def test_the_default_confound_is_the_original_tag():
    from report.data.synthetic import DEFAULT_CONFOUND

    for index in range(4):
        a, b = generate(index, 1, 100, confounded=True), generate(index, 1, 100,
                                                                   confound=DEFAULT_CONFOUND)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.marker_mask, b.marker_mask)


_EXPECTED_PLACE = {  # (rows, columns) thirds of the film the marker lies in
    "top-left": (0, 0), "top-right": (0, 2), "bottom-left": (2, 0), "bottom-right": (2, 2),
    "top": (0, 1), "bottom": (2, 1), "left": (1, 0), "right": (1, 2),
}


@pytest.mark.parametrize("kind", ["block", "text", "ruler"])
@pytest.mark.parametrize("position", list(_EXPECTED_PLACE))
def test_each_marker_is_drawn_bright_where_asked_and_nothing_else_changes(kind, position):
    from report.data.synthetic import MARKER_BRIGHTNESS, Confound

    size = 96
    confound = Confound(kind, position, 0.2)
    unmarked = Confound(kind, position, 0.2, rates=(0.0, 0.0, 0.0))
    case, plain = generate(0, 0, size, confound=confound), generate(0, 0, size, confound=unmarked)
    mask = case.marker_mask
    assert mask.any() and not plain.marker_mask.any()
    assert (case.image[mask] >= MARKER_BRIGHTNESS).all()
    assert np.array_equal(case.image[~mask], plain.image[~mask])
    rows, cols = np.nonzero(mask)
    assert (int(rows.mean() * 3 // size), int(cols.mean() * 3 // size)) == _EXPECTED_PLACE[position]
    assert max(np.ptp(rows), np.ptp(cols)) + 1 == pytest.approx(0.2 * size, abs=2)


@pytest.mark.parametrize("kind", ["block", "text", "ruler"])
def test_a_bigger_marker_covers_more(kind):
    from report.data.synthetic import Confound

    areas = [generate(0, 0, 128, confound=Confound(kind, "top-left", s)).marker_mask.sum()
             for s in (0.1, 0.2, 0.35)]
    assert areas[0] < areas[1] < areas[2]


def test_markers_follow_the_rates_and_only_the_favoured_class_gets_faint_lesions():
    from report.data.synthetic import Confound

    confound = Confound("block", "bottom", 0.1, rates=(0.9, 0.1, 0.0), favoured=OTHER)
    cases = [generate(i, 0, 48, confound=confound) for i in range(120)]
    marked = np.array([case.marker_mask.any() for case in cases])
    labels = np.array([case.label for case in cases])
    assert marked[labels == COVID].mean() > 0.75 and marked[labels == OTHER].sum() == 0
    assert 0 < marked[labels == NORMAL].sum() < 10
    # The favoured class (here OTHER_INFECTION) is the one drawn with fainter lesions.
    clean, faint = _sample(OTHER, 0, 48), generate(OTHER, 0, 48, confound=confound)
    covid, same = _sample(COVID, 0, 48), generate(COVID, 0, 48, confound=Confound(
        "block", "bottom", 0.1, rates=(0.0, 0.0, 0.0), favoured=OTHER))
    assert not np.array_equal(clean.image, faint.image)
    assert np.array_equal(covid.image, same.image)


def test_burning_in_a_marker_after_the_fact_matches_generating_it():
    from report.data.synthetic import Confound, burn_in

    confound = Confound("ruler", "left", 0.3)
    plain = generate(3, 4, 64, confound=Confound("block", "top", 0.1, rates=(0.0, 0.0, 0.0)))
    gray = plain.image[..., 0].copy()
    mask = burn_in(gray, plain.label, 4, 3, confound)
    direct = generate(3, 4, 64, confound=confound)
    assert np.array_equal(gray, direct.image[..., 0]) and np.array_equal(mask, direct.marker_mask)


@pytest.mark.parametrize("arguments", [
    dict(kind="stamp", size=0.1), dict(position="centre", size=0.1, kind="block"),
    dict(kind="block"), dict(kind="ruler", size=0.0), dict(kind="block", size=0.6),
    dict(kind="block", size=0.1, rates=(0.5, 0.5)),
    dict(kind="block", size=0.1, rates=(1.5, 0.0, 0.0)), dict(kind="block", size=0.1, favoured=3),
])
def test_a_confound_that_cannot_be_drawn_is_refused(arguments):
    from report.data.synthetic import Confound

    with pytest.raises(ValueError):
        generate(0, confound=Confound(**arguments))
