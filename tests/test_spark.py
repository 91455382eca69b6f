"""backend=spark against the local backend, on a real Spark session (`local[2,2]`: two cores,
and a failed task is tried once more, as a cluster's spark.task.maxFailures would).

The data hold an undecodable file and a byte-for-byte copy of a film in another class's
folder, so that the copy lands in another partition than its original: what the local pass
skips, every partitioning must skip with the same reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import report
from report import api, core, options, spark
from report.data import synthetic
from report.errors import UserError
from tests.conftest import PROJECT_ROOT, TINY_SIZE, cli_env, tiny_classifier

CLASSES = ("COVID-19", "NORMAL", "OTHER_INFECTION")
SIZE = 48
FILMS = 30
BATCH = 4  # 30 films + 2 bad files: 8 batches, so 7 partitions are 7 real parts


def java_or_skip() -> None:
    try:
        spark.check_java()
    except UserError as error:  # make test installs it (scripts/install-system-deps.sh)
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def session():
    java_or_skip()
    active, started = spark.session("local[2,2]")
    yield active
    if started:
        active.stop()


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("films")
    for index in range(FILMS):
        case = synthetic.generate(index, size=64)
        folder = root / CLASSES[case.label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(case.image[..., 0]).save(folder / f"film-{index:03d}.png")
    (root / "NORMAL" / "broken.png").write_bytes(b"not a PNG at all")
    first = sorted((root / "COVID-19").iterdir())[0]
    shutil.copy(first, root / "OTHER_INFECTION" / "zz-copy.png")  # the last record
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(SIZE, "spark-tiny", convs=2, seed=3)


def run(model, films, folder: Path, **keywords):
    return report.audit(model, str(films), class_names=list(CLASSES), split="all",
                        batch_size=BATCH, output_dir=str(folder), **keywords)


@pytest.fixture(scope="module")
def audits(session, model, films, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audits")
    found = {"local": run(model, films, folder)}
    for partitions in (1, 2, 7):
        found[partitions] = run(model, films, folder, backend="spark", partitions=partitions)
    return found


def predictions(audit) -> str:
    return (audit.artifacts_dir / "predictions.csv").read_text(encoding="utf-8")


def overlays(audit) -> dict[str, bytes]:
    root = audit.artifacts_dir / "overlays"
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.png")}


@pytest.mark.parametrize("partitions", [1, 2, 7])
def test_predictions_csv_is_the_local_backends_byte_for_byte(audits, partitions):
    local, distributed = predictions(audits["local"]), predictions(audits[partitions])
    assert distributed == local
    assert "unreadable: duplicate of " in local and "zz-copy.png" in local
    assert local.count("\n") == FILMS + 2 + 1  # every film, the two skips, the header


@pytest.mark.parametrize("partitions", [1, 2, 7])
def test_maps_match_the_local_backend_and_are_sharded_per_partition(audits, partitions):
    local, distributed = audits["local"].maps, audits[partitions].maps
    assert sorted(distributed) == sorted(local) and len(local) == FILMS
    for image_id in local:
        np.testing.assert_allclose(distributed[image_id], local[image_id], atol=1e-5)
    shards = sorted(p.name for p in (audits[partitions].artifacts_dir / "cams").iterdir())
    assert shards == [f"part-{n:05d}.npz" for n in range(partitions)]


@pytest.mark.parametrize("partitions", [1, 2, 7])
def test_overlays_are_the_local_backends(audits, partitions):
    local = overlays(audits["local"])
    assert len(local) == FILMS
    assert overlays(audits[partitions]) == local


def report_numbers(audit) -> dict:
    context = audit.context
    return {
        "metrics": {k: v for k, v in audit.metrics.items() if not k.startswith("time.")},
        "findings": audit.findings,
        "sections": [(s.title, s.findings, [t.rows for t in s.tables]) for s in audit.sections],
        "grids": [[(i.image_id, i.confidence) for i in g.items] for g in context.grids],
        "extremes": [[i.image_id for i in items] for _, items in context.extremes],
        "skipped": context.skipped,
        "flagged": context.flagged,
        "data": context.data.rows,
        "params": audit.params,
    }


def test_report_numbers_do_not_depend_on_the_partitioning(audits):
    one = report_numbers(audits[1])
    assert report_numbers(audits[2]) == one
    assert report_numbers(audits[7]) == one
    local = report_numbers(audits["local"])
    assert {**one, "params": None} == {**local, "params": None}
    assert one["params"]["data_fingerprint"] == local["params"]["data_fingerprint"]
    assert one["params"]["backend"] == "spark" and local["params"]["backend"] == "local"
    assert audits[7].context.settings["Backend"] == "Apache Spark (local[2,2], 7 partitions)"
    assert one["metrics"]["images_skipped"] == 2


def test_global_normalisation_uses_one_scale_over_every_partition(session, model, films,
                                                                  tmp_path):
    local = run(model, films, tmp_path, normalize="global")
    distributed = run(model, films, tmp_path, normalize="global", backend="spark",
                      partitions=3)
    assert overlays(distributed) == overlays(local)
    per_image = run(model, films, tmp_path, normalize="image", limit=8)
    # The shared scale changes the pictures: a check that the comparison above can fail.
    shared = set(overlays(local).items())
    assert not set(overlays(per_image).items()) <= shared


def audit_loading_with(load, model, films, folder: Path, partitions: int):
    """A Spark audit of `films` whose source reads each image with `load` (defined in this
    module, which is shipped to the executors by value: they cannot import tests/)."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    values = options.resolve("explain", {"class_names": list(CLASSES), "split": "all",
                                         "batch_size": BATCH, "backend": "spark",
                                         "partitions": partitions, "output_dir": None},
                             only=api.AUDIT_KEYWORDS)
    loaded = api._loaded_model(model, values)
    source, label = core.open_data(str(films), loaded.metadata.class_names, values)
    source.__class__ = type(f"Loading{load.__name__}", (type(source),), {"load": load})
    return core.run_audit(loaded, source, values, folder / "artifacts", label)


def test_a_task_that_fails_on_its_first_attempt_is_retried(session, model, films, tmp_path):
    """Partition 1 raises on its first attempt, as its first image is read;
    Spark runs it again and the report is whole, with no file twice or missing."""
    marker = tmp_path / "failed-once"
    audit = audit_loading_with(_fails_once(marker), model, films, tmp_path, partitions=3)

    assert marker.is_file(), "the first attempt of partition 1 should have failed"
    assert audit.metrics["images_explained"] == FILMS
    assert len(overlays(audit)) == FILMS and len(audit.maps) == FILMS
    rows = predictions(audit).splitlines()[1:]
    assert len(rows) == len({row.split(",")[0] for row in rows}) == FILMS + 2


def _fails_once(marker: Path):
    original_load = report.data.source.ImageSource.load

    def load(self, record, image_size):
        from pyspark import TaskContext

        context = TaskContext.get()
        if context and context.partitionId() == 1 and context.attemptNumber() == 0:
            marker.touch()
            raise RuntimeError("an executor lost its disk (injected by the test)")
        return original_load(self, record, image_size)

    return load


def test_a_user_error_inside_a_task_reaches_the_user_as_its_one_line(session, model, films,
                                                                     tmp_path):
    with pytest.raises(UserError) as raised:
        audit_loading_with(_refuses, model, films, tmp_path, partitions=2)
    assert str(raised.value) == "data: film-001 needs a licence; ask its owner"


def _refuses(self, record, image_size):
    raise UserError("data: film-001 needs a licence; ask its owner")


def test_part_ranges_are_contiguous_whole_batches():
    parts = spark.part_ranges(103, 8, 5)  # 13 batches in 5 parts: 3, 2, 3, 2, 3
    assert [p.start for p in parts] == [0, 24, 40, 64, 80] and parts[-1].stop == 103
    assert [n for p in parts for n in p] == list(range(103))
    assert len(spark.part_ranges(10, 4, 7)) == 3  # no more parts than batches
    assert spark.part_ranges(5, 32, 4) == [range(0, 5)]


def test_missing_java_is_a_one_line_error_that_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(UserError, match="openjdk-17-jre-headless") as raised:
        spark.check_java()
    assert "\n" not in str(raised.value)
    old = tmp_path / "jdk11" / "bin"
    old.mkdir(parents=True)
    (old / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    (old / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(old.parent))
    with pytest.raises(UserError, match="Java 17 or later; .* is Java 11"):
        spark.check_java()


def test_a_missing_pyspark_names_the_extra_that_brings_it(monkeypatch):
    # pyspark is the `spark` extra, not a dependency: an install without it is told how.
    for name in [n for n in sys.modules if n == "pyspark" or n.startswith("pyspark.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark.* raises ImportError
    with pytest.raises(UserError, match=r"cxr-gradcam-report\[spark\]") as raised:
        spark.session("local[1]")
    assert "\n" not in str(raised.value)


def test_the_cli_names_a_missing_java_in_one_line(registered_store, tmp_path):
    env = {**registered_store, "JAVA_HOME": str(tmp_path / "no-jdk"),
           "PATH": str(Path(sys.executable).parent)}  # no java on it
    result = subprocess.run(
        [sys.executable, "-m", "report", "explain", "--model-uri", "models:/tiny-cxr@champion",
         "--data", "synthetic:9", "--backend", "spark", "--output-dir", str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Java 17" in last and "openjdk-17-jre-headless" in last


@pytest.mark.slow
def test_mlflow_run_with_the_spark_backend_logs_the_sharded_layout(tmp_path):
    java_or_skip()
    env = cli_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    def mlflow_run(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager",
             "local", *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=900)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"

    mlflow_run("-e", "train", "-P", "data=synthetic:45", "-P", "epochs=1",
               "-P", f"image_size={TINY_SIZE}", "-P", "model_name=spark-cxr")
    mlflow_run("-P", "model_uri=models:/spark-cxr@champion", "-P", "data=synthetic:30",
               "-P", "batch_size=4", "-P", "backend=spark", "-P", "spark_master=local[2]",
               "-P", "partitions=2")

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["backend"] == "spark"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "cams")] == [
        "cams/part-00000.npz", "cams/part-00001.npz"]
    explained = int(run.data.metrics["images_explained"])
    overlays_logged = [item for folder in client.list_artifacts(run.info.run_id, "overlays")
                       for item in client.list_artifacts(run.info.run_id, folder.path)]
    assert explained == len(overlays_logged) > 0
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions.csv", "report"} <= names
