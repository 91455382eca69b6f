"""Build and train classifiers, and the metadata contract a registered model carries.

Everything MLflow-specific (logging, registering, loading) lives in tracking.py; this module
only knows Keras and the shape of the metadata (docs/ARCHITECTURE.md, "Contracts").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from report.errors import UserError

DEFAULT_SCALE = 1 / 255
COLORS = ("rgb", "grayscale")


@dataclass(frozen=True)
class ModelMetadata:
    """What the report needs to know about a model beyond its weights."""

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    color: str = "rgb"
    scale: float = DEFAULT_SCALE
    target_layer: str | None = None
    # Sentences naming each default assumed because the registered model lacked the field.
    assumed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def layer_for(self, requested: str) -> str:
        """The layer to explain: the one asked for, else the metadata's, else "auto"."""
        return requested if requested != "auto" else (self.target_layer or "auto")

    def to_mlflow(self) -> dict:
        """The `metadata` block written into the MLmodel file."""
        metadata = {
            "class_names": list(self.class_names),
            "preprocessing": {
                "image_size": list(self.image_size),
                "color": self.color,
                "scale": self.scale,
            },
        }
        if self.target_layer:
            metadata["target_layer"] = self.target_layer
        return metadata

    @classmethod
    def from_mlflow(cls, metadata: dict | None, model: keras.Model,
                    class_names: list[str] | None = None) -> ModelMetadata:
        """Read the contract, falling back to what the model itself reveals for missing fields.
        `class_names`, when given, replace the metadata's (the `class_names` option)."""
        metadata = dict(metadata or {})
        if class_names:
            metadata["class_names"] = list(class_names)
        preprocessing = metadata.get("preprocessing") or {}
        assumed: list[str] = []
        image_size = preprocessing.get("image_size")
        declared = _declared_input_shape(model)
        if not image_size:
            if declared is None:
                raise UserError(
                    f"model '{model.name}' declares no input shape and its metadata has no "
                    "preprocessing.image_size; log it with that metadata"
                )
            image_size = declared[:2]
            assumed.append(f"image size {image_size[0]}x{image_size[1]} from the model's input")
        channels = declared[2] if declared else 3

        color = preprocessing.get("color")
        if color not in COLORS:
            color = "grayscale" if channels == 1 else "rgb"
            assumed.append(f"colour '{color}' taken from the model's {channels} input channels")

        scale = preprocessing.get("scale")
        if scale is None:
            scale = DEFAULT_SCALE
            assumed.append("pixel scale 1/255")

        units = _output_units(model, (*image_size, 3 if color == "rgb" else 1))
        class_names = _class_names(metadata.get("class_names"), units, assumed)
        return cls(
            class_names=class_names,
            image_size=(int(image_size[0]), int(image_size[1])),
            color=color,
            scale=float(scale),
            target_layer=metadata.get("target_layer"),
            assumed=tuple(assumed),
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to audit, and where it came from (shown in the report and its params)."""

    model: keras.Model
    metadata: ModelMetadata
    name: str
    version: str  # the registry version; "" for a model outside the registry
    alias: str | None = None
    source: str = ""  # where its files live (the registry's source URI, a path, "in memory")
    uri: str | None = None  # as the caller named it; None for a keras.Model in memory


def _class_names(names: list | None, units: int, assumed: list[str]) -> tuple[str, ...]:
    """One sigmoid unit is a binary model: two classes, (negative, positive)."""
    n_classes = 2 if units == 1 else units
    if not names:
        names = [f"class_{i}" for i in range(n_classes)]
        assumed.append(f"class names {', '.join(names)} (no `class_names` in metadata)")
    elif units == 1 and len(names) == 1:
        names = [f"not {names[0]}", names[0]]
        assumed.append(f"negative class named '{names[0]}' for the single sigmoid output")
    if len(names) != n_classes:
        raise UserError(
            f"model metadata lists {len(names)} class names but the model has {units} "
            "output(s); fix `class_names` in the logged model's metadata"
        )
    return tuple(str(name) for name in names)


def _declared_input_shape(model: keras.Model) -> tuple[int, int, int] | None:
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError):  # subclassed, never built functionally
        return None
    if len(shape) != 4 or None in shape[1:]:
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


def _output_units(model: keras.Model, input_shape: tuple[int, int, int]) -> int:
    try:
        return int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError):
        return int(model(np.zeros((1, *input_shape), np.float32), training=False).shape[-1])


# --- building -------------------------------------------------------------------------------


def small_cnn(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
    """Four conv blocks that train on two CPU cores in under a minute. Batch normalisation
    gets it off the loss plateau the tutorial's small dense head otherwise sits on."""
    if weights:
        raise UserError("backbone small-cnn has no pretrained weights; use --weights none")
    inputs = keras.Input(input_shape)
    # Inputs arrive as pixels * 1/255 (the metadata contract); centring them on zero is what
    # lets this net learn in seconds instead of sitting at chance.
    x = layers.Rescaling(scale=4.0, offset=-2.0, name="standardise")(inputs)
    for block, (filters, kernel, strides) in enumerate(
        [(16, 5, 2), (32, 3, 1), (64, 3, 1), (64, 3, 1)], start=1
    ):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          name=f"block{block}_conv")(x)
        # A short training run: a faster-moving average keeps inference statistics current.
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        if block < 4:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


def _application(factory: Callable) -> Callable:
    def build(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
        return factory(include_top=False, weights=weights, input_shape=input_shape)

    return build


BACKBONES: dict[str, Callable] = {
    "small-cnn": small_cnn,
    "vgg16": _application(keras.applications.VGG16),
    "resnet50v2": _application(keras.applications.ResNet50V2),
    "xception": _application(keras.applications.Xception),
    "densenet121": _application(keras.applications.DenseNet121),
}


def build_classifier(
    backbone: str,
    n_classes: int,
    image_size: tuple[int, int],
    channels: int = 3,
    weights: str | None = None,
) -> keras.Model:
    """The tutorial's architecture: a backbone nested under its small dense head."""
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone '{backbone}'; choose one of {', '.join(BACKBONES)}")
    input_shape = (*image_size, channels)
    base = _build_backbone(backbone, input_shape, weights)
    return keras.Sequential(
        [
            keras.Input(input_shape, name="image"),
            base,
            layers.AveragePooling2D(2, name="head_pool"),
            layers.Flatten(name="head_flatten"),
            layers.Dense(20, activation="relu", name="head_dense"),
            layers.Dropout(0.2, name="head_dropout"),
            layers.Dense(n_classes, activation="softmax", name="predictions"),
        ],
        name=f"cxr_{backbone.replace('-', '_')}",
    )


def _build_backbone(backbone: str, input_shape: tuple, weights: str | None) -> keras.Model:
    try:
        return BACKBONES[backbone](input_shape, weights)
    except UserError:
        raise
    except Exception as error:  # keras raises plain Exception for a failed download
        if weights != "imagenet":
            raise
        raise UserError(
            f"could not fetch ImageNet weights for {backbone} ({type(error).__name__}); this needs "
            "the network: train with --weights none, or place the weights file in ~/.keras/models"
        ) from error


def compile_classifier(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
