"""`python -m report bench`: images per second for the engine and its alternatives.

Everything runs in one process on the same model and the same images, interleaved over a few
rounds, and the numbers that matter are ratios within the run, so a busy shared machine slows
every contender alike. Speed and memory targets are checked here, never by timed tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from report.errors import UserError

ROUNDS = 3


@dataclass(frozen=True)
class BenchSettings:
    model_uri: str = "models:/cxr-classifier@champion"
    images: int = 96
    batch_size: int = 32
    method: str = "gradcam"
    json_path: Path | None = None


@dataclass
class Row:
    name: str
    images_per_second: float | None
    note: str = ""


def run_bench(settings: BenchSettings) -> dict:
    import keras  # noqa: F401  (TensorFlow start-up before any timing)

    from report.cam.engine import make_engine
    from report.streaming import preprocess

    model, metadata, model_label = _bench_model(settings.model_uri)
    batch = _synthetic_images(0, settings.images, metadata)
    x = preprocess(batch, metadata)
    batches = [x[i : i + settings.batch_size] for i in range(0, len(x), settings.batch_size)]
    engine = make_engine(settings.method, model, "auto", "logit",
                         (*metadata.image_size, metadata.channels))

    contenders: dict[str, Callable[[], None]] = {
        f"this engine ({settings.method}, batched)": lambda: [engine.explain(b) for b in batches],
        "model.predict alone": lambda: [model.predict(b, verbose=0) for b in batches],
        "compiled forward pass alone": _compiled_forward(model, batches),
        "tutorial (per image: predict + new gradient model)": _tutorial_way(model, x),
    }
    contenders.update(_third_party(model, batches, engine.target.name))
    rows = _time_contenders(contenders, len(x))
    memory = _memory_growth(engine, metadata, settings.batch_size)
    result = _summary(settings, model_label, rows, memory)
    _print_table(result)
    if settings.json_path:
        settings.json_path.parent.mkdir(parents=True, exist_ok=True)
        settings.json_path.write_text(json.dumps(result, indent=2))
        print(f"\nwritten {settings.json_path}")
    return result


def _bench_model(model_uri: str):
    """The registered demo model when the store has it; else a fresh one of the same shape
    (speed does not depend on the weights)."""
    from report import tracking
    from report.model import ModelMetadata, build_classifier

    tracking.configure_store()
    try:
        registered = tracking.load_model(model_uri)
        return registered.model, registered.metadata, f"{registered.name} v{registered.version}"
    except UserError as error:
        print(f"note: {error}\nnote: timing an untrained small-cnn of the demo's shape instead")
    metadata = ModelMetadata(("COVID-19", "NORMAL", "OTHER_INFECTION"), (237, 237))
    return build_classifier("small-cnn", 3, metadata.image_size), metadata, "untrained small-cnn"


def _compiled_forward(model, batches):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda: [forward(tf.constant(b)).numpy() for b in batches]


def _tutorial_way(model, x: np.ndarray) -> Callable[[], None]:
    """What the notebook did per image (pyimagesearch's GradCAM): model.predict, then a new
    Model from the input to (last 4-D layer, output), a tape, guided gradients, cv2.resize.

    The notebook's `Model(model.inputs, [layer.output, model.output])` fails on a Keras 3
    model loaded from disk ("has never been called"), so the per-image model is rebuilt by
    calling the same layers on a fresh Input: the same work, in a form Keras 3 accepts.
    """
    import cv2
    import keras
    import tensorflow as tf

    def gradient_model():
        inputs = keras.Input(x.shape[1:])
        outputs, last_4d = inputs, None
        for layer in model.layers:
            outputs = layer(outputs)
            if len(outputs.shape) == 4:
                last_4d = outputs  # the notebook's "last 4-D output": a pooling layer here
        return keras.Model(inputs, [last_4d, outputs])

    def one_image(image):
        image = image[None]
        predictions = model.predict(image, verbose=0)
        class_index = int(np.argmax(predictions[0]))
        grad_model = gradient_model()
        with tf.GradientTape() as tape:
            conv_outputs, outputs = grad_model(tf.cast(image, tf.float32))
            loss = outputs[:, class_index]
        grads = tape.gradient(loss, conv_outputs)
        guided = tf.cast(conv_outputs > 0, tf.float32) * tf.cast(grads > 0, tf.float32) * grads
        weights = tf.reduce_mean(guided[0], axis=(0, 1))
        cam = tf.reduce_sum(weights * conv_outputs[0], axis=-1).numpy()
        cv2.resize(cam, (image.shape[2], image.shape[1]))

    return lambda: [one_image(image) for image in x]


def _third_party(model, batches, layer_name: str) -> dict:
    """tf-keras-vis and xplique, when installed in this environment (they pin other
    TensorFlow versions, so they are not project dependencies; see README).

    Neither reaches a layer inside a nested backbone, so each is timed twice: on the model as
    registered (where it fails, which the table shows) and on a flattened copy that shares its
    weights, where the target layer is a top-level layer they can find."""
    inner_name = layer_name.split("/")[-1]
    flat = _flattened(model)
    libraries = {"tf-keras-vis Gradcam": _tf_keras_vis, "xplique GradCAM": _xplique}
    contenders = {}
    for label, factory in libraries.items():
        installed = importlib.util.find_spec(label.split()[0].replace("-", "_")) is not None
        contenders[label] = factory(model, batches, inner_name) if installed else None
        if installed and flat is not None:
            contenders[f"{label} (flattened copy)"] = factory(flat, batches, inner_name)
    return contenders


def _tf_keras_vis(model, batches, layer_name: str):
    def run():
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.scores import CategoricalScore

        gradcam = Gradcam(model, clone=False)
        for b in batches:
            classes = np.argmax(model.predict(b, verbose=0), axis=1)
            gradcam(CategoricalScore(list(classes)), b, penultimate_layer=layer_name)

    return run


def _xplique(model, batches, layer_name: str):
    def run():
        from xplique.attributions import GradCAM as XpliqueGradCAM

        explainer = XpliqueGradCAM(model, conv_layer=layer_name, batch_size=len(batches[0]))
        for b in batches:
            predictions = model.predict(b, verbose=0)
            targets = np.eye(predictions.shape[-1])[np.argmax(predictions, axis=1)]
            explainer.explain(b, targets)

    return run


def _flattened(model):
    """A copy with nested chain backbones spliced in, or None when a nested model is not a
    simple chain. Layers are re-created from their configs with the same weights: reusing the
    original layer objects would leave their `.output` pointing into the nested graph."""
    import keras

    try:
        inputs = keras.Input(model.inputs[0].shape[1:], name="flattened_input")
        x = inputs
        for layer in model.layers:
            inner = layer.layers if isinstance(layer, keras.Model) else [layer]
            for each in inner:
                if not isinstance(each, keras.layers.InputLayer):
                    copy = type(each).from_config(each.get_config())
                    x = copy(x)
                    copy.set_weights(each.get_weights())
        return keras.Model(inputs, x, name=f"{model.name}_flat")
    except Exception:  # a branching backbone (ResNet, DenseNet) is not a chain
        return None


def _time_contenders(contenders: dict, n_images: int) -> list[Row]:
    rows = {name: [] for name in contenders}
    notes = {}
    for name, run in contenders.items():  # warm-up: traces, graph building, caches
        if run is None:
            notes[name] = "not installed in this environment"
            continue
        try:
            run()
        except Exception as error:  # a third-party library that cannot handle this model
            notes[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    for _ in range(ROUNDS):  # interleaved, so load on a shared machine hits all alike
        for name, run in contenders.items():
            if name in notes:
                continue
            started = time.perf_counter()
            run()
            rows[name].append(n_images / (time.perf_counter() - started))
    return [
        Row(name, statistics.median(speeds) if speeds else None, notes.get(name, ""))
        for name, speeds in rows.items()
    ]


def _memory_growth(engine, metadata, batch_size: int, batches: int = 24) -> dict:
    """Resident memory after each batch of a streaming run over batches x batch_size images,
    overlays drawn and encoded as in a report run. Growth after the first batches (warm-up)
    would mean something is kept per image."""
    from report.cam.normalise import per_image
    from report.cam.overlay import encode, make_overlay
    from report.streaming import preprocess

    resident = []
    for b in range(batches):
        pixels = _synthetic_images(b * batch_size, batch_size, metadata)
        explanation = engine.explain(preprocess(pixels, metadata))
        for image, heatmap in zip(pixels, per_image(explanation.maps), strict=True):
            encode(make_overlay(image, heatmap, "X: 1%"))
        resident.append(_rss_mb())
    settled = resident[2:]
    return {
        "images": batches * batch_size,
        "rss_mb_after_batch_3": round(settled[0], 1),
        "rss_mb_at_end": round(settled[-1], 1),
        "growth_mb_per_1000_images": round(
            (settled[-1] - settled[0]) / ((len(settled) - 1) * batch_size) * 1000, 2
        ),
    }


def _synthetic_images(start: int, n: int, metadata) -> np.ndarray:
    from report.data import synthetic
    from report.data.images import resize

    return np.stack([
        resize(synthetic.generate(start + i, size=max(metadata.image_size)).image,
               metadata.image_size)
        for i in range(n)
    ])


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _summary(settings: BenchSettings, model_label: str, rows: list[Row], memory: dict) -> dict:
    speed = {row.name: row.images_per_second for row in rows}
    engine = speed[f"this engine ({settings.method}, batched)"]
    ratios = {
        "engine_vs_tutorial": _ratio(engine, speed["tutorial (per image: predict + new "
                                                  "gradient model)"]),
        "predict_time_ratio": _ratio(speed["model.predict alone"], engine),
        "forward_time_ratio": _ratio(speed["compiled forward pass alone"], engine),
    }
    for name in ("tf-keras-vis Gradcam", "xplique GradCAM"):
        best = speed.get(name) or speed.get(f"{name} (flattened copy)")
        ratios[f"engine_vs_{name.split()[0]}"] = _ratio(engine, best)
    return {
        "model": model_label,
        "settings": {k: str(v) for k, v in asdict(settings).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "rows": [asdict(row) for row in rows],
        "ratios": ratios,
        "memory": memory,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _print_table(result: dict) -> None:
    print(f"\nModel: {result['model']}   machine: {result['machine']}")
    print(f"{'contender':<52} {'images/s':>10}")
    for row in result["rows"]:
        speed = f"{row['images_per_second']:.1f}" if row["images_per_second"] else "-"
        print(f"{row['name']:<52} {speed:>10}  {row['note']}")
    ratios = result["ratios"]
    print(f"\nengine / tutorial speed:                  {ratios['engine_vs_tutorial']}x "
          "(target >= 30)")
    print(f"engine time / model.predict time:         {ratios['predict_time_ratio']} "
          "(target <= 1.2)")
    print(f"engine time / compiled forward pass time: {ratios['forward_time_ratio']}")
    for library in ("tf-keras-vis", "xplique"):
        print(f"engine / {library} speed:{' ' * (25 - len(library))}"
              f"{ratios[f'engine_vs_{library}']}x (target >= 1)")
    memory = result["memory"]
    print(f"memory: {memory['rss_mb_after_batch_3']} MB -> {memory['rss_mb_at_end']} MB over "
          f"{memory['images']} images ({memory['growth_mb_per_1000_images']} MB per 1000 images)")
