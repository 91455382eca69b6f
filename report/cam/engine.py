"""Batched class activation maps: one compiled pass gives predictions and maps together.

Grad-CAM (Selvaraju et al. 2017): for class c with pre-softmax score y_c and feature maps A_k
of the target layer, weights a_k = mean over (i, j) of dy_c/dA_k[i, j]; the map is
ReLU(sum_k a_k A_k), upsampled bilinearly to the image. Methods differ only in how the channel
weights are computed (`channel_weights`), the way pytorch-grad-cam's BaseCAM is organised.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from report.cam.layers import TargetLayer, resolve_target_layer
from report.errors import UserError

SQUASHING = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Explanation:
    """A batch's predictions and maps, as numpy arrays."""

    probabilities: np.ndarray  # (B, C) what the model outputs
    class_index: np.ndarray  # (B,) the class each map explains (the predicted one)
    raw_maps: np.ndarray  # (B, h, w) float32 at feature-map resolution, unnormalised
    maps: np.ndarray  # (B, H, W) float32 in [0, 1], upsampled to the input size


class CAMEngine:
    """Settings are stored here; work happens in `explain`, one compiled call per batch."""

    method = "base"

    def __init__(self, model: keras.Model, layer: str | None = "auto"):
        self.model = model
        self.target: TargetLayer = resolve_target_layer(model, layer)
        self.output_layer = _output_layer(model)
        height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
        # A fixed signature with an open batch axis: one trace serves every batch size.
        self._compiled = tf.function(
            self._explain_batch,
            input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32)],
        )

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """(B, h, w, K) activations and score gradients -> (B, K) channel weights."""
        raise NotImplementedError

    def explain(self, images: np.ndarray) -> Explanation:
        """`images` are preprocessed float32 (B, H, W, C) model inputs."""
        probabilities, class_index, raw_maps, maps = self._compiled(tf.constant(images))
        return Explanation(
            probabilities=probabilities.numpy(),
            class_index=class_index.numpy(),
            raw_maps=raw_maps.numpy(),
            maps=maps.numpy(),
        )

    def _explain_batch(self, images: tf.Tensor):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            with _tap(self.target.layer, tape) as activations, _logits_of(self.output_layer):
                scores = self.model(images, training=False)
            class_index = tf.argmax(scores, axis=-1, output_type=tf.int32)
            class_score = tf.gather(scores, class_index, batch_dims=1)
        features = activations.value
        gradients = tape.gradient(class_score, features)
        weights = self.channel_weights(features, gradients)
        raw_maps = tf.nn.relu(tf.einsum("bhwk,bk->bhw", features, weights))
        maps = normalise_per_image(upsample(raw_maps, tf.shape(images)[1:3]))
        probabilities = _squash(scores, self.output_layer)
        return probabilities, class_index, raw_maps, maps


class GradCAM(CAMEngine):
    method = "gradcam"

    def channel_weights(self, activations, gradients):
        return tf.reduce_mean(gradients, axis=(1, 2))


METHODS = {GradCAM.method: GradCAM}


def upsample(maps: tf.Tensor, size) -> tf.Tensor:
    return tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]


def normalise_per_image(maps: tf.Tensor) -> tf.Tensor:
    """Min-max to [0, 1] per image; a flat map becomes all zeros rather than NaN."""
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps - low, high - low)


# --- reaching inside a model without rebuilding it ------------------------------------------
#
# Keras 3 cannot cut a model at a layer inside a nested backbone (DESIGN.md §7). Instead, while
# the tf.function traces, the target layer's `call` is wrapped to hand its output to the
# gradient tape, and the output layer's squashing activation is swapped for identity so the
# score is the pre-softmax logit. Both are undone before tracing ends; the registered model is
# never changed. This works the same for Sequential, Functional, nested and subclassed models.


class _Captured:
    value: tf.Tensor | None = None


@contextlib.contextmanager
def _tap(layer: keras.layers.Layer, tape: tf.GradientTape):
    captured = _Captured()
    original_call = layer.call

    def call_and_capture(*args, **kwargs):
        outputs = original_call(*args, **kwargs)
        tape.watch(outputs)
        captured.value = outputs
        return outputs

    object.__setattr__(layer, "call", call_and_capture)
    try:
        yield captured
    finally:
        object.__delattr__(layer, "call")
    if captured.value is None:
        raise RuntimeError(f"target layer '{layer.name}' was not called by the model")


@contextlib.contextmanager
def _logits_of(layer: keras.layers.Layer):
    activation = getattr(layer, "activation", None)
    if _activation_name(activation) not in SQUASHING:
        yield
        return
    object.__setattr__(layer, "activation", keras.activations.linear)
    try:
        yield
    finally:
        object.__setattr__(layer, "activation", activation)


def _squash(logits: tf.Tensor, layer: keras.layers.Layer) -> tf.Tensor:
    """Probabilities from logits; a head without activation is read as softmax/sigmoid logits."""
    name = _activation_name(getattr(layer, "activation", None))
    if name == "sigmoid" or (name != "softmax" and logits.shape[-1] == 1):
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits, axis=-1)


def _activation_name(activation) -> str | None:
    return getattr(activation, "__name__", None)


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces the model's output, descending into a nested head."""
    layer = model.layers[-1]
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
    return layer


def make_engine(method: str, model: keras.Model, layer: str | None = "auto") -> CAMEngine:
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return METHODS[method](model, layer)
