"""Every CAM method against a slow reference written here from its paper's formula.

The references run one image at a time, cut the model by hand (the nested backbone on its own
inputs, the head applied layer by layer, the final Dense without its activation) and do the
arithmetic in numpy. The engine runs batched, compiled, and reaches into the model by tapping
the target layer; agreement to 1e-4 is the check that the two compute the same thing.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from report.cam.engine import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from report.cam.layers import resolve_target_layer
from report.cam.normalise import per_image
from report.errors import UserError

SIZE = 48


# --- models -----------------------------------------------------------------------------------


def tutorial_head(backbone: keras.Model, n_classes: int = 3) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input(backbone.inputs[0].shape[1:]),
            backbone,
            layers.AveragePooling2D(2),
            layers.Flatten(),
            layers.Dense(20, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(n_classes, activation="softmax"),
        ]
    )


def small_backbone(size: int = SIZE, rescaling: bool = False) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(inputs) if rescaling else inputs
    x = layers.Conv2D(6, 3, activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    return keras.Model(inputs, x, name="backbone")


def images(n: int, seed: int = 0, size: int = SIZE, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32) * scale


# --- the references ---------------------------------------------------------------------------


def features_and_gradients(features_of, logits_of, image, class_index=None):
    """A (h, w, K), dy_c/dA (h, w, K), the class c and y (all class logits) for one image."""
    activations = tf.constant(features_of(image[None]))
    with tf.GradientTape() as tape:
        tape.watch(activations)
        logits = logits_of(activations)
        c = int(np.argmax(logits[0])) if class_index is None else class_index
        score = logits[0, c]
    gradients = tape.gradient(score, activations).numpy()[0]
    return activations.numpy()[0], gradients, c, logits.numpy()[0]


def reference_gradcam(features_of, logits_of, image, class_index=None):
    """Selvaraju et al. eq. 1-2: a_k = 1/Z sum_ij dy_c/dA_k[i,j]; L = ReLU(sum_k a_k A_k)."""
    a, g, c, _ = features_and_gradients(features_of, logits_of, image, class_index)
    weights = g.mean(axis=(0, 1))
    return c, np.maximum(np.einsum("hwk,k->hw", a, weights), 0.0)


def reference_gradcam_plus_plus(features_of, logits_of, image):
    """Chattopadhay et al. eq. 19 with S = exp(y_c): for a piecewise-linear head,
    d2S/dA2 = exp(y) g^2 and d3S/dA3 = exp(y) g^3, so
    alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) and w_k = sum_ij alpha_ij ReLU(dS/dA_ij)."""
    a, g, c, logits = features_and_gradients(features_of, logits_of, image)
    exp_y = np.exp(logits[c])
    second, third = exp_y * g**2, exp_y * g**3
    denominator = 2 * second + a.sum(axis=(0, 1)) * third
    alpha = np.where(denominator != 0, second / np.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * np.maximum(exp_y * g, 0)).sum(axis=(0, 1))
    return c, np.maximum(np.einsum("hwk,k->hw", a, weights), 0.0)


def reference_layercam(features_of, logits_of, image):
    """Jiang et al. eq. 5-6: M = ReLU(sum_k ReLU(g_kij) * A_kij)."""
    a, g, c, _ = features_and_gradients(features_of, logits_of, image)
    return c, np.maximum((np.maximum(g, 0) * a).sum(axis=-1), 0.0)


def reference_scorecam(features_of, model_logits, image, size):
    """Wang et al.: mask the input by each upsampled, min-max normalised A_k, one channel at a
    time; weights are the softmax over channels of the class score of the masked inputs."""
    a = np.asarray(features_of(image[None])[0])
    c = int(np.argmax(model_logits(image[None])[0]))
    scores = []
    for k in range(a.shape[-1]):
        upsampled = cv2.resize(a[..., k], (size, size), interpolation=cv2.INTER_LINEAR)
        span = upsampled.max() - upsampled.min()
        mask = (upsampled - upsampled.min()) / span if span > 0 else np.zeros_like(upsampled)
        scores.append(float(model_logits((image * mask[..., None])[None])[0, c]))
    weights = np.exp(scores - np.max(scores))
    weights /= weights.sum()
    return c, np.maximum(np.einsum("hwk,k->hw", a, weights), 0.0)


def head_logits(model: keras.Sequential, after_target: list | None = None):
    """The layers after the target, the final Dense applied without its activation."""
    *middle, final = model.layers[1:]

    def logits(activations):
        x = activations
        for layer in [*(after_target or []), *middle]:
            x = layer(x, training=False)
        return tf.matmul(x, final.kernel) + (final.bias if final.use_bias else 0)

    return logits


def assert_matches(engine, reference, batch, *, normalised: bool = False):
    explanation = engine.explain(batch)
    for i, image in enumerate(batch):
        predicted, expected = reference(image)
        assert explanation.class_index[i] == predicted
        got = explanation.raw_maps[i]
        if normalised:
            got, expected = per_image(got[None])[0], per_image(expected[None])[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    return explanation


# --- the architecture matrix ------------------------------------------------------------------

MATRIX_SIZE = 96
BACKBONES = {
    "small-cnn": (lambda: small_backbone(MATRIX_SIZE), "backbone/c2"),
    "vgg16": (keras.applications.VGG16, "vgg16/block5_conv3"),
    "resnet50v2": (keras.applications.ResNet50V2, "resnet50v2/post_relu"),
    "xception": (keras.applications.Xception, "xception/block14_sepconv2_act"),
    "densenet121": (keras.applications.DenseNet121, "densenet121/relu"),
    "mobilenetv2": (keras.applications.MobileNetV2, "mobilenetv2_1.00_96/out_relu"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "efficientnetb0/top_activation"),
}


def build_backbone(name: str) -> keras.Model:
    factory, _ = BACKBONES[name]
    if name == "small-cnn":
        return factory()
    return factory(include_top=False, weights=None, input_shape=(MATRIX_SIZE, MATRIX_SIZE, 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradcam_on_nested_backbones_matches_the_paper_and_ignores_batching(name):
    keras.utils.set_random_seed(0)
    backbone = build_backbone(name)
    model = tutorial_head(backbone)
    engine = GradCAM(model)
    assert engine.target.name == BACKBONES[name][1]

    target = backbone.get_layer(engine.target.name.split("/")[-1])
    features_of = keras.Model(backbone.inputs, target.output)
    # Inside the backbone, only VGG16 has layers after the target (its last pooling layer).
    after = backbone.layers[backbone.layers.index(target) + 1:]
    assert all(isinstance(layer, layers.MaxPooling2D) for layer in after)
    logits_of = head_logits(model, after)

    batch = images(32, seed=1, size=MATRIX_SIZE, scale=255.0 if name == "efficientnetb0" else 1.0)
    together = assert_matches(
        engine, lambda image: reference_gradcam(features_of, logits_of, image), batch[:3]
    )
    batched = engine.explain(batch)
    np.testing.assert_allclose(batched.raw_maps[:3], together.raw_maps, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(batched.probabilities, model.predict(batch, verbose=0), atol=1e-5)


def test_binary_sigmoid_head_explains_both_classes_through_the_logit():
    keras.utils.set_random_seed(2)
    backbone = small_backbone()
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), backbone,
                              layers.GlobalAveragePooling2D(), layers.Dense(1, "sigmoid")])
    engine = GradCAM(model)
    assert engine.head.n_classes == 2
    features_of = keras.Model(backbone.inputs, backbone.get_layer("c2").output)
    final = model.layers[-1]

    def class_logits(activations):  # (negative, positive) = (-z, z)
        z = tf.matmul(model.layers[1](activations), final.kernel) + final.bias
        return tf.concat([-z, z], axis=-1)

    batch = images(4, seed=3)
    p = model.predict(batch, verbose=0)[:, 0]
    explanation = engine.explain(batch)
    np.testing.assert_allclose(explanation.probabilities, np.stack([1 - p, p], 1), atol=1e-6)
    for c in (0, 1):
        chosen = engine.explain(batch, np.full(4, c))
        for i, image in enumerate(batch):
            _, expected = reference_gradcam(features_of, class_logits, image, c)
            np.testing.assert_allclose(chosen.raw_maps[i], expected, atol=1e-4, rtol=1e-4)


def test_rescaling_inside_the_model_and_a_head_without_activation():
    keras.utils.set_random_seed(4)
    backbone = small_backbone(rescaling=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), backbone, layers.Flatten(),
                              layers.Dense(3)])  # raw logits, no activation
    engine = GradCAM(model)
    assert engine.target.name == "backbone/c2"
    features_of = keras.Model(backbone.inputs, backbone.get_layer("c2").output)
    batch = images(3, seed=5, scale=255.0)
    explanation = assert_matches(
        engine, lambda image: reference_gradcam(features_of, head_logits(model), image), batch
    )
    logits = model.predict(batch, verbose=0)
    np.testing.assert_allclose(explanation.probabilities, tf.nn.softmax(logits), atol=1e-6)


class Wrapper(keras.Model):
    """A subclassed model around a nested backbone: no `inputs`, no `layer.output`."""

    def __init__(self, backbone):
        super().__init__(name="wrapper")
        self.classifier = layers.Dense(3, activation="softmax", name="classifier")
        self.backbone = backbone  # assigned after the head: `layers` order is not call order
        self.pool = layers.GlobalAveragePooling2D(name="pool")

    def call(self, x, training=False):
        return self.classifier(self.pool(self.backbone(x, training=training)))


def test_subclassed_wrapper_is_traced_in_call_order():
    keras.utils.set_random_seed(6)
    backbone = small_backbone()
    model = Wrapper(backbone)
    engine = GradCAM(model, input_shape=(SIZE, SIZE, 3))
    assert engine.target.name == "backbone/c2"
    features_of = keras.Model(backbone.inputs, backbone.get_layer("c2").output)

    def logits_of(activations):
        return tf.matmul(model.pool(activations), model.classifier.kernel) + model.classifier.bias

    assert_matches(engine, lambda image: reference_gradcam(features_of, logits_of, image),
                   images(3, seed=7))


def test_score_probability_differentiates_the_softmax_output():
    keras.utils.set_random_seed(8)
    model = tutorial_head(small_backbone())
    backbone = model.layers[0]
    features_of = keras.Model(backbone.inputs, backbone.get_layer("c2").output)
    logits = head_logits(model)

    def probabilities(activations):
        return tf.nn.softmax(logits(activations))

    engine = GradCAM(model, score="probability")
    assert_matches(engine, lambda image: reference_gradcam(features_of, probabilities, image),
                   images(3, seed=9))


# --- the other methods ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(10)
    model = tutorial_head(small_backbone())
    backbone = model.layers[0]
    return model, keras.Model(backbone.inputs, backbone.get_layer("c2").output)


def test_gradcam_plus_plus_matches_its_paper(small_model):
    model, features_of = small_model
    reference = lambda image: reference_gradcam_plus_plus(features_of, head_logits(model), image)  # noqa: E731
    assert_matches(GradCAMPlusPlus(model), reference, images(4, seed=11), normalised=True)


def test_layercam_matches_its_paper(small_model):
    model, features_of = small_model
    reference = lambda image: reference_layercam(features_of, head_logits(model), image)  # noqa: E731
    assert_matches(LayerCAM(model), reference, images(4, seed=12))


def test_scorecam_matches_a_direct_per_channel_loop(small_model):
    model, features_of = small_model
    logits = head_logits(model)

    def model_logits(x):
        return logits(features_of(x)).numpy()

    engine = ScoreCAM(model, chunk_size=3)  # 8 channels in chunks of 3: the last one is short
    reference = lambda image: reference_scorecam(features_of, model_logits, image, SIZE)  # noqa: E731
    assert_matches(engine, reference, images(3, seed=13))


def test_methods_give_different_maps(small_model):
    model, _ = small_model
    batch = images(4, seed=14)
    maps = [cls(model).explain(batch).raw_maps for cls in (GradCAM, GradCAMPlusPlus, LayerCAM)]
    assert not np.allclose(per_image(maps[0]), per_image(maps[2]), atol=1e-3)


# --- the shared machinery ---------------------------------------------------------------------


def test_maps_are_bilinear_upsamples_of_the_raw_maps(small_model):
    model, _ = small_model
    explanation = GradCAM(model).explain(images(3, seed=15))
    for raw, upsampled in zip(explanation.raw_maps, explanation.maps, strict=True):
        expected = cv2.resize(raw, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(upsampled, expected, atol=1e-5, rtol=1e-4)


def test_the_model_is_left_unchanged(small_model):
    model, _ = small_model
    batch = images(2)
    before = model.predict(batch, verbose=0)
    GradCAM(model).explain(batch)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert "call" not in vars(model.layers[0].get_layer("c2"))
    np.testing.assert_allclose(model.predict(batch, verbose=0), before, atol=1e-7)


def test_one_trace_serves_every_batch_size(small_model):
    model, _ = small_model
    engine = GradCAM(model)
    for n in (1, 5, 32, 5):
        engine.explain(images(n))
    assert engine._compiled.experimental_get_tracing_count() == 1


def test_layer_can_be_named_with_or_without_its_path():
    model = tutorial_head(small_backbone())
    assert resolve_target_layer(model, "backbone/c1").name == "backbone/c1"
    assert resolve_target_layer(model, "c1").name == "backbone/c1"
    with pytest.raises(UserError, match="no layer of that name"):
        resolve_target_layer(model, "c9")
    with pytest.raises(UserError, match="not a spatial feature map"):
        resolve_target_layer(model, model.layers[-1].name)


def test_a_model_without_spatial_layers_is_a_user_error():
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Flatten(),
                              layers.Dense(3, activation="softmax")])
    with pytest.raises(UserError, match="spatial"):
        resolve_target_layer(model)


def test_a_1x1_logits_conv_after_global_pooling_is_never_the_target():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(4, 3, name="features")(inputs)
    x = layers.GlobalAveragePooling2D(keepdims=True)(x)
    outputs = layers.Conv2D(3, 1, activation="softmax", name="logits")(x)
    model = keras.Model(inputs, layers.Flatten()(outputs))
    assert resolve_target_layer(model).name == "features"
