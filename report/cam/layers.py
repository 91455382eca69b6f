"""Which layer the maps are computed at: found by running the model once and watching.

The tutorial took "the last layer with a 4-D output", which in its own model is an
AveragePooling layer over a nested VGG16 and so gave 3x3 maps of the wrong thing. Here the
target is the last layer whose output is still a spatial feature map (height and width above
one), never a pooling layer, so never the 1x1 output of a logits conv after global pooling.

Layers are discovered by calling the model once on a blank batch with every leaf layer's
`call` wrapped to record its output shape. That gives the true call order and shapes for
Sequential, Functional, nested and subclassed models alike; `layer.output` does not exist for
layers of a subclassed model, and `model.layers` lists those in assignment order, not call
order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from report.errors import UserError

POOLING = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


@dataclass(frozen=True)
class LayerCall:
    """One leaf layer as the model called it: the chain of models holding it, outermost first,
    and the shape of its output (batch axis included)."""

    path: tuple[keras.layers.Layer, ...]
    output_shape: tuple[int, ...]

    @property
    def layer(self) -> keras.layers.Layer:
        return self.path[-1]

    @property
    def name(self) -> str:
        return "/".join(layer.name for layer in self.path)

    @property
    def is_spatial(self) -> bool:
        shape = self.output_shape
        return len(shape) == 4 and shape[1] > 1 and shape[2] > 1


@dataclass(frozen=True)
class TargetLayer:
    call: LayerCall

    @property
    def layer(self) -> keras.layers.Layer:
        return self.call.layer

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def map_size(self) -> tuple[int, int]:
        return self.call.output_shape[1], self.call.output_shape[2]


def model_input_shape(model: keras.Model, fallback=None) -> tuple[int, int, int]:
    """(H, W, C) from the model's declared input, or `fallback` for subclassed models."""
    try:
        inputs = model.inputs
    except AttributeError:  # a subclassed model that was never built functionally
        inputs = None
    if inputs:
        shape = tuple(inputs[0].shape[1:])
        if len(shape) == 3 and None not in shape:
            return tuple(int(d) for d in shape)
    if fallback is None:
        raise UserError(
            f"model '{model.name}' declares no fixed input shape; give its image size in the "
            "registered model's metadata (preprocessing.image_size)"
        )
    return tuple(int(d) for d in fallback)


def leaf_paths(model: keras.Model, parents: tuple = ()) -> list[tuple[keras.layers.Layer, ...]]:
    paths = []
    for layer in model.layers:
        path = (*parents, layer)
        if isinstance(layer, keras.Model):
            paths.extend(leaf_paths(layer, path))
        else:
            paths.append(path)
    return paths


@dataclass(frozen=True)
class ModelTrace:
    """What one call on a blank batch revealed: leaf layers in call order, and the output."""

    calls: list[LayerCall]
    output_units: int

    @property
    def output_layer(self) -> keras.layers.Layer:
        return self.calls[-1].layer


def trace_model(model: keras.Model, input_shape: tuple[int, int, int]) -> ModelTrace:
    calls: dict[int, LayerCall] = {}
    with contextlib.ExitStack() as stack:
        for path in leaf_paths(model):
            stack.enter_context(observed_calls(path[-1], _recorder(path, calls)))
        output = model(np.zeros((1, *input_shape), np.float32), training=False)
    return ModelTrace(list(calls.values()), int(output.shape[-1]))


def _recorder(path: tuple[keras.layers.Layer, ...], calls: dict[int, LayerCall]):
    layer = path[-1]

    def record(outputs) -> None:
        shape = getattr(outputs, "shape", None)
        if shape is not None:
            calls.pop(id(layer), None)  # a shared layer counts where it was called last
            calls[id(layer)] = LayerCall(path, tuple(int(d) for d in shape))

    return record


@contextlib.contextmanager
def observed_calls(layer: keras.layers.Layer, observe: Callable[[Any], None]):
    """While open, every call of `layer` hands its outputs to `observe`, then returns them
    unchanged. The wrapper is set on the instance with `object.__setattr__` (bypassing Keras's
    attribute tracking), shadowing the class's `call`, and deleted on exit, so the layer is
    left as it was."""
    original_call = layer.call

    def call_and_observe(*args, **kwargs):
        outputs = original_call(*args, **kwargs)
        observe(outputs)
        return outputs

    object.__setattr__(layer, "call", call_and_observe)
    try:
        yield
    finally:
        object.__delattr__(layer, "call")


@contextlib.contextmanager
def transformed_calls(layer: keras.layers.Layer, transform: Callable[[Any], Any]):
    """While open, every call of `layer` returns `transform(outputs)` instead of its outputs
    (what Ablation-CAM needs: the network after the target layer, fed ablated channels).
    Set and removed like `observed_calls`."""
    original_call = layer.call

    def call_and_transform(*args, **kwargs):
        return transform(original_call(*args, **kwargs))

    object.__setattr__(layer, "call", call_and_transform)
    try:
        yield
    finally:
        object.__delattr__(layer, "call")


def resolve_target_layer(
    model: keras.Model, name: str | None = "auto", input_shape=None
) -> TargetLayer:
    trace = trace_model(model, model_input_shape(model, input_shape))
    return choose_target(model, trace, name)


def choose_target(model: keras.Model, trace: ModelTrace, name: str | None) -> TargetLayer:
    if name and name != "auto":
        return _by_name(model, trace.calls, name)
    return _automatic(model, trace.calls)


def _automatic(model: keras.Model, calls: list[LayerCall]) -> TargetLayer:
    """The last spatial, non-pooling layer the model calls. Not "the last before the first
    global pooling": squeeze-and-excitation blocks (EfficientNet) pool globally inside every
    block and multiply back onto the spatial map."""
    spatial = [c for c in calls if c.is_spatial and not isinstance(c.layer, POOLING)]
    candidate = spatial[-1] if spatial else None
    if candidate is None:
        raise UserError(
            f"model '{model.name}' has no layer with a spatial (height x width x channels) "
            "output before it flattens; Grad-CAM needs a convolutional feature map"
        )
    return TargetLayer(candidate)


def _by_name(model: keras.Model, calls: list[LayerCall], name: str) -> TargetLayer:
    """`name` is a layer name, or an `outer/inner` path through nested models."""
    matches = [c for c in calls if c.name == name or c.name.endswith("/" + name)]
    if len(matches) != 1:
        what = "no layer" if not matches else f"{len(matches)} layers"
        spatial = [c.name for c in calls if c.is_spatial][-5:]
        raise UserError(
            f"--layer '{name}': {what} of that name in model '{model.name}'; pass 'auto' or one "
            f"of the last spatial layers: {', '.join(spatial)}"
        )
    if not matches[0].is_spatial:
        raise UserError(
            f"--layer '{name}' outputs shape {matches[0].output_shape}, not a spatial feature "
            "map; choose a convolutional layer"
        )
    return TargetLayer(matches[0])
