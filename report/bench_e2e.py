"""`python -m report bench --end-to-end DATA`: the whole report pass against classifying alone.

On the same files, each in its own process of one process tree (so each has its own peak
RSS, and one's caches do not warm another's):

1. `predict`: decode every image (the product's decoder, one after another) and call
   `model.predict` on batches: what "just classifying" costs;
2. `tutorial`: the tutorial's per-image loop (predict, a new gradient model, a tape) on a
   sample, as images per second;
3. `stream`: the full streaming pass of `report.audit` (decode, engine, overlays, artifact
   writes) with `quality=off`; `stream-fast` the same with `quality=fast`, whose extra cost
   is the difference of the two whole `audit()` calls;
4. `spark` (with `--spark-master`): the same pass as `stream` with `backend=spark`, timed on
   a second audit in one Spark session, after a small first one has started the JVM and the
   Python workers (what a cluster that is already up costs). Its peak RSS is the driver's
   Python process: the executors and the JVM are processes of their own. `spark-fast` is
   the same with `quality=fast`, run only when asked for (`--stages`).

It prints the ratios that the README's goals are stated in, and peak RSS per stage. DATA is
any `--data` spec, or `films:COUNTxSIZE` for greyscale PNG films generated once into
`reports/bench-data/` (not timed): `films:600x237`, `films:200x1024`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from report.errors import OptionError

STAGES = ("predict", "tutorial", "stream", "stream-fast")
SPARK_STAGES = ("spark", "spark-fast")
FILMS_ROOT = Path("reports") / "bench-data"


def run_end_to_end(data: str, model_uri: str, batch_size: int, sample: int,
                   json_path: Path | None, spark_master: str | None = None,
                   only: list[str] | None = None) -> dict:
    chosen = only or [*STAGES, *(["spark"] if spark_master else [])]
    unknown = sorted(set(chosen) - {*STAGES, *SPARK_STAGES})
    if unknown:
        raise OptionError("--stages", f"unknown stage {unknown[0]!r}; choose from "
                          f"{', '.join(STAGES + SPARK_STAGES)}")
    if not spark_master and set(chosen) & set(SPARK_STAGES):
        raise OptionError("--spark-master", "the spark stages need a master, e.g. local[2]")
    spec = films_folder(data) if data.startswith("films:") else data
    arguments = {"data": spec, "model_uri": model_uri, "batch_size": batch_size,
                 "sample": sample, "spark_master": spark_master}
    stages = {stage: _run_stage(stage, arguments) for stage in chosen}
    result = {"data": data, "stages": stages, "ratios": _ratios(stages)}
    _print(result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        print(f"\nwritten {json_path}")
    return result


def films_folder(data: str) -> str:
    """`films:COUNTxSIZE` -> a folder per class of greyscale PNG films, made once."""
    from PIL import Image

    from report.data import synthetic

    count, size = (int(part) for part in data.removeprefix("films:").split("x"))
    folder = FILMS_ROOT / f"films-{count}x{size}"
    done = folder / ".complete"
    if done.is_file():
        return str(folder.resolve())
    print(f"generating {count} greyscale {size}x{size} PNG films in {folder} (once)")
    for index in range(count):
        case = synthetic.generate(index, size=size)
        class_folder = folder / synthetic.CLASS_NAMES[case.label]
        class_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.image[..., 0]).save(class_folder / f"film-{index:05d}.png")
    done.touch()
    return str(folder.resolve())


def _run_stage(stage: str, arguments: dict) -> dict:
    print(f"-- {stage} ...", flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "report.bench_e2e", stage, json.dumps(arguments)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench stage {stage} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _ratios(stages: dict) -> dict:
    """The ratios whose stages ran."""
    ratios = {}
    if "stream" not in stages:
        return ratios
    stream = stages["stream"]["seconds"]
    if "predict" in stages:
        ratios["stream / (decode + predict)"] = stream / stages["predict"]["seconds"]
    if "tutorial" in stages:
        per_image = stages["tutorial"]["seconds"] / stages["tutorial"]["images"]
        ratios["tutorial / stream (end to end)"] = per_image * stages["stream"]["images"] / stream
    if "stream-fast" in stages:
        ratios["quality=fast extra / stream"] = (stages["stream-fast"]["wall_seconds"]
                                                 - stages["stream"]["wall_seconds"]) / stream
    if "spark" in stages:
        ratios["spark / stream (seconds)"] = stages["spark"]["seconds"] / stream
    return ratios


def _print(result: dict) -> None:
    print(f"\nEnd to end on {result['data']}")
    print(f"{'stage':<14}{'images':>8}{'seconds':>10}{'img/s':>9}{'peak RSS':>11}")
    for stage, numbers in result["stages"].items():
        rate = numbers["images"] / numbers["seconds"]
        print(f"{stage:<14}{numbers['images']:>8}{numbers['seconds']:>10.2f}{rate:>9.1f}"
              f"{numbers['peak_rss_mb']:>8.0f} MB")
    for name, value in result["ratios"].items():
        print(f"{name:<34}{value:>7.2f}x")


# --- the stages, each run in a process of its own --------------------------------------


def _stage_main(stage: str, arguments: dict) -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from report.bench import _bench_model
    from report.cam.engine import share_cores_with_workers

    share_cores_with_workers()
    model, metadata, _ = _bench_model(arguments["model_uri"])
    run = {"predict": _decode_and_predict, "tutorial": _tutorial_sample,
           "stream": _streaming_pass, "stream-fast": _streaming_pass,
           "spark": _spark_pass, "spark-fast": _spark_pass}[stage]
    started = time.perf_counter()
    images, seconds = run(model, metadata, arguments,
                          quality="fast" if stage.endswith("-fast") else "off")
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"images": images, "seconds": seconds, "wall_seconds": wall,
                      "peak_rss_mb": peak}))


def _records(metadata, data: str):
    from report.data import open_source

    source = open_source(data, metadata.class_names, "all")
    return source, source.records


def _decode_and_predict(model, metadata, arguments, quality):
    from report.data.batches import iter_batches
    from report.streaming import preprocess

    source, records = _records(metadata, arguments["data"])
    model.predict(np.zeros((1, *metadata.image_size, metadata.channels), np.float32),
                  verbose=0)  # build predict's function before the clock starts
    started = time.perf_counter()
    n = 0
    for batch in iter_batches(source, records, metadata.image_size, arguments["batch_size"],
                              []):
        model.predict(preprocess(batch.pixels, metadata), verbose=0)
        n += len(batch.records)
    return n, time.perf_counter() - started


def _tutorial_sample(model, metadata, arguments, quality):
    from report.bench import _tutorial_way
    from report.data.batches import iter_batches
    from report.streaming import preprocess

    source, records = _records(metadata, arguments["data"])
    sample = records[: arguments["sample"]]
    started = time.perf_counter()
    n = 0
    for batch in iter_batches(source, sample, metadata.image_size, 1, []):
        _tutorial_way(model, preprocess(batch.pixels, metadata))()
        n += 1
    return n, time.perf_counter() - started


def _streaming_pass(model, metadata, arguments, quality):
    import report

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as folder:
        audit = report.audit(model, arguments["data"], class_names=list(metadata.class_names),
                             split="all", quality=quality, batch_size=arguments["batch_size"],
                             output_dir=folder)
    # The streaming pass alone; the whole call (engine set-up, checks, figures) is `wall`.
    return int(audit.metrics["images_explained"]), audit.metrics["time.explain_seconds"]


def _spark_pass(model, metadata, arguments, quality):
    import report
    from report import spark

    session, _ = spark.session(arguments["spark_master"])  # active: the audits keep it
    settings = {"class_names": list(metadata.class_names), "split": "all", "quality": quality,
                "batch_size": arguments["batch_size"], "backend": "spark"}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as folder:
        cores = session.sparkContext.defaultParallelism
        # Start the executors' Python workers (and TensorFlow in them) before the clock.
        report.audit(model, arguments["data"], output_dir=folder,
                     limit=cores * arguments["batch_size"], **settings)
        audit = report.audit(model, arguments["data"], output_dir=folder, **settings)
    session.stop()
    return int(audit.metrics["images_explained"]), audit.metrics["time.explain_seconds"]


if __name__ == "__main__":
    _stage_main(sys.argv[1], json.loads(sys.argv[2]))
