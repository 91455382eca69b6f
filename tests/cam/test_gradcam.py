"""Grad-CAM against a slow reference written here from the paper's formula.

Selvaraju et al. 2017, eq. 1-2: a_k^c = 1/Z sum_ij dy^c/dA^k_ij, with y^c the class score
before the softmax; L^c = ReLU(sum_k a_k^c A^k). The reference runs one image at a time, cuts
the model by hand and does the arithmetic in numpy; the engine runs batched and compiled.
"""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from report.cam.engine import GradCAM
from report.cam.layers import resolve_target_layer
from report.errors import UserError

SIZE = 48


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


def small_backbone() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(6, 3, activation="relu", name="c1")(inputs)
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    return keras.Model(inputs, x, name="backbone")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


def reference_gradcam(features_of, logits_of, image: np.ndarray):
    """One image: A = features_of(x); y = logits_of(A) (pre-softmax); the paper's formula."""
    activations = tf.constant(features_of(image[None]))
    with tf.GradientTape() as tape:
        tape.watch(activations)
        logits = logits_of(activations)
        predicted = int(np.argmax(logits[0]))
        score = logits[0, predicted]
    gradients = tape.gradient(score, activations).numpy()[0]  # (h, w, K)
    a = activations.numpy()[0]
    weights = gradients.mean(axis=(0, 1))  # a_k: global average of the gradients
    cam = np.maximum(np.einsum("hwk,k->hw", a, weights), 0.0)  # ReLU(sum_k a_k A^k)
    return predicted, cam


def pre_softmax_head(model: keras.Sequential):
    """The tutorial head after the backbone, with the final Dense applied without softmax."""
    pool, flatten, dense, _dropout, final = model.layers[1:]

    def logits(activations):
        hidden = dense(flatten(pool(activations)))
        return tf.matmul(hidden, final.kernel) + final.bias

    return logits


def test_gradcam_equals_the_paper_formula_on_a_nested_backbone():
    keras.utils.set_random_seed(1)
    model = tutorial_head(small_backbone())
    engine = GradCAM(model)
    assert engine.target.name == "backbone/c2"
    backbone = model.layers[0]
    features_of = keras.Model(backbone.inputs, backbone.get_layer("c2").output)
    batch = images(5)
    explanation = engine.explain(batch)
    for i, image in enumerate(batch):
        predicted, cam = reference_gradcam(features_of, pre_softmax_head(model), image)
        assert explanation.class_index[i] == predicted
        np.testing.assert_allclose(explanation.raw_maps[i], cam, atol=1e-4, rtol=1e-4)


def test_gradcam_equals_the_paper_formula_on_a_functional_model_with_conv_tail():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(6, 3, strides=2, activation="relu")(inputs)
    features = layers.Conv2D(8, 3, activation="relu", name="features")(x)
    y = layers.Conv2D(4, 3, activation="tanh", name="tail")(features)
    y = layers.GlobalAveragePooling2D()(y)
    outputs = layers.Dense(3, activation="softmax", name="out")(y)
    model = keras.Model(inputs, outputs)
    engine = GradCAM(model, layer="features")
    features_of = keras.Model(inputs, features)
    tail, gap, out = model.get_layer("tail"), model.layers[-2], model.get_layer("out")

    def logits_of(activations):
        return tf.matmul(gap(tail(activations)), out.kernel) + out.bias

    batch = images(4, seed=3)
    explanation = engine.explain(batch)
    for i, image in enumerate(batch):
        predicted, cam = reference_gradcam(features_of, logits_of, image)
        assert explanation.class_index[i] == predicted
        np.testing.assert_allclose(explanation.raw_maps[i], cam, atol=1e-4, rtol=1e-4)


def test_maps_are_bilinear_upsampled_and_min_max_normalised():
    keras.utils.set_random_seed(4)
    engine = GradCAM(tutorial_head(small_backbone()))
    explanation = engine.explain(images(3, seed=5))
    for raw, upsampled in zip(explanation.raw_maps, explanation.maps, strict=True):
        expected = cv2.resize(raw, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        np.testing.assert_allclose(upsampled, expected, atol=1e-4)


def test_probabilities_are_the_models_own_outputs():
    keras.utils.set_random_seed(6)
    model = tutorial_head(small_backbone())
    batch = images(4, seed=7)
    explanation = GradCAM(model).explain(batch)
    np.testing.assert_allclose(explanation.probabilities, model.predict(batch, verbose=0),
                               atol=1e-6)


def test_an_images_map_does_not_depend_on_its_batch():
    keras.utils.set_random_seed(8)
    engine = GradCAM(tutorial_head(small_backbone()))
    batch = images(32, seed=9)
    together = engine.explain(batch)
    alone = engine.explain(batch[5:6])
    np.testing.assert_allclose(alone.raw_maps[0], together.raw_maps[5], atol=1e-5)
    np.testing.assert_allclose(alone.maps[0], together.maps[5], atol=1e-5)


def test_registered_model_is_left_unchanged():
    keras.utils.set_random_seed(10)
    model = tutorial_head(small_backbone())
    batch = images(2)
    before = model.predict(batch, verbose=0)
    GradCAM(model).explain(batch)
    assert model.layers[-1].activation.__name__ == "softmax"
    np.testing.assert_allclose(model.predict(batch, verbose=0), before, atol=1e-7)


def test_automatic_layer_in_a_nested_vgg16_is_its_last_conv_not_a_pooling_layer():
    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    target = resolve_target_layer(tutorial_head(backbone))
    assert target.name == "vgg16/block5_conv3"
    assert target.map_size == (4, 4)


def test_layer_can_be_named_with_or_without_its_path():
    model = tutorial_head(small_backbone())
    assert resolve_target_layer(model, "backbone/c1").name == "backbone/c1"
    assert resolve_target_layer(model, "c1").name == "backbone/c1"
    with pytest.raises(UserError, match="no layer of that name"):
        resolve_target_layer(model, "c9")


def test_a_model_without_spatial_layers_is_a_user_error():
    model = keras.Sequential([keras.Input((8,)), layers.Dense(3, activation="softmax")])
    with pytest.raises(UserError, match="spatial"):
        resolve_target_layer(model)
