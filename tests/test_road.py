"""ROAD (Rong et al. 2022): imputation against a slow reference written from the paper's
formula, and the curves against a model whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from report.road import impute, road_curves, road_summary

DIRECT, DIAGONAL = 1 / 6, 1 / 12  # the paper's neighbour weights


def _reference_fill(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Dense system built pixel by pixel: each removed pixel equals the weighted mean of its
    in-image neighbours (weights renormalised), removed neighbours being unknowns too."""
    height, width, channels = image.shape
    unknowns = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    number = {pixel: k for k, pixel in enumerate(unknowns)}
    matrix = np.zeros((len(unknowns), len(unknowns)))
    rhs = np.zeros((len(unknowns), channels))
    for k, (i, j) in enumerate(unknowns):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ni, nj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ni < height and 0 <= nj < width):
                    continue
                weight = DIRECT if di == 0 or dj == 0 else DIAGONAL
                matrix[k, k] += weight
                if removed[ni, nj]:
                    matrix[k, number[ni, nj]] -= weight
                else:
                    rhs[k] += weight * image[ni, nj]
    filled = image.astype(float).copy()
    filled[removed] = np.linalg.solve(matrix, rhs)
    return filled


def _neighbour_mean(image: np.ndarray, i: int, j: int) -> np.ndarray:
    height, width = image.shape[:2]
    total, weights = 0.0, 0.0
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ni, nj = i + di, j + dj
            if (di, dj) != (0, 0) and 0 <= ni < height and 0 <= nj < width:
                weight = DIRECT if di == 0 or dj == 0 else DIAGONAL
                total, weights = total + weight * image[ni, nj], weights + weight
    return total / weights


def test_imputation_matches_dense_reference_and_is_a_neighbour_mean():
    rng = np.random.default_rng(3)
    image = rng.random((9, 11, 2), dtype=np.float32)
    removed = rng.random((9, 11)) < 0.45
    removed[0, 0] = removed[-1, -1] = True  # corners: 3 neighbours only
    removed[3:6, 0:3] = True  # a block on the edge: removed pixels next to removed ones

    filled = impute(image, removed, noise=0.0)

    np.testing.assert_allclose(filled, _reference_fill(image, removed), atol=1e-6)
    for i, j in zip(*np.nonzero(removed), strict=True):
        np.testing.assert_allclose(filled[i, j], _neighbour_mean(filled, i, j), atol=1e-5)


def test_linear_ramp_is_reproduced_away_from_the_edge():
    height, width = 20, 24
    i, j = np.mgrid[:height, :width]
    image = np.stack([0.03 * i - 0.02 * j + 0.5, -0.01 * i + 0.04 * j], axis=-1)
    image = image.astype(np.float32)
    removed = np.random.default_rng(0).random((height, width)) < 0.6
    removed[4:15, 5:19] = True  # pixels whose neighbours are all removed too
    removed[[0, -1], :] = removed[:, [0, -1]] = False

    np.testing.assert_allclose(impute(image, removed, noise=0.0), image, atol=1e-6)


def test_noise_only_on_removed_pixels_with_the_requested_spread():
    rng = np.random.default_rng(1)
    image = rng.uniform(-2.0, 3.0, size=(64, 64, 3)).astype(np.float32)
    removed = rng.random((64, 64)) < 0.5

    noisy = impute(image, removed, noise=0.05, rng=np.random.default_rng(7))
    clean = impute(image, removed, noise=0.0)

    np.testing.assert_array_equal(noisy[~removed], image[~removed])
    np.testing.assert_array_equal(clean[~removed], image[~removed])
    difference = (noisy - clean)[removed]
    wanted = 0.05 * (image.max() - image.min())
    assert abs(difference.std() / wanted - 1) < 0.05
    assert abs(difference.mean()) < 4 * wanted / np.sqrt(difference.size)


def test_everything_removed_falls_back_to_the_mean_and_nothing_removed_is_a_copy():
    image = np.random.default_rng(2).random((6, 5, 3), dtype=np.float32)
    everything = np.ones((6, 5), dtype=bool)

    filled = impute(image, everything, noise=0.0)
    np.testing.assert_allclose(filled, np.broadcast_to(image.mean(axis=(0, 1)), image.shape),
                               atol=1e-6)
    assert np.isfinite(impute(image, everything, noise=0.01)).all()

    untouched = impute(image, np.zeros((6, 5), dtype=bool))
    np.testing.assert_array_equal(untouched, image)
    assert untouched is not image


# --- curves on a model with a known answer --------------------------------------------------

SIZE = 16
REGION = (slice(6, 10), slice(6, 10))  # R: 16 of the 256 pixels
FRACTIONS = np.arange(1, SIZE) / SIZE  # 1/16 ... 15/16: R's share is the first one


class RegionEngine:
    """Probability of class 1 = the image's mean over R (clipped); records its batch sizes."""

    def __init__(self):
        self.batch_sizes = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(images))
        inside = np.clip(images[:, REGION[0], REGION[1], :].mean(axis=(1, 2, 3)), 0.0, 1.0)
        return np.column_stack([1.0 - inside, inside])


def _box(rows: slice, cols: slice) -> np.ndarray:
    box = np.zeros((SIZE, SIZE), dtype=np.float32)
    box[rows, cols] = 1.0
    return box


def test_perfect_map_beats_a_wrong_one_on_a_known_model():
    image = np.repeat(_box(*REGION)[..., None], 3, axis=-1)  # 1 in R, 0 around it
    maps = np.stack([_box(*REGION), _box(slice(0, 4), slice(0, 4))])  # perfect, wrong corner
    inputs = np.stack([image, image])
    tolerance = 8 * 0.01 / np.sqrt(16 * 3)  # noise std 0.01 * range 1, averaged over R

    curves = road_curves(RegionEngine(), inputs, maps, [1, 1], FRACTIONS, batch_size=5)

    perfect_morf, wrong_morf = curves["morf"]
    perfect_lerf = curves["lerf"][0]
    assert curves["morf"].shape == curves["lerf"].shape == (2, len(FRACTIONS) + 2)
    np.testing.assert_array_equal(curves["morf"][:, 0], 1.0)
    # MoRF at |R|/N removes exactly R; its fill comes from the 0 surround.
    np.testing.assert_allclose(perfect_morf[1:-1], 0.0, atol=tolerance)
    # LeRF keeps every pixel of R until the last 1/16: the score does not move at all.
    np.testing.assert_array_equal(perfect_lerf[:-1], 1.0)
    # The wrong map's first 1/16 is the corner, far from R.
    assert wrong_morf[1] == 1.0
    # Everything removed: the image mean, |R| / N, in both orders.
    np.testing.assert_allclose(curves["morf"][:, -1], 16 / 256, atol=tolerance)
    np.testing.assert_array_equal(curves["morf"][:, -1], curves["lerf"][:, -1])

    ends = np.concatenate([[0.0], FRACTIONS, [1.0]])
    perfect = road_summary({key: curve[:1] for key, curve in curves.items()}, ends)
    wrong = road_summary({key: curve[1:] for key, curve in curves.items()}, ends)
    assert perfect["gap"] > 0.8
    assert perfect["gap"] > wrong["gap"] + 0.1


def test_curves_are_deterministic_whatever_the_batching():
    rng = np.random.default_rng(4)
    inputs = rng.random((3, 12, 12, 2), dtype=np.float32)
    maps = rng.random((3, 12, 12))
    inputs[2], maps[2] = inputs[0], maps[0]  # a copy of image 0 gets noise of its own
    fractions = [0.25, 0.5, 0.75]

    def curves(batch_size: int, seed: int = 0, engine=None):
        engine = engine or RegionEngine()
        return road_curves(engine, inputs, maps, [1, 0, 1], fractions, batch_size,
                           noise=0.05, seed=seed)

    engine = RegionEngine()
    first = curves(4, engine=engine)
    assert max(engine.batch_sizes) <= 4 and sum(engine.batch_sizes) == 3 * 8
    for batch_size in (1, 7, 100):
        again = curves(batch_size)
        for key in ("morf", "lerf"):
            np.testing.assert_array_equal(again[key], first[key])
    assert not np.array_equal(curves(4, seed=1)["morf"], first["morf"])
    assert not np.array_equal(first["morf"][2], first["morf"][0])


def test_summary_areas_and_gap():
    curves = {"morf": np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
              "lerf": np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])}

    summary = road_summary(curves, [0.0, 0.5, 1.0])

    # Trapezoids on [0, 0.5, 1]: areas 0.25 and 0.75 for MoRF, 1 for LeRF.
    assert summary == pytest.approx({"morf_auc": 0.5, "lerf_auc": 1.0, "gap": 0.5})
    with pytest.raises(ValueError, match="evenly spaced"):
        road_summary(curves, [0.0, 0.2, 1.0])
