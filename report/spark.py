"""backend=spark: the same report, its images explained in partitions by Spark executors.

    driver   records -> a DataFrame in contiguous parts, each a whole number of batches
    job 1    (files that may repeat) each file's digest -> which records repeat an earlier one
    job 2    (normalize=global) each part's largest map -> the shared scale
    job 3    mapInPandas, per part: the engine (built once per Python worker from the model
             file the driver shipped) explains the part; its overlays and its map shard
             cams/part-NNNNN.npz go straight to the run's artifact store; the task returns
             its partial summary and its predictions.csv lines
    driver   merges the parts' results one at a time -> one summary -> predictions.csv; the
             report is measured from it by the same code as the local backend's
             (core.measure)

Nothing image-sized comes back to the driver except the report's bounded grids; its memory
does not grow with the number of images beyond a few hundred bytes of numbers per image.
Artifact names depend only on the records and the partitioning, so a retried task
rewrites the same files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from report import i18n
from report.artifacts import ArtifactWriter, write_predictions
from report.checks import sample_rank
from report.data.batches import iter_batches
from report.data.records import Record, Skipped, UnreadableImage
from report.errors import OptionError, UserError
from report.streaming import Explainer, Summary, preprocess

RECORDS_SCHEMA = ("position long, image_id string, source string, label int, "
                  "source_label string, dataset string, mask string, boxes string")
PART_SCHEMA = "part int, payload binary"
PANDAS_WARNING = "ignore:PySpark does not yet fully support pandas:FutureWarning"
PYSPARK_MISSING = ("backend=spark needs pyspark, the project's `spark` extra: pip install "
                   "'cxr-gradcam-report[spark]' (under mlflow run: --env-manager conda or local)")
JAVA_MISSING = ("backend=spark needs Java 17 or later, and none was found; install it "
                "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME")

# The same warning in this process, from mapInPandas (see `session`).
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                        category=FutureWarning)


@dataclass(frozen=True)
class Destination:
    """Where tasks publish their files: the MLflow run's artifact store when there is a run
    (`MlflowClient.log_artifacts` works for every artifact repository), else a folder every
    executor can write (this machine's with a local master, a shared file system on a
    cluster)."""

    folder: str
    run_id: str | None = None
    tracking_uri: str | None = None

    def publish(self, staging: Path) -> None:
        if self.run_id is None:
            shutil.copytree(staging, self.folder, dirs_exist_ok=True)
            return
        from mlflow import MlflowClient

        MlflowClient(self.tracking_uri).log_artifacts(self.run_id, str(staging))


@dataclass(frozen=True)
class Job:
    """What every task needs, shipped once per task (small: the source without its records,
    the model as a file name under SparkFiles)."""

    settings: Mapping
    metadata: object  # model.ModelMetadata
    model_file: str
    unsafe_deserialization: bool
    source: object  # an ImageSource emptied of its records
    destination: Destination
    duplicates: Mapping[int, str] = field(default_factory=dict)
    scale: float | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PartResult:
    """One part's summary, skips and predictions.csv lines, each with its record position;
    `merge` is associative and independent of order, so the report does not depend on the
    order in which parts finish."""

    summary: Summary
    skipped: list[tuple[int, Skipped]]
    rows: list[tuple[int, str]]
    skipped_rows: list[tuple[int, str]]
    notes: list[tuple[int, str]]

    def merge(self, other: PartResult) -> PartResult:
        return PartResult(self.summary.merge(other.summary), self.skipped + other.skipped,
                          self.rows + other.rows, self.skipped_rows + other.skipped_rows,
                          self.notes + other.notes)


@dataclass(frozen=True)
class Explained:
    """What the Spark backend hands back to core.run_audit."""

    summary: Summary
    skipped: list[Skipped]
    backend: str  # the Settings table's wording


# --- the driver ----------------------------------------------------------------------------


def explain(loaded, source, records: list[Record], values: Mapping, engine,
            artifacts_dir: Path, run_id: str | None = None) -> Explained:
    """Explain `records` on Spark into `artifacts_dir` (predictions.csv; overlays and map
    shards too when there is no run) or the run `run_id`'s artifact store."""
    spark, started_here = session(values["spark_master"])
    try:
        with tempfile.TemporaryDirectory(prefix="cxr-spark-") as scratch:
            model_file = _ship_model(spark, loaded.model, Path(scratch))
            parts = part_ranges(len(records), values["batch_size"],
                                values["partitions"] or spark.sparkContext.defaultParallelism)
            frame = records_frame(spark, records, parts)
            job = Job(settings=dict(values), metadata=loaded.metadata, model_file=model_file,
                      unsafe_deserialization=values["unsafe_deserialization"],
                      source=_shippable(source), environment=_mlflow_environment(),
                      destination=Destination(str(artifacts_dir), run_id, _tracking_uri(run_id)))
            with _task_errors():
                if not source.keeps_duplicates:
                    job = replace(job, duplicates=find_duplicates(frame, job))
                if values["normalize"] == "global":
                    job = replace(job, scale=largest_map(frame, job))
                merged = merge_parts(frame.mapInPandas(partial(explain_part, job),
                                                       PART_SCHEMA))
            master = spark.sparkContext.master
    finally:
        if started_here:
            spark.stop()
    write_predictions(Path(artifacts_dir) / "predictions.csv", loaded.metadata.class_names,
                      [line for _, line in sorted(merged.rows)]
                      + [line for _, line in sorted(merged.skipped_rows)])
    for _, note in sorted(merged.notes):
        if note not in source.notes:
            source.notes.append(note)
    add_sample(merged.summary, source, records, loaded.metadata, engine, values["batch_size"])
    noun = "partition" if len(parts) == 1 else "partitions"
    return Explained(merged.summary, [item for _, item in sorted(merged.skipped,
                                                                 key=lambda pair: pair[0])],
                     f"Apache Spark ({master}, {len(parts)} {noun})")


def session(master: str):
    """The active Spark session (spark-submit, Databricks) as it is, else a new one at
    `master`; and whether it was started here (and so is stopped here)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise UserError(PYSPARK_MISSING) from error
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    check_java()
    # Executors on this machine run this interpreter, so they import what the driver does.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # PySpark 4.3 warns in every worker that pandas 3 is "not yet fully supported"; the
    # columns used here (numbers, strings, bytes) are, and the tests compare with the local
    # backend. The workers inherit this from the JVM, which inherits it from here.
    os.environ.setdefault("PYTHONWARNINGS", PANDAS_WARNING)
    try:
        spark = (SparkSession.builder.master(master).appName("cxr-gradcam-report")
                 .config("spark.log.level", "ERROR")
                 .config("spark.ui.showConsoleProgress", "true")
                 .getOrCreate())
    except Exception as error:  # noqa: BLE001 - the JVM's reason, in one line
        raise OptionError("spark_master", f"could not start Spark at '{master}': "
                          f"{_first_line(error)}") from error
    return spark, True


def check_java() -> None:
    """A one-line UserError when no Java 17+ is there to start Spark's JVM."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise UserError(JAVA_MISSING)
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True,
                               timeout=30, check=False).stderr
    except OSError as error:
        raise UserError(JAVA_MISSING) from error
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    major = int(found.group(1)) if found else 0
    if major == 1 and found.group(2):  # "1.8.0": Java 8
        major = int(found.group(2))
    if major < 17:
        raise UserError(f"backend=spark needs Java 17 or later; {java} is Java {major or '?'}: "
                        "install openjdk-17-jre-headless or point JAVA_HOME at a newer one")


def part_ranges(count: int, batch_size: int, wanted: int) -> list[range]:
    """Record positions in `wanted` contiguous parts (fewer when there are fewer batches),
    each a whole number of batches: with no skipped image, a part's batches are the very
    batches one pass would make, so predictions do not depend on the partitioning."""
    batches = math.ceil(count / batch_size)
    parts = max(1, min(wanted, batches))
    edges = [round(k * batches / parts) * batch_size for k in range(parts + 1)]
    return [range(start, min(end, count)) for start, end in zip(edges, edges[1:], strict=False)]


def records_frame(spark, records: list[Record], parts: list[range]):
    """The records as a DataFrame with exactly one partition per part, in record order."""
    rows = [[_row(position, records[position]) for position in part] for part in parts]
    # One list per slice: parallelize keeps each part whole in its own partition.
    rdd = spark.sparkContext.parallelize(rows, len(rows)).flatMap(lambda part: part)
    return spark.createDataFrame(rdd, RECORDS_SCHEMA)


def find_duplicates(frame, job: Job) -> dict[int, str]:
    """Position -> the source it repeats, for records whose file has the bytes of a file at
    an earlier position (what one local pass skips as "duplicate of ..."). Only files whose
    size another file shares are read and hashed, and only the duplicates reach the
    driver."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sizes = frame.mapInPandas(partial(file_size_part, job), f"{RECORDS_SCHEMA}, size long")
    same_size = (sizes.where(F.col("size").isNotNull())
                 .withColumn("sharing", F.count("*").over(Window.partitionBy("size")))
                 .where(F.col("sharing") > 1).drop("size", "sharing"))
    digests = same_size.mapInPandas(partial(digest_part, job),
                                    "position long, source string, digest string")
    earliest = Window.partitionBy("digest").orderBy("position")
    repeats = (digests.where(F.col("digest").isNotNull())
               .withColumn("first", F.first("source").over(earliest))
               .where(F.col("source") != F.col("first")))
    return {row.position: row.first for row in repeats.select("position", "first").collect()}


def merge_parts(results) -> PartResult:
    """Every part's result, merged one at a time: the parts run in parallel and are kept by
    the executors (memory, else disk), then come to the driver one by one, so the driver
    holds one part's result beside the merged summary, never all of them."""
    from pyspark import StorageLevel

    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        results.count()  # runs every task at once
        merged = None
        for row in results.toLocalIterator():
            part = pickle.loads(row.payload)
            merged = part if merged is None else merged.merge(part)
        return merged
    finally:
        results.unpersist()


def largest_map(frame, job: Job) -> float:
    """The shared scale of normalize=global: the largest map over every part."""
    from pyspark.sql import functions as F

    largest = (frame.mapInPandas(partial(largest_map_part, job), "largest double")
               .agg(F.max("largest")).first()[0])
    return float(largest or 0.0)


def add_sample(summary: Summary, source, records, metadata, engine, batch_size: int) -> None:
    """The trust checks' sample (the explained images of smallest `checks.sample_rank`, as
    one local pass keeps it), decoded and explained here: the tasks do not ship their
    candidates to the driver."""
    quality = summary.quality
    if not quality.plan.explanation_metrics:
        return
    explained = sorted(position for position, _ in summary.explained_records)
    chosen = sorted(sorted(explained, key=sample_rank)[: quality.plan.sample_images])
    sample = [records[position] for position in chosen]
    for batch in iter_batches(source, sample, metadata.image_size, batch_size, [],
                              duplicates={}):
        images = preprocess(batch.pixels, metadata)
        explanation = engine.explain(images)
        quality.keep_sample([chosen[i] for i in batch.indices],
                            [record.label for record in batch.records],
                            explanation.class_index, images, explanation.maps,
                            batch.images, probabilities=explanation.probabilities)


def _ship_model(spark, model, folder: Path) -> str:
    """Save the model once and hand it to Spark's file server; tasks load it from there, so
    it is never pickled with a task. A new name per audit: Spark refuses a second file of
    the same name with other contents."""
    name = f"cxr-model-{uuid.uuid4().hex[:12]}.keras"
    model.save(folder / name)
    spark.sparkContext.addFile(str(folder / name))
    return name


def _shippable(source):
    """The source without its record lists: the records travel in the DataFrame."""
    shipped = copy.copy(source)
    shipped.records, shipped.skipped, shipped.notes = [], [], []
    return shipped


def _tracking_uri(run_id: str | None) -> str | None:
    if run_id is None:
        return None
    import mlflow

    return mlflow.get_tracking_uri()


def _mlflow_environment() -> dict[str, str]:
    """The driver's MLflow credentials and settings, for tasks that write to the run (an
    executor on this machine inherits them anyway; one on a cluster may not)."""
    return {name: value for name, value in os.environ.items() if name.startswith("MLFLOW_")}


@contextmanager
def _task_errors():
    """A task that failed on a user's mistake (a UserError raised on an executor, after
    Spark's retries) is that one-line error here, not a JVM stack trace."""
    try:
        yield
    except Exception as error:
        found = re.search(r"report\.errors\.(?:UserError|OptionError): (.+)", str(error))
        if found is None:
            raise
        raise UserError(found.group(1).strip()) from error


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _row(position: int, record: Record) -> tuple:
    boxes = None if record.boxes is None else json.dumps([list(box) for box in record.boxes])
    return (position, record.image_id, record.source, record.label, record.source_label,
            record.dataset, record.mask, boxes)


# --- the tasks (run on executors) ----------------------------------------------------------


_ENGINES: dict[tuple, object] = {}  # per Python worker: Spark reuses workers across tasks


def explain_part(job: Job, frames: Iterator) -> Iterator:
    """mapInPandas: explain one part, publish its files, yield its pickled PartResult."""
    import pandas as pd
    from pyspark import TaskContext

    positions, records = _records_of(frames)
    if not records:
        return
    part = TaskContext.get().partitionId()
    explainer = Explainer(_task_settings(job), job.metadata, _engine(job), scale=job.scale,
                          keep_sample=False, progress=False)
    metadata, engine = job.metadata, explainer.engine
    with tempfile.TemporaryDirectory(prefix=f"cxr-part-{part:05d}-") as staging:
        # Flags are worded as the images are scored, in the report's language.
        with ArtifactWriter(Path(staging), metadata.class_names, engine.target.name,
                            metadata.image_size, explainer.overlay_suffix,
                            cams_file=f"part-{part:05d}.npz", keep_rows=True) as writer, \
                i18n.use(job.settings.get("language", "en")):
            skipped = explainer.run(job.source, records, writer, positions, job.duplicates)
        job.destination.publish(Path(staging))
    where = {record.image_id: position for position, record in zip(positions, records,
                                                                    strict=True)}
    result = PartResult(
        summary=explainer.summary,
        skipped=[(where[item.image_id], item) for item in skipped],
        rows=[(where[image_id], line) for image_id, line in writer.rows],
        skipped_rows=[(where[image_id], line) for image_id, line in writer.skipped_rows],
        notes=[(positions[0], note) for note in job.source.notes],
    )
    yield pd.DataFrame({"part": [part], "payload": [pickle.dumps(result)]})


def file_size_part(job: Job, frames: Iterator) -> Iterator:
    """mapInPandas: the records with their file sizes (None: unreadable, skipped later)."""
    import pandas as pd

    for frame in frames:
        sizes = [job.source.file_size(_record(row)) for row in frame.itertuples(index=False)]
        yield frame.assign(size=pd.array(sizes, dtype="Int64"))


def digest_part(job: Job, frames: Iterator) -> Iterator:
    """mapInPandas: each record's file digest (None when the file cannot be read: the
    explaining pass skips it with its reason)."""
    import pandas as pd

    for frame in frames:
        digests = []
        for row in frame.itertuples(index=False):
            try:
                digests.append(job.source.digest(_record(row)))
            except UnreadableImage:
                digests.append(None)
        yield pd.DataFrame({"position": frame["position"], "source": frame["source"],
                            "digest": digests})


def largest_map_part(job: Job, frames: Iterator) -> Iterator:
    import pandas as pd

    positions, records = _records_of(frames)
    if not records:
        return
    explainer = Explainer(_task_settings(job), job.metadata, _engine(job), keep_sample=False,
                          progress=False)
    largest = explainer.largest_map(job.source, records, positions, job.duplicates)
    yield pd.DataFrame({"largest": [largest]})


def _records_of(frames: Iterator) -> tuple[list[int], list[Record]]:
    import pandas as pd

    chunks = list(frames)
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    rows = list(frame.itertuples(index=False))
    return [int(row.position) for row in rows], [_record(row) for row in rows]


def _record(row) -> Record:
    boxes = None if _missing(row.boxes) else tuple(tuple(box) for box in json.loads(row.boxes))
    return Record(image_id=row.image_id, source=row.source,
                  label=None if _missing(row.label) else int(row.label),
                  source_label=None if _missing(row.source_label) else row.source_label,
                  dataset=row.dataset or "", mask=None if _missing(row.mask) else row.mask,
                  boxes=boxes)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _task_settings(job: Job) -> dict:
    """The settings, with as many worker threads as the task has cores (not the machine's:
    other tasks share it)."""
    from pyspark import TaskContext

    cores = TaskContext.get().cpus() or 1
    return {**job.settings, "workers": job.settings["workers"] or cores}


def _engine(job: Job):
    """This worker's engine for the job's model, built on the first task that needs it."""
    key = (job.model_file, job.settings["method"], job.settings["layer"],
           job.settings["score"])
    if key not in _ENGINES:
        _ENGINES.clear()  # one model at a time per worker
        os.environ.update(job.environment)
        _share_the_task_cores()
        import keras
        from pyspark import SparkFiles

        from report.cam.engine import make_engine

        model = keras.saving.load_model(SparkFiles.get(job.model_file), compile=False,
                                        safe_mode=not job.unsafe_deserialization)
        metadata = job.metadata
        _ENGINES[key] = make_engine(job.settings["method"], model,
                                    metadata.layer_for(job.settings["layer"]),
                                    job.settings["score"],
                                    (*metadata.image_size, metadata.channels))
    return _ENGINES[key]


def _share_the_task_cores() -> None:
    """TensorFlow on as many threads as the task has cores: every core of the executor
    already runs a task of its own. Only possible before TensorFlow's runtime starts."""
    import tensorflow as tf
    from pyspark import TaskContext

    cores = TaskContext.get().cpus() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # a runtime already running keeps its pools
