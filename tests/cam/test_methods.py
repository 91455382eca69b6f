"""HiResCAM, XGrad-CAM, Eigen-CAM and Ablation-CAM, each against a slow per-image reference
written here from its paper's formula (the models, helpers and tolerance of test_gradcam.py).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from report.cam.engine import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    HiResCAM,
    RandomCAM,
    SobelMap,
    XGradCAM,
    make_engine,
)
from report.cam.normalise import per_image
from tests.cam.test_gradcam import (
    assert_matches,
    features_and_gradients,
    head_logits,
    images,
    small_backbone,
    tutorial_head,
)


@pytest.fixture(scope="module")
def small_model():
    import keras

    keras.utils.set_random_seed(21)
    model = tutorial_head(small_backbone())
    backbone = model.layers[0]
    return model, keras.Model(backbone.inputs, backbone.get_layer("c2").output)


def reference_hirescam(features_of, logits_of, image):
    """Draelos and Carin 2020, eq. 3: M = ReLU(sum_k dy_c/dA_k (.) A_k), element-wise."""
    a, g, c, _ = features_and_gradients(features_of, logits_of, image)
    return c, np.maximum((g * a).sum(axis=-1), 0.0)


def reference_xgradcam(features_of, logits_of, image):
    """Fu et al. 2020, eq. 9: w_k = sum_ij (A_kij / sum_ab A_kab) dy_c/dA_kij."""
    a, g, c, _ = features_and_gradients(features_of, logits_of, image)
    totals = a.sum(axis=(0, 1))
    weights = np.array([(a[..., k] / totals[k] * g[..., k]).sum() if totals[k] else 0.0
                        for k in range(a.shape[-1])])
    return c, np.maximum(np.einsum("hwk,k->hw", a, weights), 0.0)


def reference_eigencam(features_of, logits_of, image):
    """Muhammad and Yeasin 2020: project A (hw x K) on its first right singular vector;
    the sign made positive overall."""
    a = np.asarray(features_of(image[None])[0], dtype=np.float64)
    c = int(np.argmax(logits_of(a[None].astype(np.float32))[0]))
    matrix = a.reshape(-1, a.shape[-1])
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    projection = matrix @ vt[0]
    if projection.sum() < 0:
        projection = -projection
    return c, np.maximum(projection, 0.0).reshape(a.shape[:2])


def reference_ablationcam(features_of, logits_of, image):
    """Desai and Ramaswamy 2020, eq. 2: w_k = (y_c - y_c^k) / y_c, y_c^k the class score with
    feature map k set to zero; one forward pass of the rest of the network per channel."""
    a = np.asarray(features_of(image[None])[0])
    y = np.asarray(logits_of(a[None])[0])
    c = int(np.argmax(y))
    weights = []
    for k in range(a.shape[-1]):
        ablated = a.copy()
        ablated[..., k] = 0.0
        weights.append((y[c] - float(logits_of(ablated[None])[0, c])) / y[c])
    return c, np.maximum(np.einsum("hwk,k->hw", a, np.array(weights)), 0.0)


@pytest.mark.parametrize("engine_class, reference", [
    (HiResCAM, reference_hirescam),
    (XGradCAM, reference_xgradcam),
    (EigenCAM, reference_eigencam),
])
def test_gradient_and_eigen_methods_match_their_papers(small_model, engine_class, reference):
    model, features_of = small_model
    logits = head_logits(model)
    assert_matches(engine_class(model), lambda image: reference(features_of, logits, image),
                   images(4, seed=31))


def test_ablationcam_matches_a_direct_per_channel_loop(small_model):
    model, features_of = small_model
    logits = head_logits(model)
    engine = AblationCAM(model, chunk_size=5)  # 2 images x 8 channels in chunks of 5
    assert_matches(engine, lambda image: reference_ablationcam(features_of, logits, image),
                   images(2, seed=32))


def test_hirescam_equals_gradcam_when_the_head_averages_the_features(small_model):
    """Draelos and Carin's own point: with a global-average-pooled linear head, the gradient
    is the same at every position, so HiResCAM and Grad-CAM coincide (up to the 1/hw they
    both drop under the min-max scale); with the tutorial's head (AveragePooling2D(2) then
    Flatten and Dense) they must not."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(22)
    backbone = small_backbone()
    pooled = keras.Sequential([backbone, layers.GlobalAveragePooling2D(),
                               layers.Dense(3, activation="softmax")])
    batch = images(3, seed=33)
    np.testing.assert_allclose(per_image(HiResCAM(pooled).explain(batch).raw_maps),
                               per_image(GradCAM(pooled).explain(batch).raw_maps), atol=1e-4)
    model, _ = small_model
    assert not np.allclose(per_image(HiResCAM(model).explain(batch).raw_maps),
                           per_image(GradCAM(model).explain(batch).raw_maps), atol=1e-3)


def test_eigencam_gives_every_class_the_same_map(small_model):
    model, _ = small_model
    batch = images(2, seed=34)
    engine = EigenCAM(model)
    maps = [engine.explain(batch, np.full(2, c)).raw_maps for c in range(3)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)


# --- baselines ------------------------------------------------------------------------------


def reference_randomcam(features_of, logits_of, images, seed):
    """pytorch-grad-cam's RandomCAM: w_k ~ U(-1, 1) per image and channel (here seeded by
    the image's bytes), then the shared ReLU(sum_k w_k A_k), written as a loop over
    channels."""
    features = np.asarray(features_of(images), dtype=np.float64)
    weights = [np.random.default_rng([seed, zlib.crc32(image.astype(np.float32).tobytes())])
               .uniform(-1.0, 1.0, features.shape[-1]) for image in images]
    maps = []
    for a, w in zip(features, weights, strict=True):
        total = np.zeros(a.shape[:2])
        for k in range(a.shape[-1]):
            total += w[k] * a[..., k]
        maps.append(np.maximum(total, 0.0))
    classes = np.argmax(np.asarray(logits_of(features.astype(np.float32))), axis=-1)
    return classes, np.stack(maps)


def reference_sobel(image):
    """Sobel (1968): Gx and Gy by their 3 x 3 kernels on the channel mean, borders reflected
    without repeating the edge pixel (OpenCV's BORDER_REFLECT_101), then sqrt(Gx^2 + Gy^2)."""
    grey = image.astype(np.float64).mean(axis=-1)
    padded = np.pad(grey, 1, mode="reflect")
    gx_kernel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    out = np.zeros_like(grey)
    for i in range(grey.shape[0]):
        for j in range(grey.shape[1]):
            window = padded[i : i + 3, j : j + 3]
            out[i, j] = np.hypot((window * gx_kernel).sum(), (window * gx_kernel.T).sum())
    return out


def test_randomcam_matches_random_channel_weights(small_model):
    model, features_of = small_model
    batch = images(3, seed=35)
    engine = RandomCAM(model)
    explanation = engine.explain(batch)
    classes, expected = reference_randomcam(features_of, head_logits(model), batch, engine.seed)
    np.testing.assert_array_equal(explanation.class_index, classes)
    np.testing.assert_allclose(explanation.raw_maps, expected, atol=1e-4, rtol=1e-4)
    again = engine.explain(batch)  # the same sample gets the same maps
    np.testing.assert_array_equal(again.raw_maps, explanation.raw_maps)
    alone = engine.explain(batch[2:])  # whatever the batch an image comes in
    np.testing.assert_allclose(alone.raw_maps[0], explanation.raw_maps[2], atol=1e-6)


def test_sobel_baseline_is_the_edge_map_of_the_input_and_ignores_the_model(small_model):
    model, _ = small_model
    batch = images(2, seed=36)
    explanation = SobelMap(model).explain(batch)
    for got, image in zip(explanation.maps, batch, strict=True):
        np.testing.assert_allclose(got, reference_sobel(image), atol=1e-4, rtol=1e-4)
    # The model predicts the classes; its weights play no part in the map.
    np.testing.assert_array_equal(explanation.class_index,
                                  GradCAM(model).explain(batch).class_index)
    for variable in model.trainable_weights[:1]:
        saved = variable.numpy()
        variable.assign(np.zeros_like(saved))
        try:
            np.testing.assert_array_equal(SobelMap(model).explain(batch).maps,
                                          explanation.maps)
        finally:
            variable.assign(saved)


def test_baselines_are_engines_but_not_report_methods(small_model):
    from report.options import METHODS

    model, _ = small_model
    for name in ("randomcam", "sobel"):
        assert make_engine(name, model).baseline
        assert name not in METHODS
    assert not make_engine("gradcam", model).baseline
