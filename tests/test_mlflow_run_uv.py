"""`mlflow run . --env-manager uv`: MLflow builds its own environment from conda.yaml's pins.

No conda needed: uv (pinned in the `test` extra) creates a virtualenv from a local Python 3.11
and installs the pins from PyPI, or from its cache when warm. The environment goes to a
throw-away MLFLOW_ENV_ROOT, so every run checks conda.yaml as it is now; uv's own cache stays
where it is, so only the first run on a machine downloads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT, TINY_SIZE

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def uv_env(folder: Path) -> dict[str, str]:
    # uv's own settings (UV_CACHE_DIR, an index mirror) pass through; MLflow's do not.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "VIRTUAL_ENV", "CONDA_")) and k != "PYTHONPATH"}
    # No Python downloads: uv takes the machine's 3.11 (found on PATH; a venv's interpreter
    # stands for its base), as conda.yaml's python=3.11 asks.
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
        MLFLOW_EXPERIMENT_NAME="uv",
        MLFLOW_ENV_ROOT=str(folder / "envs"),
        TF_CPP_MIN_LOG_LEVEL="2",
        # `mlflow` and `uv` from the dev venv; MLflow calls `uv` by name.
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
    )
    return env


def mlflow_run_uv(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "uv", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return time.monotonic() - started


def test_mlflow_run_with_uv_trains_and_reports(tmp_path):
    assert shutil.which("uv", path=str(VENV_BIN)), "uv is in the test extra: make .venv/.installed"
    env = uv_env(tmp_path)
    try:
        # The first run creates the environment (downloads only with a cold uv cache).
        train_seconds = mlflow_run_uv(
            ["-e", "train", "-P", "data=synthetic:45", "-P", "epochs=1",
             "-P", f"image_size={TINY_SIZE}", "-P", "model_name=uv-cxr"],
            env, tmp_path,
        )
        # The second finds it by its hash of conda.yaml's pins and reuses it.
        report_seconds = mlflow_run_uv(
            ["-P", "model_uri=models:/uv-cxr@champion", "-P", "data=synthetic:30",
             "-P", "quality=off"],
            env, tmp_path,
        )
        envs = list((tmp_path / "envs").iterdir())
        assert len(envs) == 1, envs  # one environment, shared by both entry points
        print(f"\nmlflow run --env-manager uv: train {train_seconds:.0f} s (creates the env), "
              f"report {report_seconds:.0f} s (reuses it)")
    finally:
        # A TensorFlow environment is about 2 GB; uv's cache keeps what a rerun needs.
        shutil.rmtree(tmp_path / "envs", ignore_errors=True)

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("uv").experiment_id], order_by=["start_time ASC"]
    )
    assert len(runs) == 2
    train_run, report_run = runs
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags.get("mlflow.project.env") == "uv"
    assert train_run.data.tags.get("mlflow.project.entryPoint") == "train"
    assert report_run.data.tags.get("mlflow.project.entryPoint") == "main"
    artifacts = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/report.html", "report/report.pdf"} <= artifacts
