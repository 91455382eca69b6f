"""Batched class activation maps: one compiled pass gives predictions and maps together.

All methods share one core: the feature maps A (B, h, w, K) of the target layer, a class
score y_c, and a map ReLU(sum_k w_k * A_k). They differ only in how the weights w are
computed (`weights`), the way pytorch-grad-cam's BaseCAM is organised:

- Grad-CAM (Selvaraju et al. 2017): w_k = mean_ij dy_c/dA_k[i, j].
- Grad-CAM++ (Chattopadhay et al. 2018): w_k = sum_ij a_kij * ReLU(dy_c/dA_kij) with
  a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3), g = dy_c/dA_kij.
- LayerCAM (Jiang et al. 2021): element-wise weights ReLU(dy_c/dA_kij).
- Score-CAM (Wang et al. 2020): no gradients; w = softmax_k of the class score of the input
  masked by each normalised, upsampled A_k (see ScoreCAM for its memory bound).
- HiResCAM (Draelos and Carin 2020): element-wise weights dy_c/dA_kij, so the map is
  ReLU(sum_k dy_c/dA_k * A_k): for a head that averages the features it equals Grad-CAM, for
  any other it shows where the score actually comes from.
- XGrad-CAM (Fu et al. 2020): w_k = sum_ij (A_kij / sum_ab A_kab) dy_c/dA_kij, the weights
  that satisfy the paper's sensitivity and conservation axioms.
- Eigen-CAM (Muhammad and Yeasin 2020): no gradients and no class; the projection of A on
  its first principal direction (first right singular vector of the (hw, K) matrix).
- Ablation-CAM (Desai and Ramaswamy 2020): no gradients; w_k = (y_c - y_c^k) / y_c, where
  y_c^k is the class score with channel k of A set to zero (see AblationCAM).

Two baselines share the engine so that every trust check can score them beside a method, as
references a method must beat, not as explanations:

- RandomCAM: ReLU(sum_k w_k * A_k) with w_k drawn uniformly from [-1, 1] (pytorch-grad-cam's
  RandomCAM): the model's features, weighed by nothing the model computed.
- Sobel: the edge strength of the input itself; it never looks at the model, so a method that
  scores like it shows the image, not the model.

The class score is the pre-activation logit (`score="logit"`, the paper's choice) or the
model's probability (`score="probability"`, what the tutorial differentiated).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass

import cv2
import keras
import numpy as np
import tensorflow as tf

from report.cam.layers import (
    TargetLayer,
    choose_target,
    model_input_shape,
    observed_calls,
    trace_model,
    transformed_calls,
)
from report.errors import UserError
from report.i18n import N_

SCORES = ("logit", "probability")


@dataclass(frozen=True)
class Explanation:
    """A batch's predictions and maps, as numpy arrays."""

    probabilities: np.ndarray  # (B, C) per class, in the report's class order
    class_index: np.ndarray  # (B,) the class each map explains
    raw_maps: np.ndarray  # (B, h, w) float32 at feature-map resolution, unnormalised
    maps: np.ndarray  # (B, H, W) float32 upsampled to the input size, unnormalised


@dataclass(frozen=True)
class Head:
    """How the model's last layer turns logits z into per-class scores and probabilities.

    softmax: class logits are z. sigmoid with one unit (binary): classes (negative, positive)
    with logits (-z, z), so the negative class is explained through the negated logit.
    sigmoid with several units: multi-label, each class its own logit.
    """

    activation: str  # "softmax" or "sigmoid"
    units: int

    @property
    def n_classes(self) -> int:
        return 2 if self.units == 1 else self.units

    @property
    def multi_label(self) -> bool:
        return self.activation == "sigmoid" and self.units > 1

    def class_logits(self, z: tf.Tensor) -> tf.Tensor:
        return tf.concat([-z, z], axis=-1) if self.units == 1 else z

    def probabilities(self, class_logits: tf.Tensor) -> tf.Tensor:
        if self.activation == "sigmoid":
            return tf.sigmoid(class_logits)
        return tf.nn.softmax(class_logits, axis=-1)


class CAMEngine:
    """Settings are stored here; work happens in `explain`, one compiled call per batch."""

    method = "base"
    title = ""
    baseline = False  # a reference to score methods against, not an explanation

    def __init__(self, model: keras.Model, layer: str | None = "auto", score: str = "logit",
                 input_shape=None):
        if score not in SCORES:
            raise UserError(f"unknown score '{score}'; choose one of {', '.join(SCORES)}")
        self.model = model
        self.score = score
        self.input_shape = model_input_shape(model, input_shape)
        self.trace = trace = trace_model(model, self.input_shape)
        self.target: TargetLayer = choose_target(model, trace, layer)
        # The last layer called, not `model.layers[-1]`: a subclassed model lists its layers in
        # assignment order.
        self.head_layer, kind = _head_layer(trace.calls)
        self.head = _head_of(kind, trace.output_units)
        # A fixed signature with an open batch axis: one trace serves every batch size.
        images = tf.TensorSpec((None, *self.input_shape), tf.float32)
        classes = tf.TensorSpec((None,), tf.int32)
        self._compiled = tf.function(self._explain_batch, input_signature=[images, classes])
        self._predict = tf.function(self._probabilities, input_signature=[images])

    def weights(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """Weights broadcastable to the (B, h, w, K) activations."""
        raise NotImplementedError

    def explain(self, images: np.ndarray, classes: np.ndarray | None = None) -> Explanation:
        """`images`: preprocessed float32 (B, H, W, C). `classes`: the class to explain per
        image, or -1 (the default) for the predicted one."""
        classes = _classes_or_predicted(classes, len(images))
        outputs = self._compiled(tf.constant(images, tf.float32), tf.constant(classes))
        return Explanation(*(tensor.numpy() for tensor in outputs))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities only (B, C): the forward pass that perturbation metrics repeat.
        `images`: an array or a float32 tensor (passed on without a copy)."""
        return self._predict(tf.convert_to_tensor(images, tf.float32)).numpy()

    def _probabilities(self, images: tf.Tensor) -> tf.Tensor:
        with _logits_of(self.head_layer):
            z = self.model(images, training=False)
        return self.head.probabilities(self.head.class_logits(z))

    def _explain_batch(self, images: tf.Tensor, classes: tf.Tensor):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            activations, class_logits = self._forward(images, tape)
            probabilities = self.head.probabilities(class_logits)
            class_index = _chosen_classes(classes, probabilities)
            scores = class_logits if self.score == "logit" else probabilities
            class_score = tf.gather(scores, class_index, batch_dims=1)
        gradients = tape.gradient(class_score, activations)
        raw_maps = combine(activations, self.weights(activations, gradients))
        return probabilities, class_index, raw_maps, upsample(raw_maps, self.input_shape[:2])

    def _forward(self, images: tf.Tensor, tape: tf.GradientTape | None = None):
        """Target-layer activations and pre-activation class logits, in one model call."""
        with _tap(self.target.layer, tape) as activations, _logits_of(self.head_layer):
            z = self.model(images, training=False)
        return activations.value, self.head.class_logits(z)


class GradCAM(CAMEngine):
    method, title = "gradcam", "Grad-CAM (Selvaraju et al. 2017)"

    def weights(self, activations, gradients):
        return tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)


class GradCAMPlusPlus(CAMEngine):
    method, title = "gradcam++", "Grad-CAM++ (Chattopadhay et al. 2018)"

    def weights(self, activations, gradients):
        squared, cubed = gradients**2, gradients**3
        activation_sums = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        alpha = tf.math.divide_no_nan(squared, 2.0 * squared + activation_sums * cubed)
        return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2), keepdims=True)


class LayerCAM(CAMEngine):
    method, title = "layercam", "LayerCAM (Jiang et al. 2021)"

    def weights(self, activations, gradients):
        return tf.nn.relu(gradients)


class _ForwardOnlyCAM(CAMEngine):
    """Methods that weigh channels by forward passes alone (no gradients), `chunk_size`
    model inputs at a time."""

    def __init__(self, *args, chunk_size: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size
        self._spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
        self._forward_compiled = tf.function(self._plain_forward, input_signature=[self._spec])

    def _plain_forward(self, images):
        return self._forward(images)

    def _predicted(self, images: np.ndarray, classes: np.ndarray | None):
        """Target activations, class logits, probabilities and the class each map explains."""
        activations, class_logits = self._forward_compiled(tf.constant(images, tf.float32))
        probabilities = self.head.probabilities(class_logits)
        class_index = _chosen_classes(tf.constant(_classes_or_predicted(classes, len(images))),
                                      probabilities).numpy()
        return activations, class_logits, probabilities, class_index

    def _scores(self, class_logits):
        return class_logits if self.score == "logit" else self.head.probabilities(class_logits)

    def _explanation(self, probabilities, class_index, activations, weights) -> Explanation:
        raw_maps = combine(activations, tf.constant(weights[:, None, None, :], tf.float32))
        maps = upsample(raw_maps, self.input_shape[:2])
        return Explanation(probabilities.numpy(), class_index, raw_maps.numpy(), maps.numpy())


class ScoreCAM(_ForwardOnlyCAM):
    """Forward passes only. Each image needs one pass per channel of the target layer; the
    masked copies go through the model `chunk_size` at a time, so beyond the model itself
    memory holds at most chunk_size x H x W x C float32 inputs (64 x 237 x 237 x 3 = 43 MB)
    plus one image's K upsampled masks (K x H x W float32), whatever the batch size."""

    method, title = "scorecam", "Score-CAM (Wang et al. 2020)"

    def explain(self, images: np.ndarray, classes: np.ndarray | None = None) -> Explanation:
        activations, _, probabilities, class_index = self._predicted(images, classes)
        weights = np.stack([
            self._channel_weights(images[b], activations[b], class_index[b])
            for b in range(len(images))
        ])
        return self._explanation(probabilities, class_index, activations, weights)

    def _channel_weights(self, image, activations, class_index) -> np.ndarray:
        masks = channel_masks(activations, self.input_shape[:2])  # (K, H, W)
        scores = []
        for start in range(0, masks.shape[0], self.chunk_size):
            masked = image[None] * masks[start : start + self.chunk_size, :, :, None]
            _, class_logits = self._forward_compiled(masked)
            scores.append(self._scores(class_logits)[:, class_index].numpy())
        return tf.nn.softmax(np.concatenate(scores)).numpy()


class HiResCAM(CAMEngine):
    method, title = "hirescam", "HiResCAM (Draelos and Carin 2020)"

    def weights(self, activations, gradients):
        return gradients


class XGradCAM(CAMEngine):
    method, title = "xgradcam", "XGrad-CAM (Fu et al. 2020)"

    def weights(self, activations, gradients):
        totals = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        shares = tf.math.divide_no_nan(activations, totals)
        return tf.reduce_sum(shares * gradients, axis=(1, 2), keepdims=True)


class EigenCAM(CAMEngine):
    """Class-agnostic: every class of an image gets the same map. A singular vector's sign is
    arbitrary; it is chosen so that the projection sums to a positive value."""

    method, title = "eigencam", "Eigen-CAM (Muhammad and Yeasin 2020)"

    def weights(self, activations, gradients):
        shape = tf.shape(activations)
        flat = tf.reshape(activations, (shape[0], shape[1] * shape[2], shape[3]))
        _, _, v = tf.linalg.svd(flat)
        first = v[:, :, 0]  # (B, K)
        total = tf.reduce_sum(tf.linalg.matvec(flat, first), axis=1, keepdims=True)
        first = first * tf.where(total < 0, -1.0, 1.0)
        return first[:, None, None, :]


class AblationCAM(_ForwardOnlyCAM):
    """Forward passes only: one per channel of the target layer and image, the model run with
    that channel of the target's output set to zero. (image, channel) pairs go through the
    model `chunk_size` at a time, in one compiled call each, so memory holds at most
    chunk_size inputs beside the model, whatever the batch size."""

    method, title = "ablationcam", "Ablation-CAM (Desai and Ramaswamy 2020)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ablated_compiled = tf.function(self._ablated_scores, input_signature=[
            self._spec, tf.TensorSpec((None,), tf.int32)])

    def explain(self, images: np.ndarray, classes: np.ndarray | None = None) -> Explanation:
        activations, class_logits, probabilities, class_index = self._predicted(images,
                                                                                  classes)
        scores = self._scores(class_logits).numpy()
        chosen = scores[np.arange(len(images)), class_index]
        channels = activations.shape[-1]
        ablated = self._ablated_class_scores(images, class_index, channels)
        weights = np.where(chosen[:, None] != 0, (chosen[:, None] - ablated)
                           / np.where(chosen[:, None] != 0, chosen[:, None], 1.0), 0.0)
        return self._explanation(probabilities, class_index, activations, weights)

    def _ablated_class_scores(self, images, class_index, channels: int) -> np.ndarray:
        """(B, K): each image's class score with each channel ablated in turn."""
        pairs = [(b, k) for b in range(len(images)) for k in range(channels)]
        found = np.empty((len(images), channels), np.float32)
        for start in range(0, len(pairs), self.chunk_size):
            chunk = pairs[start : start + self.chunk_size]
            rows = np.array([b for b, _ in chunk])
            ablated = np.array([k for _, k in chunk], np.int32)
            scores = self._ablated_compiled(tf.constant(images[rows], tf.float32),
                                            tf.constant(ablated)).numpy()
            found[rows, ablated] = scores[np.arange(len(chunk)), class_index[rows]]
        return found

    def _ablated_scores(self, images, channels):
        """Class scores (n, C) with channel `channels[i]` of the target set to zero for
        image i."""
        def ablate(outputs):
            keep = 1.0 - tf.one_hot(channels, tf.shape(outputs)[-1], dtype=outputs.dtype)
            return outputs * keep[:, None, None, :]

        with transformed_calls(self.target.layer, ablate), _logits_of(self.head_layer):
            z = self.model(images, training=False)
        return self._scores(self.head.class_logits(z))


class RandomCAM(_ForwardOnlyCAM):
    """The target layer's features under uniform random channel weights in [-1, 1]. Each
    image's weights are drawn from `seed` and the image's own bytes, so an image gets the
    same map on every run, whatever the batch it comes in."""

    method, title, baseline = "randomcam", N_("RandomCAM (random channel weights)"), True
    seed = 0

    def explain(self, images: np.ndarray, classes: np.ndarray | None = None) -> Explanation:
        activations, _, probabilities, class_index = self._predicted(images, classes)
        weights = np.stack([random_channel_weights(image, activations.shape[-1], self.seed)
                            for image in np.asarray(images, np.float32)])
        return self._explanation(probabilities, class_index, activations, weights)


class SobelMap(_ForwardOnlyCAM):
    """The gradient magnitude of the input's grey level (3 x 3 Sobel): where the ribs, the
    heart border and burned-in markers are. The model only predicts the classes."""

    method, title, baseline = "sobel", N_("Sobel edges (ignores the model)"), True

    def explain(self, images: np.ndarray, classes: np.ndarray | None = None) -> Explanation:
        _, _, probabilities, class_index = self._predicted(images, classes)
        maps = np.stack([sobel_edges(image) for image in np.asarray(images, np.float32)])
        return Explanation(probabilities.numpy(), class_index, maps, maps)


def random_channel_weights(image: np.ndarray, channels: int, seed: int) -> np.ndarray:
    """(K,) uniform in [-1, 1], seeded by `seed` and a CRC of the image's float32 bytes."""
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
    return rng.uniform(-1.0, 1.0, channels)


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W) float32: sqrt(Gx^2 + Gy^2) of the channel mean, borders reflected
    (OpenCV's default)."""
    grey = np.ascontiguousarray(image.mean(axis=-1), dtype=np.float32)
    across = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    down = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.hypot(across, down)


METHODS = {m.method: m for m in (GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, HiResCAM,
                                 XGradCAM, EigenCAM, AblationCAM)}
BASELINES = {m.method: m for m in (RandomCAM, SobelMap)}


def share_cores_with_workers() -> bool:
    """Run one TensorFlow op at a time, each on every core, so that the worker threads that
    decode and encode beside the engine are not crowded out by a second pool of TensorFlow
    threads (by default TensorFlow keeps one inter-op and one intra-op thread per core, both
    spinning while they wait). Only possible before TensorFlow's runtime starts: returns
    False, leaving the pools as they are, once a model has been built in this process."""
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return False
    return True


def make_engine(method: str, model: keras.Model, layer: str | None = "auto",
                score: str = "logit", input_shape=None) -> CAMEngine:
    """A method's engine, or a baseline's (`BASELINES`, for the trust checks and `methods`)."""
    known = METHODS | BASELINES
    if method not in known:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return known[method](model, layer, score, input_shape)


def combine(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """The shared core: ReLU of the weighted sum over channels."""
    return tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))


def upsample(maps, size) -> tf.Tensor:
    return tf.image.resize(tf.convert_to_tensor(maps)[..., None], size, method="bilinear")[..., 0]


def channel_masks(activations, size) -> np.ndarray:
    """(h, w, K) activations -> (K, H, W) upsampled maps, each min-max normalised to [0, 1]."""
    upsampled = tf.image.resize(activations[None], size, method="bilinear")[0]
    low = tf.reduce_min(upsampled, axis=(0, 1), keepdims=True)
    high = tf.reduce_max(upsampled, axis=(0, 1), keepdims=True)
    return tf.transpose(tf.math.divide_no_nan(upsampled - low, high - low), (2, 0, 1)).numpy()


def _classes_or_predicted(classes, n: int) -> np.ndarray:
    if classes is None:
        return np.full(n, -1, np.int32)
    return np.asarray(classes, np.int32)


def _chosen_classes(classes: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return tf.where(classes >= 0, classes, predicted)


# --- reaching inside a model without rebuilding it ------------------------------------------
#
# Keras 3 cannot cut a model at a layer inside a nested backbone: an inner layer's `.output`
# belongs to the backbone's own graph, not to the outer model's inputs. Instead, while the
# tf.function traces, the target layer's `call` is wrapped (`observed_calls`) to hand its output
# to the gradient tape, and the output layer's squashing activation is swapped for identity so
# the score is the pre-activation logit. Both are undone before tracing ends; the registered
# model is never changed. This works the same for Sequential, Functional, nested and subclassed
# models.


class _Captured:
    value: tf.Tensor | None = None


@contextlib.contextmanager
def _tap(layer: keras.layers.Layer, tape: tf.GradientTape | None):
    captured = _Captured()

    def capture(outputs) -> None:
        if tape is not None:
            tape.watch(outputs)
        captured.value = outputs

    with observed_calls(layer, capture):
        yield captured
    if captured.value is None:
        raise RuntimeError(f"target layer '{layer.name}' was not called by the model")


@contextlib.contextmanager
def _logits_of(head: _HeadLayer | None):
    """The model outputs the logits while this is open: the head's softmax or sigmoid, a
    Dense layer's own activation or a layer of its own (Activation, Softmax), is the
    identity (inside a traced function, so the graph is built that way)."""
    if head is None:
        yield
        return
    layer, attribute = head.layer, head.attribute
    own = attribute in vars(layer)  # `call` normally lives on the class, not the instance
    original = getattr(layer, attribute)
    identity = keras.activations.linear if attribute == "activation" else _passthrough
    object.__setattr__(layer, attribute, identity)
    try:
        yield
    finally:
        if own:
            object.__setattr__(layer, attribute, original)
        else:
            object.__delattr__(layer, attribute)


def _passthrough(inputs, *args, **kwargs):
    return inputs


@dataclass(frozen=True)
class _HeadLayer:
    layer: keras.layers.Layer
    attribute: str  # "activation" (a layer's own activation) or "call" (an activation layer)


# Told apart by what they do, not by name: tf.nn.softmax is "softmax_v2", keras.layers.Softmax
# has no activation attribute, and a model may end in Dropout or a linear Activation.
_PROBE = np.array([[-1.0, 0.5, 2.0]], np.float32)
_KINDS = {
    "softmax": lambda v: np.exp(v) / np.exp(v).sum(axis=-1, keepdims=True),
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "identity": lambda v: v,
}


def _head_layer(calls) -> tuple[_HeadLayer | None, str | None]:
    """The layer whose softmax or sigmoid turns logits into the model's output, walking back
    from the output past layers that change nothing at inference (a linear Activation,
    Dropout); (None, None) when the model outputs logits."""
    for call in reversed(calls):
        layer = call.layer
        if isinstance(layer, keras.Model):
            continue  # a nested model: its own layers are in `calls` too, before it
        if getattr(layer, "activation", None) is not None:
            kind = _kind_of(layer.activation)
            if kind in ("softmax", "sigmoid"):
                return _HeadLayer(layer, "activation"), kind
            if kind != "identity" or layer.weights:
                return None, None
        elif not layer.weights and (kind := _kind_of(layer)) in ("softmax", "sigmoid"):
            return _HeadLayer(layer, "call"), kind
        elif layer.weights or kind != "identity":
            return None, None
    return None, None


def _kind_of(function) -> str | None:
    """"softmax", "sigmoid" or "identity" when `function` (an activation, or a layer without
    weights) computes it on a probe; None for anything else."""
    try:
        output = function(tf.constant(_PROBE), training=False) if isinstance(
            function, keras.layers.Layer) else function(tf.constant(_PROBE))
        output = np.asarray(output)
    except Exception:  # noqa: BLE001 - not an element-wise activation: not a head
        return None
    for kind, expected in _KINDS.items():
        if output.shape == _PROBE.shape and np.allclose(output, expected(_PROBE), atol=1e-5):
            return kind
    return None


def _head_of(kind: str | None, units: int) -> Head:
    # A head without activation is read as logits: softmax for several units, else sigmoid.
    if kind == "sigmoid" or (kind != "softmax" and units == 1):
        return Head("sigmoid", units)
    return Head("softmax", units)
