"""Every form a classifier's head takes gives the same probabilities as `model.predict` and
explains the same pre-activation logit (issue 13, item 7).

Before, a head was recognised by its activation's name: `keras.layers.Softmax()`,
`tf.nn.softmax` (named "softmax_v2") and a softmax followed by a linear layer were read as
logits, so their "probabilities" were a softmax of probabilities (off by up to 0.17 here) and
their maps explained the wrong score."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from report.cam.engine import make_engine

SIZE = 24


def dense(units: int, **kwargs):
    return layers.Dense(units, name="logits", **kwargs)


SOFTMAX_HEADS = {
    "Dense(softmax)": lambda h: dense(3, activation="softmax")(h),
    "Dense(tf.nn.softmax)": lambda h: dense(3, activation=tf.nn.softmax)(h),
    "Dense + Activation('softmax')": lambda h: layers.Activation("softmax")(dense(3)(h)),
    "Dense + Softmax()": lambda h: layers.Softmax()(dense(3)(h)),
    "Dense + Activation(tf.nn.softmax)": lambda h: layers.Activation(tf.nn.softmax)(dense(3)(h)),
    "Dense + Activation(keras.ops.softmax)": lambda h: layers.Activation(keras.ops.softmax)(
        dense(3)(h)),
    "Dense + Softmax() + Dropout": lambda h: layers.Dropout(0.3)(layers.Softmax()(dense(3)(h))),
    "Dense + Softmax() + Activation('linear')": lambda h: layers.Activation("linear")(
        layers.Softmax()(dense(3)(h))),
}
SIGMOID_HEADS = {
    "Dense(sigmoid)": lambda h: dense(3, activation="sigmoid")(h),
    "Dense + Activation('sigmoid')": lambda h: layers.Activation("sigmoid")(dense(3)(h)),
    "Dense(keras.ops.sigmoid)": lambda h: dense(3, activation=keras.ops.sigmoid)(h),
    "Dense(tf.nn.sigmoid)": lambda h: dense(3, activation=tf.nn.sigmoid)(h),
}


def classifier(head, nested: bool = False) -> keras.Model:
    keras.utils.set_random_seed(7)  # the same weights whatever the head's form
    inputs = keras.Input((SIZE, SIZE, 3))
    features = layers.Conv2D(5, 3, activation="relu", name="features")(inputs)
    pooled = layers.GlobalAveragePooling2D()(features)
    if nested:
        head_inputs = keras.Input((5,))
        return keras.Model(inputs, keras.Model(head_inputs, head(head_inputs), name="head")(pooled))
    return keras.Model(inputs, head(pooled))


def logit_reference(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Grad-CAM written out on the explicit logits: the Dense layer's output before any
    activation, differentiated for the predicted class (per image, from the paper)."""
    logits_layer = _find(model, "logits")
    feature_model = keras.Model(model.inputs, model.get_layer("features").output)
    maps = []
    for image in images:
        with tf.GradientTape() as tape:
            activations = feature_model(image[None])
            tape.watch(activations)
            pooled = tf.reduce_mean(activations, axis=(1, 2))
            z = tf.matmul(pooled, logits_layer.kernel) + logits_layer.bias
            chosen = int(tf.argmax(z[0]))
            score = z[0, chosen]
        gradients = tape.gradient(score, activations)
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        maps.append(tf.nn.relu(tf.reduce_sum(activations * weights[:, None, None, :], -1))[0])
    return np.stack(maps)


def _find(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _find(layer, name)
            if found is not None:
                return found
    return None


IMAGES = np.random.default_rng(3).uniform(0, 1, (5, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested head"])
@pytest.mark.parametrize("form", list(SOFTMAX_HEADS) + list(SIGMOID_HEADS))
def test_probabilities_are_model_predict_and_maps_explain_the_logit(form, nested):
    head = {**SOFTMAX_HEADS, **SIGMOID_HEADS}[form]
    model = classifier(head, nested)
    engine = make_engine("gradcam", model, "features", "logit", (SIZE, SIZE, 3))
    assert engine.head.activation == ("softmax" if form in SOFTMAX_HEADS else "sigmoid")
    explanation = engine.explain(IMAGES)
    np.testing.assert_allclose(explanation.probabilities, model.predict(IMAGES, verbose=0),
                               atol=1e-6)
    np.testing.assert_allclose(engine.predict(IMAGES), model.predict(IMAGES, verbose=0),
                               atol=1e-6)
    np.testing.assert_allclose(explanation.raw_maps, logit_reference(model, IMAGES),
                               rtol=1e-4, atol=1e-6)


def test_a_head_without_activation_is_read_as_logits():
    model = classifier(lambda h: dense(3)(h))
    engine = make_engine("gradcam", model, "features", "logit", (SIZE, SIZE, 3))
    logits = model.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(engine.predict(IMAGES), tf.nn.softmax(logits).numpy(), atol=1e-6)
    np.testing.assert_allclose(engine.explain(IMAGES).raw_maps, logit_reference(model, IMAGES),
                               rtol=1e-4, atol=1e-6)
