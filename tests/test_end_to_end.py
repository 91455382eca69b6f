"""The whole path through the real commands: `mlflow run .` of both entry points, and the CLI.

These start real processes against a throw-away sqlite store, as a user's shell would.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pypdf import PdfReader

from report.render import DISCLAIMER
from tests.conftest import PROJECT_ROOT, TINY_SIZE, cli_env, run_cli

pytestmark = pytest.mark.slow

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")


def mlflow_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
         *args],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def mlflow_project_runs(tmp_path_factory):
    """`mlflow run . -e train` then `mlflow run .`, as `make demo` does, on tiny data."""
    folder = tmp_path_factory.mktemp("project-run")
    env = cli_env(folder)
    mlflow_run(
        ["-e", "train", "-P", "data=synthetic:45", "-P", "epochs=1",
         "-P", f"image_size={TINY_SIZE}", "-P", "model_name=e2e-cxr"],
        env, folder,
    )
    report = mlflow_run(
        ["-P", "model_uri=models:/e2e-cxr@champion", "-P", "data=synthetic:45",
         "-P", "batch_size=4", "-P", "alpha=.5"],
        env, folder,
    )
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], order_by=["start_time ASC"]
    )
    return {"env": env, "folder": folder, "stdout": report.stdout, "runs": runs, "client": client}


def test_train_entry_point_registers_the_model_with_its_metadata(mlflow_project_runs):
    client = mlflow_project_runs["client"]
    version = client.get_model_version_by_alias("e2e-cxr", "champion")
    info = mlflow.models.get_model_info("models:/e2e-cxr@champion")
    assert info.metadata == {
        "class_names": list(CLASSES),
        "preprocessing": {"image_size": [TINY_SIZE, TINY_SIZE], "color": "rgb",
                          "scale": 1 / 255},
    }
    assert info.signature.inputs.inputs[0].shape == (-1, TINY_SIZE, TINY_SIZE, 3)
    assert info.flavors["keras"]["save_exported_model"] is False
    train_run = client.get_run(version.run_id)
    assert "loss" in train_run.data.metrics and "test_accuracy" in train_run.data.metrics


def test_report_entry_point_logs_the_artifact_layout(mlflow_project_runs):
    client, run = mlflow_project_runs["client"], mlflow_project_runs["runs"][-1]
    assert run.info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report", "overlays", "cams", "predictions.csv"} <= top
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert reports == {"report/report.html", "report/report.pdf"}
    overlay_classes = {a.path for a in client.list_artifacts(run.info.run_id, "overlays")}
    assert overlay_classes <= {f"overlays/{name}" for name in CLASSES}
    assert overlay_classes


def test_report_run_params_metrics_and_note(mlflow_project_runs):
    run = mlflow_project_runs["runs"][-1]
    params, metrics = run.data.params, run.data.metrics
    assert params["model_name"] == "e2e-cxr" and params["model_version"] == "1"
    assert params["target_layer"] == "small_cnn/block4_relu"
    assert params["alpha"] == ".5"  # as `mlflow run` logged it, not overwritten
    assert re.fullmatch(r"[0-9a-f]{64}", params["data_fingerprint"])
    assert metrics["images_explained"] == 9
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert {f"precision.{c}" for c in CLASSES} <= set(metrics)
    assert run.data.tags["mlflow.note.content"].startswith(f"**{DISCLAIMER}**")


def test_predictions_and_cams_cover_every_image(mlflow_project_runs):
    client, run = mlflow_project_runs["client"], mlflow_project_runs["runs"][-1]
    local = Path(client.download_artifacts(run.info.run_id, "", str(mlflow_project_runs["folder"]
                                                                      / "dl")))
    rows = list(csv.DictReader(io.StringIO((local / "predictions.csv").read_text())))
    assert len(rows) == 9
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    cams = np.load(local / "cams" / "cams.npz")
    assert str(cams["_layer"]) == "small_cnn/block4_relu"
    for row in rows:
        assert cams[row["image_id"]].dtype == np.float32
        assert (local / "overlays" / row["true_label"] / f"{row['image_id']}.png").is_file()


def test_report_paths_are_the_last_lines_and_local_copies_exist(mlflow_project_runs):
    run = mlflow_project_runs["runs"][-1]
    last_two = mlflow_project_runs["stdout"].strip().splitlines()[-2:]
    expected = [str(PROJECT_ROOT / "reports" / run.info.run_id / f"report.{ext}")
                for ext in ("html", "pdf")]
    assert last_two == expected
    assert all(Path(path).stat().st_size > 0 for path in expected)


def test_pdf_has_the_disclaimer_on_every_page(mlflow_project_runs):
    run = mlflow_project_runs["runs"][-1]
    pdf = PROJECT_ROOT / "reports" / run.info.run_id / "report.pdf"
    pages = [" ".join(page.extract_text().split()) for page in PdfReader(pdf).pages]
    assert len(pages) >= 2
    assert all(DISCLAIMER in page for page in pages)


# --- bad input: one line naming the thing and the fix, non-zero exit, no traceback ---------


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.mark.parametrize(
    ("model_uri", "fragments"),
    [
        ("models:/no-such-model@champion", ("no registered model 'no-such-model'", "make demo")),
        ("models:/tiny-cxr@nope", ("has no alias 'nope'", "aliases: champion")),
        ("models:/tiny-cxr/7", ("has no version 7",)),
        ("runs:/abc/model", ("could not load model 'runs:/abc/model'", "abc not found")),
        ("no-such-folder", ("neither a registry URI", "nor an existing folder")),
        ("models:/m-0123abcd", ("no logged model 'm-0123abcd'",)),
    ],
)
def test_unresolvable_models_are_one_line_errors(registered_store, tmp_path, model_uri,
                                                 fragments):
    result = run_cli(["explain", "--model-uri", model_uri, "--data", "synthetic:15"],
                     registered_store, tmp_path, check=False)
    assert_one_line_error(result, *fragments)


def test_missing_data_folder_is_a_one_line_error(registered_store, tmp_path):
    result = run_cli(["explain", "--model-uri", "models:/tiny-cxr@champion",
                      "--data", str(tmp_path / "missing")], registered_store, tmp_path,
                     check=False)
    assert_one_line_error(result, "missing' does not exist")


def test_folder_without_class_folders_is_a_one_line_error(registered_store, tmp_path):
    (tmp_path / "images" / "cats").mkdir(parents=True)
    result = run_cli(["explain", "--model-uri", "models:/tiny-cxr@champion",
                      "--data", str(tmp_path / "images")], registered_store, tmp_path,
                     check=False)
    assert_one_line_error(result, "matches the model's classes", "found: cats")


def test_undecodable_images_are_skipped_counted_and_listed(registered_store, tmp_path):
    from report.data import synthetic

    for i in range(6):
        case = synthetic.generate(i, size=TINY_SIZE)
        folder = tmp_path / "images" / synthetic.CLASS_NAMES[case.label]
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(case.image).save(folder / f"img{i}.png")
    (tmp_path / "images" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG garbage")
    result = run_cli(["explain", "--model-uri", "models:/tiny-cxr@champion", "--data",
                      str(tmp_path / "images"), "--split", "all"], registered_store, tmp_path)
    assert "Explained: 6 images (1 skipped)" in result.stdout
    run_id = re.search(r"MLflow run: (\w+)", result.stdout).group(1)
    mlflow.set_tracking_uri(registered_store["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    csv_path = client.download_artifacts(run_id, "predictions.csv", str(tmp_path))
    text = Path(csv_path).read_text(encoding="utf-8")
    rows = {r["image_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert len(rows) == 7
    assert rows["broken"]["flags"] == "unreadable: not a decodable PNG/JPEG image"
    assert client.get_run(run_id).data.metrics["images_skipped"] == 1
    html = (tmp_path / "reports" / run_id / "report.html").read_text()
    assert "broken.png" in html and "not a decodable PNG/JPEG image" in html


def test_imagenet_weights_offline_is_a_one_line_error(tracking_store, monkeypatch):
    import keras

    from report.errors import UserError
    from report.model import build_classifier

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(UserError, match="needs the network.*--weights none"):
        build_classifier("vgg16", 3, (64, 64), weights="imagenet")


def run_id_of(result) -> str:
    return re.search(r"MLflow run: (\w+)", result.stdout).group(1)


def test_report_states_method_layer_score_and_normalisation(registered_store, tmp_path):
    result = run_cli(
        ["explain", "--model-uri", "models:/tiny-cxr@champion", "--data", "synthetic:30",
         "--method", "gradcam++", "--layer", "block3_relu", "--score", "probability",
         "--normalize", "global", "--batch-size", "4"],
        registered_store, tmp_path,
    )
    run_id = run_id_of(result)
    mlflow.set_tracking_uri(registered_store["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    params = client.get_run(run_id).data.params
    assert (params["method"], params["score"], params["normalize"]) == (
        "gradcam++", "probability", "global")
    assert params["target_layer"] == "small_cnn/block3_relu"
    html = (tmp_path / "reports" / run_id / "report.html").read_text()
    for shown in ("Grad-CAM++", "small_cnn/block3_relu", "probability of the explained class",
                  "one scale for the whole report"):
        assert shown in html
    overlays = [a.path for c in CLASSES
                for a in client.list_artifacts(run_id, f"overlays/{c}")]
    assert len(overlays) == 6  # every explained image, drawn in the second pass


def test_scorecam_runs_end_to_end(registered_store, tmp_path):
    result = run_cli(
        ["explain", "--model-uri", "models:/tiny-cxr@champion", "--data", "synthetic:15",
         "--method", "scorecam", "--limit", "2"],
        registered_store, tmp_path,
    )
    assert "Explained: 2 images (0 skipped)" in result.stdout


def test_unknown_layer_is_a_one_line_error(registered_store, tmp_path):
    result = run_cli(["explain", "--model-uri", "models:/tiny-cxr@champion", "--data",
                      "synthetic:15", "--layer", "nope"], registered_store, tmp_path, check=False)
    assert_one_line_error(result, "--layer 'nope'", "small_cnn/block4_relu")


def test_overlays_are_logged_as_image_charts(mlflow_project_runs):
    client, run = mlflow_project_runs["client"], mlflow_project_runs["runs"][-1]
    charted = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert charted, "no image charts logged"
    assert all("/" not in path.removeprefix("images/") for path in charted)
    assert any(path.startswith("images/overlay_COVID-19") for path in charted)


def test_unreachable_tracking_server_fails_fast_with_one_line(tmp_path):
    import time

    env = {**cli_env(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = run_cli(["explain", "--data", "synthetic:15"], env, tmp_path, check=False)
    assert time.monotonic() - started < 30
    assert_one_line_error(result, "tracking server http://127.0.0.1:9 is not reachable")
    assert not (tmp_path / "reports").exists()


def test_a_run_killed_midway_can_be_run_again_to_a_complete_report(registered_store, tmp_path):
    import os
    import signal
    import time

    args = [sys.executable, "-m", "report", "explain", "--model-uri", "models:/tiny-cxr@champion",
            "--data", "synthetic:300", "--batch-size", "4"]
    process = subprocess.Popen(args, env=registered_store, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    seen = ""
    while "Explaining" not in seen and time.monotonic() < deadline:
        seen += process.stderr.read(64) or ""
    assert "Explaining" in seen, "the run never started explaining"
    os.killpg(process.pid, signal.SIGKILL)  # no clean-up code runs
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    again = run_cli(args[3:], registered_store, tmp_path)
    run_id = run_id_of(again)
    assert "Explained: 60 images (0 skipped)" in again.stdout
    mlflow.set_tracking_uri(registered_store["MLFLOW_TRACKING_URI"])
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (tmp_path / "reports" / run_id / "report.pdf").stat().st_size > 0


@pytest.mark.parametrize("output_dir", ["none", "a-file"])
def test_an_unusable_output_dir_is_refused_before_any_work(registered_store, tmp_path,
                                                           output_dir):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_cli(["explain", "--model-uri", "models:/tiny-cxr@champion", "--data",
                      "synthetic:15", "--output-dir", output_dir], registered_store, tmp_path,
                     check=False)
    assert_one_line_error(result, "--output-dir")
    assert "Explaining" not in result.stderr
