"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy
for Attribution Methods", ICML).

Deletion curves that paint removed pixels black leak information: the shape of the removed
region alone can tell the model the class, and the images are unlike any it was trained on.
ROAD fills removed pixels by noisy linear imputation from their neighbours instead, and scores
both orders: most relevant first (MoRF, the score should fall fast) and least relevant first
(LeRF, it should stay up). Pure numpy/scipy; the model only appears as ``engine.predict``.
"""

from __future__ import annotations

from itertools import islice

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

from report import measures

# The fractions removed by default: both callers' (the trust checks, `methods`). Evenly
# spaced, so that with both ends they are the x axis `measures.curve_auc` assumes.
FRACTIONS = (0.2, 0.4, 0.6, 0.8)
WITH_ENDS = (0.0, *FRACTIONS, 1.0)

# (row offset, column offset, weight) of the 8 neighbours, as in the paper's imputer:
# 1/6 for the direct neighbours and 1/12 for the diagonal ones (they sum to 1).
_NEIGHBOURS = tuple(
    (di, dj, 1 / 6 if di == 0 or dj == 0 else 1 / 12)
    for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)
)


def impute(image, removed, noise: float = 0.01, rng=None) -> np.ndarray:
    """Noisy linear imputation (Rong et al. 2022).

    ``image`` (H, W, C) float, ``removed`` (H, W) bool. Every removed pixel becomes the
    weighted mean of its neighbours inside the image (weights renormalised at the edges);
    neighbours may be removed too, so all removed pixels are solved together as one sparse
    linear system shared by the channels. Gaussian noise with standard deviation ``noise``
    times the image's value range is then added to the removed pixels only, so that the
    removal order cannot be read back from the smooth fill. Kept pixels are returned as they
    are. With every pixel removed the system is singular: they get the per-channel mean.
    Pass ``rng`` (a numpy Generator) for reproducible noise.
    """
    image = np.asarray(image, dtype=np.float32)
    removed = np.asarray(removed, dtype=bool)
    if image.ndim != 3 or removed.shape != image.shape[:2]:
        raise ValueError(f"need (H, W, C) image and (H, W) mask, got {image.shape}, "
                         f"{removed.shape}")
    filled = image.copy()
    if not removed.any():
        return filled
    filled[removed] = image.mean(axis=(0, 1)) if removed.all() else _linear_fill(image, removed)
    rng = np.random.default_rng() if rng is None else rng
    spread = float(image.max() - image.min())
    filled[removed] += rng.normal(0.0, noise * spread, size=filled[removed].shape)
    return filled


def _linear_fill(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(n_removed, C): the solution of  sum_n w_n * x_p - sum_{n removed} w_n * x_n =
    sum_{n kept} w_n * image_n  for every removed pixel p, n over its in-image neighbours.
    Built one neighbour offset at a time, vectorised over the pixels."""
    height, width, channels = image.shape
    is_removed = removed.ravel()
    unknowns = np.flatnonzero(is_removed)
    unknown_index = np.full(height * width, -1)
    unknown_index[unknowns] = np.arange(len(unknowns))
    rows, cols = np.divmod(unknowns, width)
    values = image.reshape(-1, channels).astype(np.float64)
    weight_sum = np.zeros(len(unknowns))
    rhs = np.zeros((len(unknowns), channels))
    coupling = []  # (equations, unknowns, weights) of the off-diagonal entries, per offset
    for di, dj, weight in _NEIGHBOURS:
        i, j = rows + di, cols + dj
        inside = (i >= 0) & (i < height) & (j >= 0) & (j < width)
        here = np.flatnonzero(inside)
        neighbour = i[inside] * width + j[inside]
        weight_sum[here] += weight
        # `here` has no repeats within one offset, so fancy-index += is safe.
        free = is_removed[neighbour]
        rhs[here[~free]] += weight * values[neighbour[~free]]
        coupling.append((here[free], unknown_index[neighbour[free]], np.full(free.sum(), -weight)))
    equations, others, weights = (np.concatenate(part) for part in zip(*coupling, strict=True))
    size = len(unknowns)
    system = sparse.coo_matrix((weights, (equations, others)), shape=(size, size))
    system = (system + sparse.diags(weight_sum)).tocsc()
    # The matrix is symmetric and diagonally dominant (positive definite), so LU needs no
    # pivoting: SuperLU's symmetric mode, ordered on A + A^T, is 1.5-2x faster than spsolve's
    # default at 224x224.
    factors = splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True})
    return factors.solve(rhs)


def road_curves(engine, inputs, maps, classes, fractions=FRACTIONS, batch_size: int = 32,
                noise: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """MoRF and LeRF curves with noisy linear imputation (Rong et al. 2022).

    For each image and each of ``fractions``, remove that share of pixels in
    ``measures.deletion_order`` (MoRF) or its reverse (LeRF), impute, and record the
    probability of ``classes[i]``. Returns {"morf", "lerf"}: (N, F + 2) arrays, column 0 the
    untouched image, the last one every pixel imputed (shared by both orders). The perturbed
    images are predicted ``batch_size`` at a time. Each image's noise comes from its own
    Generator seeded with (seed, image index), so the curves do not depend on the batching.
    """
    inputs = np.asarray(inputs, dtype=np.float32)
    fractions = np.asarray(fractions, dtype=float)
    orders = measures.deletion_order(maps)
    per_image = 2 * len(fractions) + 2
    images = (perturbed for index, (image, order) in enumerate(zip(inputs, orders, strict=True))
              for perturbed in _road_images(image, order, fractions, noise,
                                            np.random.default_rng([seed, index])))
    wanted = np.repeat(np.asarray(classes, dtype=int), per_image)
    scores = _class_scores(engine, images, wanted, batch_size).reshape(len(inputs), per_image)
    middle = len(fractions)
    return {
        "morf": np.column_stack([scores[:, : 1 + middle], scores[:, -1]]),
        "lerf": np.column_stack([scores[:, 0], scores[:, 1 + middle :]]),
    }


def _road_images(image, order, fractions, noise: float, rng):
    """The untouched image, MoRF at each fraction, LeRF at each fraction, all imputed: always
    in this order, so each image draws the same noise however the stream is batched."""
    yield image
    for ranking in (order, order[::-1]):
        for fraction in fractions:
            removed = np.zeros(order.size, dtype=bool)
            removed[ranking[: round(fraction * order.size)]] = True
            yield impute(image, removed.reshape(image.shape[:2]), noise, rng)
    yield impute(image, np.ones(image.shape[:2], dtype=bool), noise, rng)


def _class_scores(engine, images, classes: np.ndarray, batch_size: int) -> np.ndarray:
    """Probability of classes[k] for the k-th image of the stream, `batch_size` per pass."""
    scores, images = [], iter(images)
    while batch := list(islice(images, batch_size)):
        scores.append(engine.predict(np.stack(batch)))
    probabilities = np.concatenate(scores)
    return probabilities[np.arange(len(classes)), classes]


def road_summary(curves: dict[str, np.ndarray], fractions_with_ends) -> dict[str, float]:
    """Mean area under the MoRF curve (lower is more faithful), under the LeRF curve (higher
    is more faithful), and their gap LeRF - MoRF: the one number, higher is better.

    ``measures.curve_auc`` spaces the points evenly on [0, 1], so ``fractions_with_ends``
    (0, the fractions, 1) must be evenly spaced; it is checked, not used for the x axis.
    """
    fractions_with_ends = np.asarray(fractions_with_ends, dtype=float)
    even = np.linspace(0.0, 1.0, len(fractions_with_ends))
    if not np.allclose(fractions_with_ends, even):
        raise ValueError(f"fractions must be evenly spaced from 0 to 1, got {fractions_with_ends}")
    if any(curve.shape[1] != len(even) for curve in curves.values()):
        raise ValueError(f"curves need one column per fraction ({len(even)})")
    morf = float(np.mean(measures.curve_auc(curves["morf"])))
    lerf = float(np.mean(measures.curve_auc(curves["lerf"])))
    return {"morf_auc": morf, "lerf_auc": lerf, "gap": lerf - morf}
