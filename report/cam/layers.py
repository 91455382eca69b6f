"""Which layer Grad-CAM looks at: found by walking the model, nested models included.

The tutorial took "the last layer with a 4-D output", which in its own model is an
AveragePooling layer over a nested VGG16 and so gave 3x3 maps of the wrong thing. Here the
target is the last spatial feature map *before* the network collapses space (Flatten or global
pooling), never a pooling layer, and the search descends into nested backbones.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from report.errors import UserError

POOLING = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)
COLLAPSES_SPACE = (
    keras.layers.Flatten,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Reshape,
)


@dataclass(frozen=True)
class TargetLayer:
    """A layer and the chain of models that contain it, outermost first."""

    path: tuple[keras.layers.Layer, ...]

    @property
    def layer(self) -> keras.layers.Layer:
        return self.path[-1]

    @property
    def name(self) -> str:
        return _full_name(self.path)

    @property
    def map_size(self) -> tuple[int, int]:
        shape = self.layer.output.shape
        return int(shape[1]), int(shape[2])


def walk(model: keras.Model, parents: tuple = ()) -> list[tuple[keras.layers.Layer, ...]]:
    """Every layer as a path from the outer model, in call order, nested models expanded."""
    paths = []
    for layer in model.layers:
        path = (*parents, layer)
        if isinstance(layer, keras.Model):
            paths.extend(walk(layer, path))
        else:
            paths.append(path)
    return paths


def resolve_target_layer(model: keras.Model, name: str | None = "auto") -> TargetLayer:
    if name and name != "auto":
        return _by_name(model, name)
    return _automatic(model)


def _automatic(model: keras.Model) -> TargetLayer:
    candidate = None
    for path in walk(model):
        layer = path[-1]
        if isinstance(layer, COLLAPSES_SPACE):
            break
        if _is_spatial(layer) and not isinstance(layer, POOLING):
            candidate = path
    if candidate is None:
        raise UserError(
            f"model '{model.name}' has no layer with a spatial (height x width x channels) "
            "output before it flattens; Grad-CAM needs a convolutional feature map"
        )
    return TargetLayer(candidate)


def _by_name(model: keras.Model, name: str) -> TargetLayer:
    """`name` is a layer name, or an `outer/inner` path through nested models."""
    paths = walk(model)
    exact = [p for p in paths if _full_name(p) == name or _full_name(p).endswith("/" + name)]
    if len(exact) != 1:
        what = "no layer" if not exact else f"{len(exact)} layers"
        raise UserError(
            f"--layer '{name}': {what} of that name in model '{model.name}'; pass 'auto' or one "
            f"of the spatial layers: {', '.join(_spatial_names(paths)[-5:])}"
        )
    target = TargetLayer(exact[0])
    if not _is_spatial(target.layer):
        raise UserError(
            f"--layer '{name}' outputs shape {tuple(target.layer.output.shape)}, not a spatial "
            "feature map; choose a convolutional layer"
        )
    return target


def _is_spatial(layer: keras.layers.Layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4 and shape[1] is not None and shape[1] > 1 and shape[2] > 1


def _full_name(path: tuple[keras.layers.Layer, ...]) -> str:
    return "/".join(layer.name for layer in path)


def _spatial_names(paths) -> list[str]:
    return [_full_name(p) for p in paths if _is_spatial(p[-1])]
