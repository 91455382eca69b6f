"""Build and train classifiers, and the metadata contract a registered model carries.

Everything MLflow-specific (logging, registering, loading) lives in tracking.py; this module
only knows Keras and the shape of the metadata (docs/ARCHITECTURE.md, "Contracts").
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from report.errors import UserError

DEFAULT_SCALE = 1 / 255
COLORS = ("rgb", "grayscale")
CHANNELS = {"rgb": 3, "grayscale": 1}
# The largest side, in pixels, an input may have, as `train`'s --image-size: 2048 x 2048 RGB
# is 50 MB per float32 image (1.6 GB for a batch of 32), already more than chest X-ray
# classifiers take; a larger declared size is a mistake or an attempt to exhaust memory.
MAX_IMAGE_SIDE = 2048
# Class names become table cells, figure labels, file and metric names: longer ones are not
# names but sentences (or an attack on the layout).
MAX_CLASS_NAME_LENGTH = 100
# Bidirectional embeddings, overrides and isolates: they make text read differently from what
# it is ("Trojan source"), so a name holding one is refused with the control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHOWN_LENGTH = 40

METADATA_CLASS_NAMES = "model metadata class_names"
OPTION_CLASS_NAMES = "class_names (--class-names)"
_FIX_METADATA = "fix the logged model's metadata (docs/ARCHITECTURE.md, \"Contracts\")"


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

    def __post_init__(self):
        """The same rules however the metadata was made (read, trained, built in Python)."""
        check_class_names(self.class_names, "class_names", "give valid class names")
        _checked_image_size(self.image_size)
        _checked_color(self.color)
        _checked_scale(self.scale)
        _checked_target_layer(self.target_layer)

    @property
    def channels(self) -> int:
        return CHANNELS[self.color]

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
        `class_names`, when given, replace the metadata's (the `class_names` option).
        Every field is checked here, so a bad one is one line naming it, not a traceback
        later."""
        metadata = _mapping(metadata, "model metadata")
        preprocessing = _mapping(metadata.get("preprocessing"), "model metadata preprocessing")
        assumed: list[str] = []
        declared = _input_shape(model) or (None, None, None)
        image_size = _image_size_of(preprocessing, declared, model, assumed)
        color = _color_of(preprocessing, declared[2], model, assumed)
        scale = preprocessing.get("scale")
        if scale is None:
            scale = DEFAULT_SCALE
            assumed.append("pixel scale 1/255")
        units = _output_units(model, (*image_size, CHANNELS[color]))
        where, fix = METADATA_CLASS_NAMES, "fix it there, or pass --class-names"
        names = metadata.get("class_names")
        if class_names:
            names, where, fix = class_names, OPTION_CLASS_NAMES, "fix --class-names"
        if not _missing(names):
            names = check_class_names(names, where, fix)
        return cls(
            class_names=_class_names(names, units, assumed, where, fix),
            image_size=image_size,
            color=color,
            scale=_checked_scale(scale),
            target_layer=_checked_target_layer(metadata.get("target_layer")),
            assumed=tuple(assumed),
        )


def _image_size_of(preprocessing: dict, declared: tuple, model: keras.Model,
                   assumed: list[str]) -> tuple[int, int]:
    """The metadata's size, which must be the model's where the model fixes one; else the
    model's own."""
    height, width, _ = declared
    image_size = preprocessing.get("image_size")
    if image_size is None:
        if height is None or width is None:
            raise UserError(
                f"model '{model.name}' declares no input shape and its metadata has no "
                "preprocessing.image_size; log it with that metadata"
            )
        assumed.append(f"image size {height}x{width} from the model's input")
        return _checked_image_size((height, width), f"model '{model.name}' input")
    image_size = _checked_image_size(image_size)
    for side, fixed in zip(image_size, (height, width), strict=True):
        if fixed is not None and side != fixed:
            takes = "x".join("any" if d is None else str(d) for d in (height, width))
            raise UserError(
                f"model metadata preprocessing.image_size is {image_size[0]}x{image_size[1]} "
                f"but model '{model.name}' takes {takes} inputs; set image_size to the "
                "model's input size or leave it out"
            )
    return image_size


def _color_of(preprocessing: dict, channels: int | None, model: keras.Model,
              assumed: list[str]) -> str:
    """The metadata's colour, which must give the model's channels; else the model's own."""
    if channels is not None and channels not in CHANNELS.values():
        raise UserError(f"model '{model.name}' takes {channels}-channel images; the report "
                        "feeds 1 (grayscale) or 3 (rgb) channels")
    color = preprocessing.get("color")
    if color is None:
        channels = channels or 3
        color = "grayscale" if channels == 1 else "rgb"
        assumed.append(f"colour '{color}' taken from the model's {channels} input channels")
    color = _checked_color(color)
    if channels is not None and CHANNELS[color] != channels:
        fitting = "grayscale" if channels == 1 else "rgb"
        raise UserError(
            f"model metadata preprocessing.color is '{color}' ({CHANNELS[color]} channel(s)) "
            f"but model '{model.name}' takes {channels}-channel images; set color to "
            f"'{fitting}' or leave it out"
        )
    return color


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


def _class_names(names: list | None, units: int, assumed: list[str],
                 where: str = METADATA_CLASS_NAMES,
                 fix: str = "fix `class_names` in the logged model's metadata"
                 ) -> tuple[str, ...]:
    """One sigmoid unit is a binary model: two classes, (negative, positive)."""
    n_classes = 2 if units == 1 else units
    if _missing(names):
        names = [f"class_{i}" for i in range(n_classes)]
        assumed.append(f"class names {', '.join(names)} (no `class_names` in metadata)")
    elif units == 1 and len(names) == 1:
        names = [_negative_name(names[0]), names[0]]
        assumed.append(f"negative class named '{names[0]}' for the single sigmoid output")
    if len(names) != n_classes:
        raise UserError(f"{where} lists {len(names)} class names but the model has {units} "
                        f"output(s); {fix}")
    return tuple(names)


def _negative_name(positive: str) -> str:
    name = f"not {positive}"
    return name if len(name) <= MAX_CLASS_NAME_LENGTH else name[:MAX_CLASS_NAME_LENGTH - 1] + "…"


def _missing(names) -> bool:
    """No class names given: the metadata lacks the field or lists none."""
    return names is None or (isinstance(names, list | tuple) and not names)


# --- checking -------------------------------------------------------------------------------


def check_class_names(names, where: str, fix: str) -> tuple[str, ...]:
    """`names` as a tuple, or a one-line UserError naming the first bad name (shortened) and
    `fix`. A name must be text, not blank, free of control characters, at most
    MAX_CLASS_NAME_LENGTH characters, and differ from the others beyond case, Unicode
    normalisation and surrounding spaces: those would merge two classes in a file system that
    folds case, in a spreadsheet filter, or in a reader's eyes."""
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise UserError(f"{where} is {_kind(names)}, not a list of names; {fix}")
    seen: dict[str, str] = {}
    for name in names:
        problem = _name_problem(name)
        if problem:
            raise UserError(f"{where}: class name {shown(name)} {problem}; {fix}")
        key = unicodedata.normalize("NFC", name).strip().casefold()
        if key in seen:
            raise UserError(
                f"{where}: class name {shown(name)} repeats {shown(seen[key])} (names must "
                f"differ beyond case, accents' encoding and surrounding spaces); {fix}"
            )
        seen[key] = name
    return tuple(names)


def _name_problem(name) -> str | None:
    if not isinstance(name, str):
        return f"is {_kind(name)}, not text (quote it)"
    if not name.strip():
        return "is empty or only spaces"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text (bytes that are not UTF-8)"
    for character in name:
        if unicodedata.category(character) in ("Cc", "Zl", "Zp") or character in _BIDI_CONTROLS:
            return f"contains the control character U+{ord(character):04X}"
    length = len(unicodedata.normalize("NFC", name))
    if length > MAX_CLASS_NAME_LENGTH:
        return f"is {length} characters long, above the limit of {MAX_CLASS_NAME_LENGTH}"
    return None


def shown(value) -> str:
    """A value as a message quotes it: repr (control characters escaped, so the message stays
    one line), shortened."""
    text = repr(value)
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH - 1] + "…"


def _kind(value) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where} is {_kind(value)} ({shown(value)}), not a mapping of fields; "
                        f"{_FIX_METADATA}")
    return dict(value)


def _whole(value) -> int | None:
    """An int from an int, or from a float with no fraction (YAML may write 224.0); never from
    a bool, a string or a fraction."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _checked_image_size(value, where: str = "model metadata preprocessing.image_size"
                        ) -> tuple[int, int]:
    sides = (list(value) if isinstance(value, list | tuple) else [])
    size = [_whole(side) for side in sides]
    if len(size) != 2 or None in size or min(size) < 1 or max(size) > MAX_IMAGE_SIDE:
        raise UserError(
            f"{where} is {shown(value)}; give [height, width]: two whole numbers of pixels, "
            f"1 to {MAX_IMAGE_SIDE} each; {_FIX_METADATA}"
        )
    return size[0], size[1]


def _checked_color(value) -> str:
    """`rgb` or `grayscale`, in any case (`RGB` is how most people write it)."""
    if isinstance(value, str) and value.strip().lower() in COLORS:
        return value.strip().lower()
    raise UserError(f"model metadata preprocessing.color is {shown(value)}; use "
                    f"{' or '.join(COLORS)}, or leave it out")


def _checked_scale(value) -> float:
    number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) \
        else float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise UserError(f"model metadata preprocessing.scale is {shown(value)}; give the "
                        "positive number pixels are multiplied by (e.g. 0.00392156862745098 "
                        "for 1/255), or leave it out")
    return number


def _checked_target_layer(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UserError(f"model metadata target_layer is {shown(value)}; give a layer name "
                        "(text), or leave it out")
    return value


def class_indices(classes, class_names: Sequence[str], count: int) -> np.ndarray | None:
    """`report.explain(classes=...)`: one class per image, by index or by name, as int32; None
    (explain the predicted class) stays None. Anything else is a one-line UserError."""
    if classes is None:
        return None
    fix = f"give one class per image: an index 0..{len(class_names) - 1} or a class name"
    if isinstance(classes, str | bytes):
        raise UserError(f"classes: got the text {shown(classes)}; {fix}, in a list")
    try:
        values = classes.tolist() if isinstance(classes, np.ndarray) else list(classes)
    except TypeError:
        raise UserError(f"classes: got {_kind(classes)}; {fix}, in a list") from None
    if not isinstance(values, list) or len(values) != count:
        raise UserError(f"classes: {len(values) if isinstance(values, list) else 1} given for "
                        f"{count} images; {fix}")
    return np.asarray([_class_index(value, class_names, fix) for value in values], np.int32)


def _class_index(value, class_names: Sequence[str], fix: str) -> int:
    if isinstance(value, str) and value in class_names:
        return list(class_names).index(value)
    index = _whole(value) if not isinstance(value, float) else None
    if index is None or not 0 <= index < len(class_names):
        raise UserError(f"classes: {shown(value)} is not one of the model's classes; {fix}")
    return index


def _input_shape(model: keras.Model) -> tuple[int | None, int | None, int | None] | None:
    """(height, width, channels) of the model's one image input, None where free; None for a
    subclassed model that never declared one."""
    try:
        inputs = model.inputs
    except AttributeError:  # subclassed, never built functionally
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise UserError(f"model '{model.name}' has {len(inputs)} inputs; the report explains "
                        "models that take one image input")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise UserError(f"model '{model.name}' takes inputs of shape {shape}; the report "
                        "explains models that take images (batch, height, width, channels)")
    return tuple(None if d is None else int(d) for d in shape[1:])


def _output_units(model: keras.Model, input_shape: tuple[int, int, int]) -> int:
    try:
        shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError, TypeError):
        shape = tuple(model(np.zeros((1, *input_shape), np.float32), training=False).shape)
    if len(shape) != 2 or shape[-1] is None or int(shape[-1]) < 1:
        raise UserError(f"model '{model.name}' outputs shape {shape}, not one score per "
                        "class (batch, classes); the report explains classifiers")
    return int(shape[-1])


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
