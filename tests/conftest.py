"""Shared fixtures: a throw-away tracking store, and a tiny registered model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TINY_SIZE = 64

# A skipped test fails when CI=true (tests/ci_strict.py says why).
pytest_plugins = ["tests.ci_strict"]


@pytest.fixture
def tracking_store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite store in tmp_path; nothing leaks into the project's own mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("tests", artifact_location=(tmp_path / "mlruns").as_uri())
    return uri


@pytest.fixture(scope="session")
def registered_store(tmp_path_factory) -> dict[str, str]:
    """A store holding `tiny-cxr@champion`, trained for one epoch on 64x64 synthetic images.

    Returned as environment variables for subprocesses, so tests run the real CLI.
    """
    folder = tmp_path_factory.mktemp("store")
    env = cli_env(folder)
    run_cli(
        ["train", "--data", "synthetic:45", "--epochs", "1", "--image-size", str(TINY_SIZE),
         "--model-name", "tiny-cxr"],
        env, folder,
    )
    return env


def cli_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
        MLFLOW_EXPERIMENT_NAME="tests",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, check: bool = True):
    result = subprocess.run(
        [sys.executable, "-m", "report", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"report {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def synthetic_films(count: int, size: int):
    """(images, labels) of the built-in synthetic films: in-memory data for the Python API."""
    import numpy as np

    from report.data import synthetic

    cases = [synthetic.generate(i, size=size) for i in range(count)]
    return np.stack([case.image for case in cases]), [case.label for case in cases]


def tiny_classifier(size: int, name: str, convs: int = 1, seed: int = 0):
    """An untrained CNN (convs conv layers, the last named `features`) with a softmax head
    over three classes: enough for the mechanics of an audit."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    hidden = [layers.Conv2D(6, 3, activation="relu") for _ in range(convs - 1)]
    return keras.Sequential([
        keras.Input((size, size, 3)), *hidden,
        layers.Conv2D(8, 3, activation="relu", name="features"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax"),
    ], name=name)
