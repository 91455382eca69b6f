"""Every option of every command, declared once: name, type, default, allowed values, help.

From this one table come the argparse flags (`cli.py`), the validation of CLI and Python
values (`resolve`), the keyword signature of `report.audit`, the check that MLproject's
parameters match (tests/test_options.py) and the report's Settings table (`settings_rows`).

Names are snake_case: the Python keyword and the MLproject parameter; the CLI flag is the same
name in kebab-case. Errors name the option the way the caller wrote it: `--batch-size` on the
command line, `batch_size` in Python.

Kept free of TensorFlow and MLflow imports, so `python -m report --help` answers at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from report.errors import OptionError


def N_(message: str) -> str:  # noqa: N802 - gettext's name: marks a message for the catalog
    """Settings labels and wordings stay English here (run_note and tests key on them); the
    report translates them where it shows them (report/i18n.py)."""
    return message


NONE_WORDS = ("", "none", "null")
TRUE_WORDS = ("yes", "true", "1")
FALSE_WORDS = ("no", "false", "0")


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "str" | "path" | "int" | "float" | "bool" | "list" (comma-separated on the CLI)
    default: Any
    help: str
    # Allowed values; a mapping gives each value the wording the report's Settings table shows.
    choices: tuple[str, ...] | Mapping[str, str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False  # None allowed; spelled "none" on the CLI and in MLproject
    label: str | None = None  # row title in the report's Settings table; None: not shown
    python_name: str | None = None  # when the Python keyword differs (model_uri -> model)
    mlproject_type: str | None = None  # "uri" where MLflow must not download the value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def keyword(self) -> str:
        return self.python_name or self.name

    def shown(self, value) -> str:
        """The value as the report's Settings table words it."""
        if isinstance(self.choices, Mapping) and value in self.choices:
            return self.choices[value]
        if value is None:
            return N_("none")
        if isinstance(value, bool):
            return N_("yes") if value else N_("no")
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)


METHODS = {
    "gradcam": "Grad-CAM (Selvaraju et al. 2017)",
    "gradcam++": "Grad-CAM++ (Chattopadhay et al. 2018)",
    "layercam": "LayerCAM (Jiang et al. 2021)",
    "scorecam": "Score-CAM (Wang et al. 2020)",
    "hirescam": "HiResCAM (Draelos and Carin 2020)",
    "xgradcam": "XGrad-CAM (Fu et al. 2020)",
    "eigencam": "Eigen-CAM (Muhammad and Yeasin 2020)",
    "ablationcam": "Ablation-CAM (Desai and Ramaswamy 2020)",
}
SCORES = {
    "logit": N_("pre-activation logit of the explained class"),
    "probability": N_("probability of the explained class (after softmax/sigmoid)"),
}
NORMALISATIONS = {
    "image": N_("per image, min-max (maps are not comparable across images)"),
    "global": N_("one scale for the whole report (maps are comparable across images)"),
}
BACKENDS = {
    "local": N_("this machine"),
    "spark": "Apache Spark",
}
LANGUAGES = {"en": "English", "pt-BR": "português (Brasil)"}
QUALITY_LEVELS = ("full", "fast", "off")
SPLITS = ("test", "train", "all")
COLORMAPS = ("viridis", "jet", "inferno")
OVERLAY_FORMATS = ("png", "jpeg")
BACKBONES = ("small-cnn", "vgg16", "resnet50v2", "xception", "densenet121")

MODEL_URI = Option(
    "model_uri", "str", "models:/cxr-classifier@champion",
    "the model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local MLflow "
    "model folder (in Python also a keras.Model)",
    python_name="model", mlproject_type="uri",
)
DATA = Option(
    "data", "str", "synthetic",
    "synthetic[:COUNT], a folder per class, or a public data set's folder (auto-detected, or "
    "NAME:PATH; see docs/DATA.md); in Python also a tuple (images, labels) of arrays",
)

# The report (`python -m report explain`, MLproject entry point `main`, `report.audit`).
EXPLAIN = (
    MODEL_URI,
    DATA,
    Option("split", "str", "test", "which part of the data to explain", choices=SPLITS,
           label=N_("Split")),
    Option("method", "str", "gradcam", "CAM method", choices=METHODS, label=N_("Method")),
    Option("layer", "str", "auto",
           "target layer name, outer/inner for nested models, or auto", label=N_("Target layer")),
    Option("score", "str", "logit",
           "class score to explain: the pre-activation logit or the probability",
           choices=SCORES, label=N_("Class score")),
    Option("normalize", "str", "image",
           "map scaling: per image (min-max) or one scale for the whole report",
           choices=NORMALISATIONS, label=N_("Normalisation")),
    Option("batch_size", "int", 32, "images per compiled pass", minimum=1, maximum=4096,
           label=N_("Batch size")),
    Option("alpha", "float", 0.5, "heatmap opacity over the film, 0..1 (the tutorial's 0.5)",
           minimum=0.0, maximum=1.0, label=N_("Alpha")),
    Option("colormap", "str", "viridis", "heatmap colours", choices=COLORMAPS,
           label=N_("Colormap")),
    Option("overlay_format", "str", "png",
           "overlay files: png (lossless) or jpeg (about 9x cheaper to encode, 6x smaller); "
           "raw maps stay lossless in cams/", choices=OVERLAY_FORMATS, label=N_("Overlay format")),
    Option("limit", "int", 0, "explain at most N images; 0 = all", minimum=0, label=N_("Limit")),
    Option("workers", "int", 0,
           "threads that decode images and encode overlays beside the engine; 0 = one per core",
           minimum=0, maximum=64),
    Option("quality", "str", "fast",
           "explanation-quality checks: fast samples 16 images, full 128, off none",
           choices=QUALITY_LEVELS, label=N_("Quality checks")),
    Option("label_map", "path", None,
           "YAML file mapping source labels to the model's classes (or null)", nullable=True),
    Option("follow_symlinks", "bool", False,
           "read images through symbolic links that lead out of the data folder; by default "
           "they are skipped, as are index-file paths that leave it"),
    Option("class_names", "list", None,
           "class names in output order, for a model whose metadata has none "
           "(comma-separated on the command line)", nullable=True),
    Option("unsafe_deserialization", "bool", False,
           "load models holding serialized Python code (Lambda layers); only for models whose "
           "author you trust"),
    Option("backend", "str", "local",
           "where the images are explained: this process, or a Spark cluster (the same "
           "report, partitions explained by executors)", choices=BACKENDS, label=N_("Backend")),
    Option("spark_master", "str", "local[*]",
           "Spark master URL for backend=spark (local[N] on this machine, spark://HOST:PORT, "
           "yarn, k8s://...); an already active Spark session is used as it is"),
    Option("partitions", "int", 0,
           "Spark partitions of the image list for backend=spark; 0 = Spark's default "
           "parallelism (one per executor core)", minimum=0),
    Option("language", "str", "en",
           "the language of the report, its figures, the run description and the closing "
           "summary: en or pt-BR (Brazilian Portuguese; numbers and dates in its format). "
           "Metric names, artifact paths, params and class names stay as they are",
           choices=LANGUAGES, label=N_("Language")),
    Option("output_dir", "path", "reports",
           "folder for what the run writes locally, under a subfolder per run: the report's "
           "copy (<run id>/report.html, .pdf) on the command line, the artifact files in "
           "Python (None: a temporary folder that lives as long as the Audit)",
           nullable=True),
)

TRAIN = (
    DATA,
    Option("backbone", "str", "small-cnn", "the network under the tutorial's dense head",
           choices=BACKBONES),
    Option("weights", "str", None, "imagenet downloads weights and so needs the network",
           choices=("imagenet",), nullable=True),
    Option("epochs", "int", 10, "training epochs", minimum=1),
    Option("batch_size", "int", 32, "images per training step", minimum=1, maximum=4096),
    Option("learning_rate", "float", 1e-3, "Adam's learning rate", minimum=0.0),
    Option("image_size", "int", 237, "square input side in pixels", minimum=16, maximum=2048),
    Option("model_name", "str", "cxr-classifier", "registered model name"),
    Option("alias", "str", "champion", "alias pointed at the new version"),
    Option("seed", "int", 0, "random seed", minimum=0),
)

BENCH = (
    Option("model_uri", "str", "models:/cxr-classifier@champion",
           "registered model to time; an untrained demo-shaped one if absent"),
    Option("images", "int", 96, "images to time", minimum=1),
    Option("batch_size", "int", 32, "images per compiled pass", minimum=1, maximum=4096),
    Option("method", "str", "gradcam", "CAM method", choices=METHODS),
    Option("json", "str", "reports/bench.json", "where to write results"),
    Option("end_to_end", "str", None,
           "time the whole report pass on this data (a --data spec, or films:COUNTxSIZE for "
           "generated greyscale PNG films) against decoding plus model.predict",
           nullable=True),
    Option("sample", "int", 30, "images in the tutorial loop's sample (end to end)",
           minimum=1),
    Option("spark_master", "str", None,
           "with --end-to-end, also time the report pass with backend=spark at this master "
           "(e.g. local[2]), in the same run", nullable=True),
    Option("stages", "list", None,
           "with --end-to-end, only these stages: predict, tutorial, stream, stream-fast, "
           "spark, spark-fast (default: the first four, and spark with --spark-master)",
           nullable=True),
)

FAIL_ON = ("none", "worse", "shortcut", "any")
_SHARED_WITH_COMPARE = ("split", "method", "score", "batch_size", "quality", "limit",
                        "workers", "label_map", "follow_symlinks", "class_names",
                        "unsafe_deserialization", "language", "output_dir")

# Champion against challenger (`python -m report compare`, entry point `compare`,
# `report.compare`): the audit's options, except those each model chooses for itself.
COMPARE = (
    Option("baseline", "str", "models:/cxr-classifier@champion",
           "the model in use (the champion): a model URI or a local MLflow model folder",
           mlproject_type="uri"),
    Option("candidate", "str", "models:/cxr-classifier@challenger",
           "the model that would replace it (the challenger)", mlproject_type="uri"),
    DATA,
    *(option for option in EXPLAIN if option.name in _SHARED_WITH_COMPARE),
    Option("fail_on", "str", "none",
           "exit non-zero for a CI promotion gate: worse (significantly worse accuracy), "
           "shortcut (a class newly flagged as reading outside the lungs: its predictions "
           "change when what lies outside them is hidden), any (either), none",
           choices=FAIL_ON),
)

_SHARED_WITH_METHODS = ("split", "layer", "score", "batch_size", "label_map",
                        "follow_symlinks", "class_names", "unsafe_deserialization",
                        "language", "output_dir")

# Which method to believe for this model (`python -m report methods`, entry point `methods`):
# every method and both baselines on one sample, scored by the same checks and ranked.
RANK_METHODS = (
    MODEL_URI,
    DATA,
    Option("sample", "int", 32,
           "images every method explains and is scored on (the first readable ones)",
           minimum=4, maximum=1024),
    *(option for option in EXPLAIN if option.name in _SHARED_WITH_METHODS),
)

COMMANDS: dict[str, tuple[Option, ...]] = {"explain": EXPLAIN, "train": TRAIN, "bench": BENCH,
                                           "compare": COMPARE, "methods": RANK_METHODS}
# MLproject entry point -> the command it runs.
ENTRY_POINTS = {"main": "explain", "train": "train", "compare": "compare",
                "methods": "methods"}


def defaults(command: str) -> dict[str, Any]:
    return {option.name: option.default for option in COMMANDS[command]}


def resolve(command: str, values: Mapping[str, Any], style: str = "python",
            only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Checked, typed values for the options of `command` (those named in `only`, if given),
    defaults filled in.

    `values` is keyed by option name; `style` is "cli" (values may be strings, errors name
    `--flags`) or "python" (errors name keywords). Unknown names are refused.
    """
    options = {option.name: option for option in COMMANDS[command]
               if only is None or option.name in only}
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise OptionError(unknown[0], f"unknown option; known: {', '.join(sorted(options))}")
    return {
        name: _checked(option, values.get(name, option.default), style)
        for name, option in options.items()
    }


def _checked(option: Option, value, style: str):
    display = option.flag if style == "cli" else option.keyword
    if value is None or (style == "cli" and isinstance(value, str)
                         and value.strip().lower() in NONE_WORDS and option.nullable):
        if option.nullable:
            return None
        raise OptionError(display, "needs a value")
    converted = _converted(option, value, display)
    _check_allowed(option, converted, display)
    return converted


def _converted(option: Option, value, display: str):
    try:
        return _CONVERTERS[option.kind](value)
    except (TypeError, ValueError):
        raise OptionError(display, f"{value!r} is not {_KIND_WORDS[option.kind]}") from None


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    number = float(value)  # MLproject has no int type: it passes "32" or "32.0"
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(value)


def _to_list(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip() for item in items]
    if not names or not all(names):
        raise ValueError(value)
    return names


def _to_str(value) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _to_path(value) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(value)
    return os.fspath(value)


_CONVERTERS = {"int": _to_int, "float": _to_float, "bool": _to_bool, "list": _to_list,
               "str": _to_str, "path": _to_path}
_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "yes or no",
               "list": "a comma-separated list of names", "str": "text", "path": "a path"}


def _check_allowed(option: Option, value, display: str) -> None:
    if option.choices is not None and value not in option.choices:
        raise OptionError(display, f"unknown value {value!r}; choose one of "
                          f"{', '.join(option.choices)}")
    if option.minimum is not None and value < option.minimum:
        raise OptionError(display, f"{value} is below {option.minimum:g}")
    if option.maximum is not None and value > option.maximum:
        raise OptionError(display, f"{value} is above {option.maximum:g}")


def settings_rows(command: str, values: Mapping[str, Any],
                  resolved: Mapping[str, str] | None = None) -> dict[str, str]:
    """The report's Settings table: label -> wording, in declaration order. `resolved` gives
    wordings known only after the run started (the layer the engine chose)."""
    resolved = dict(resolved or {})
    rows = {}
    for option in COMMANDS[command]:
        if option.label is None:
            continue
        rows[option.label] = resolved.get(option.name) or option.shown(values[option.name])
    return rows
