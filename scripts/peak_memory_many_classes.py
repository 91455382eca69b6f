"""Peak memory of a whole report run for a model with many classes (README, "Safety").

    .venv/bin/python scripts/peak_memory_many_classes.py [--classes 1000] [--images 8]

Builds an untrained small CNN with one softmax output per class (the tutorial's three
classes first, then class_0003, ...), saves it as an MLflow model folder, and runs
`python -m report explain` on that many synthetic films in a child process, with a
throw-away tracking store. Prints the child's peak resident memory and its wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def save_model(folder: Path, classes: int, size: int) -> Path:
    import keras
    import mlflow
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((size, size, 3)),
        layers.Conv2D(8, 3, strides=2, activation="relu"),
        layers.Conv2D(8, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(classes, activation="softmax"),
    ], name=f"many_{classes}")
    names = ["COVID-19", "NORMAL", "OTHER_INFECTION"] + [f"class_{i:04d}" for i in
                                                         range(3, classes)]
    metadata = {"class_names": names[:classes],
                "preprocessing": {"image_size": [size, size], "color": "rgb",
                                  "scale": 1 / 255}}
    path = folder / "model"
    mlflow.keras.save_model(model, str(path), metadata=metadata, pip_requirements=[])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        model = save_model(folder, args.classes, args.size)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
               "MLFLOW_EXPERIMENT_NAME": "peak-memory", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "report", "explain", "--model-uri", str(model),
                        "--data", f"synthetic:{args.images}", "--split", "all",
                        "--output-dir", str(folder / "reports")],
                       env=env, cwd=folder, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"{args.classes} classes, {args.images} images at {args.size} px: peak RSS of the "
          f"report run {peak_kib / 2**20:.2f} GiB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
