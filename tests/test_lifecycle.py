"""The life of a run: a signal ends it as FAILED with its partial work, folders that cannot be
written are one-line errors, a failed run leaves no local report, and the run description
shows data-derived text literally."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from report import cli, sinks
from report.render import ReportContext

MODEL = "models:/tiny-cxr@champion"


# --- signals --------------------------------------------------------------------------------


def _started_work(tmpdir: Path) -> bool:
    """An overlay in the staging folder: the model is loaded, the run exists, images flow."""
    try:
        return any(tmpdir.rglob("*.png"))
    except FileNotFoundError:  # a temporary folder went away while it was listed
        return False


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_as_failed_with_its_partial_work_and_no_temporary_folder(
    registered_store, tmp_path, sent
):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    experiment = f"signal-{sent.name}"
    env = {**registered_store, "TMPDIR": str(tmpdir), "MLFLOW_EXPERIMENT_NAME": experiment}
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while polling
    with stderr.open("w") as captured:
        process = subprocess.Popen(
            [sys.executable, "-m", "report", "explain", "--model-uri", MODEL,
             "--data", "synthetic:20000", "--batch-size", "2", "--quality", "off",
             "--output-dir", str(tmp_path / "reports")],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=captured,
        )
    give_up = time.monotonic() + 300  # a bound against a hang, not a timing check
    try:
        while not _started_work(tmpdir):
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < give_up, "no overlay was written in 300 s"
            time.sleep(0.2)
        process.send_signal(sent)
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    err = stderr.read_text()
    assert process.returncode == 128 + sent, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and sent.name in last
    client = MlflowClient(registered_store["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == f"Terminated: {sent.name}"
    assert "predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list(tmpdir.iterdir()) == []
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


@pytest.mark.parametrize("command", ["train", "compare", "methods"])
def test_a_signal_during_any_command_fails_its_run_with_the_error_tag(
    store_here, tmp_path, capsys, monkeypatch, command
):
    """The real handler, in this process: the work sends itself SIGTERM (only once a handler
    other than the default one is there, so a missing handler fails the test, not pytest)."""
    from report import comparison, methods, tracking

    def interrupted(*args, **kwargs):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "no handler"
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the signal did not stop the work")

    module, name = {"train": (tracking, "training_callback"),
                    "compare": (comparison, "compare"),
                    "methods": (methods, "rank_methods")}[command]
    monkeypatch.setattr(module, name, interrupted)
    experiment = f"signal-in-process-{command}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    args = (["train", "--data", "synthetic:15", "--epochs", "1", "--image-size", "32",
             "--model-name", "never-registered"] if command == "train"
            else _args(command, str(tmp_path / "reports")))
    assert cli.main(args) == 128 + signal.SIGTERM
    assert "SIGTERM" in _one_line_error(capsys)
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "Terminated: SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back after the command
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_signal_handlers_are_installed_only_in_the_main_thread_and_put_back():
    import threading

    from report import lifecycle

    before = signal.getsignal(signal.SIGTERM)
    with lifecycle.signals_raise():
        assert signal.getsignal(signal.SIGTERM) is not before
        seen = []
        worker = threading.Thread(target=lambda: seen.append(_enter_in_thread(lifecycle)))
        worker.start()
        worker.join()
        assert seen == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def _enter_in_thread(lifecycle) -> bool:
    with lifecycle.signals_raise():  # no ValueError: it leaves the handlers alone
        return True


def test_a_command_in_process_removes_its_temporary_files(monkeypatch, tmp_path):
    """MLflow's model downloads and TensorFlow's generated modules would stay in TMPDIR."""
    import tempfile

    from report import lifecycle

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with lifecycle.private_tempdir():
        Path(tempfile.mkdtemp()).joinpath("model").write_text("weights")
        tempfile.NamedTemporaryFile(delete=False).close()
    assert list(tmp_path.iterdir()) == []
    assert tempfile.gettempdir() == str(tmp_path)


# --- folders that cannot be written ---------------------------------------------------------


@pytest.fixture
def store_here(registered_store, monkeypatch, tmp_path):
    """The session's store with the tiny model, for in-process CLI calls."""
    for name, value in registered_store.items():
        if name.startswith("MLFLOW_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registered_store["MLFLOW_TRACKING_URI"])
    yield registered_store
    mlflow.set_tracking_uri(previous)


def _args(command: str, output_dir: str) -> list[str]:
    data = ["--data", "synthetic:15", "--output-dir", output_dir]
    if command == "compare":
        return ["compare", "--baseline", MODEL, "--candidate", "models:/tiny-cxr/1", *data]
    extra = ["--quality", "off"] if command == "explain" else ["--sample", "4"]
    return [command, "--model-uri", MODEL, *data, *extra]


COMMANDS = ["explain", "compare", "methods"]


def _one_line_error(capsys) -> str:
    """The error line, the last on stderr (progress bars come before it), and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["a file", "under a file", "a long name"])
def test_an_output_dir_that_cannot_be_written_is_a_one_line_error(
    store_here, tmp_path, capsys, command, where
):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    output_dir = {"a file": blocker, "under a file": blocker / "reports",
                  "a long name": tmp_path / ("r" * 300)}[where]
    assert cli.main(_args(command, str(output_dir))) == 2
    assert "--output-dir" in _one_line_error(capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_dir_that_refuses_new_files_is_refused_before_the_work(
    store_here, tmp_path, capsys, monkeypatch, command
):
    """A folder that exists but is not ours to write (root ignores permissions, so the
    refusal is simulated where files are created in it)."""
    import tempfile

    reports = tmp_path / "reports"
    reports.mkdir()
    create = tempfile.TemporaryFile

    def refuse_in_reports(*args, **kwargs):
        if kwargs.get("dir") is not None and Path(kwargs["dir"]) == reports:
            raise PermissionError(errno.EACCES, "Permission denied", str(reports))
        return create(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse_in_reports)
    assert cli.main(_args(command, str(reports))) == 2
    assert _one_line_error(capsys).startswith("error: --output-dir: cannot write in")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_artifact_store_that_cannot_be_written_is_a_one_line_error_before_the_work(
    store_here, tmp_path, capsys, monkeypatch, command
):
    from report import comparison, core, methods

    blocker = tmp_path / "artifact-root"
    blocker.write_text("a file where the artifact root should be")
    experiment = f"unwritable-{command}"
    mlflow.create_experiment(experiment, artifact_location=(blocker / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)

    def too_late(*args, **kwargs):
        raise AssertionError("the work started before the artifact store was checked")

    for module, name in ((core, "run_audit"), (comparison, "compare"),
                         (methods, "rank_methods")):
        monkeypatch.setattr(module, name, too_late)
    assert cli.main(_args(command, str(tmp_path / "reports"))) == 2
    assert "artifact" in _one_line_error(capsys)
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FAILED" and "error" in run.data.tags


# --- OSErrors from the user's paths reach the command line as one line ----------------------


@pytest.mark.parametrize(("command", "code"), [("explain", errno.ENOSPC),
                                               ("compare", errno.EACCES),
                                               ("methods", errno.ENAMETOOLONG)])
def test_a_disk_error_while_writing_the_report_is_a_one_line_error(
    store_here, tmp_path, capsys, monkeypatch, command, code
):
    from report import methods, render

    def refused(html, folder, name):
        raise OSError(code, os.strerror(code), str(folder / f"{name}\n.pdf"))

    monkeypatch.setattr(render, "write_html_and_pdf", refused)
    monkeypatch.setattr(methods, "METHODS", ("gradcam",))  # the ranking is not the point
    assert cli.main(_args(command, str(tmp_path / "reports"))) == 2
    line = _one_line_error(capsys)
    assert line.endswith(os.strerror(code) + "; " + cli.PATH_PROBLEMS[code])
    assert "\\n.pdf" in line  # the newline in the name shown escaped, on the one line
    assert list((tmp_path / "reports").iterdir()) == []


def test_an_os_error_that_is_a_bug_keeps_its_traceback(store_here, tmp_path, monkeypatch):
    from report import methods, render

    def bug(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "template.html")

    monkeypatch.setattr(render, "write_html_and_pdf", bug)
    monkeypatch.setattr(methods, "METHODS", ("gradcam",))
    with pytest.raises(FileNotFoundError):
        cli.main(_args("methods", str(tmp_path / "reports")))


# --- a run that fails after rendering -------------------------------------------------------


def test_a_run_that_fails_after_rendering_leaves_no_local_report(
    tracking_store, tmp_path, monkeypatch
):
    from report import pipeline
    from tests.test_pipeline import register, small_model

    register(small_model("softmax"), "late-failure")

    def store_refused(*args, **kwargs):
        raise RuntimeError("store refused the report")

    monkeypatch.setattr(sinks, "log_audit", store_refused)
    reports = tmp_path / "reports"
    with pytest.raises(RuntimeError, match="store refused"):
        pipeline.explain(dict(model_uri="models:/late-failure@champion", data="synthetic:15",
                              quality="off", output_dir=str(reports)))
    assert list(reports.iterdir()) == []
    run = mlflow.search_runs(experiment_names=["tests"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert "predictions.csv" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}


# --- the run description --------------------------------------------------------------------

HOSTILE = [
    "data\n# Heading\n- item",
    "data\r\n===",
    "*bold* and _em_",
    "[x](https://example.com) ![i](y)",
    "<script>alert(1)</script>",
    "`code` and ```fence```",
    "| a | b |",
    "line\u2028separator\x85next",
    "~~struck~~ and a\\backslash",
]


def _note_context(text: str) -> ReportContext:
    return ReportContext(
        model_name=f"model {text}", model_version="1", model_alias=None, model_source="x",
        data_source=text, data_fingerprint="f", run_id="r", created="now",
        settings={"Method": "Grad-CAM", "Target layer": "features", "Class score": "logit",
                  "Normalisation": "image"},
        assumptions=[], class_names=[text, "B"], n_images=2, accuracy=0.5,
        per_class=[{"class": name, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
                   for name in (text, "B")],
        confusion=np.eye(2, dtype=int), grids=[], skipped=[],
    )


@pytest.mark.parametrize("text", HOSTILE)
def test_data_derived_text_shows_literally_on_one_line_of_the_run_description(text):
    from markdown_it import MarkdownIt

    escaped = sinks._markdown_text(text)
    assert "\n" not in escaped and "\r" not in escaped
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough")
    html = rendered.render(f"Report on {escaped}.")
    assert html.count("<p>") == 1
    for tag in ("<h1", "<h2", "<li", "<em", "<strong", "<a ", "<img", "<script", "<code",
                "<table", "<s>", "<br"):
        assert tag not in html, html
    note = sinks.run_note(_note_context(text))
    body = rendered.render(note)
    assert body.count("<h1") == body.count("<h2") == 0
    assert "<script" not in body and "<a " not in body and "<img" not in body
    assert body.count("<tr>") == 3  # the header and the two classes: no row injected


def test_escaped_text_still_reads_as_the_original():
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(sinks._markdown_text("a*b_c [d] #e <f> `g`"))
    assert html == "<p>a*b_c [d] #e &lt;f&gt; `g`</p>\n"
    shown = MarkdownIt("commonmark").render(sinks._markdown_text("one\ntwo"))
    assert shown == "<p>one\\ntwo</p>\n"



def test_a_signal_during_the_sample_checks_drops_the_checks_still_queued(monkeypatch):
    """SIGTERM reaches the main thread (it draws figures while the sample checks run in a
    worker): the checks still queued must not run first, since a scheduler kills a process
    that lingers."""
    import report
    from report import checks, findings
    from report.lifecycle import Terminated
    from tests.conftest import synthetic_films, tiny_classifier

    ran = []

    def slow_effect(self, engine, batch_size):
        time.sleep(1.0)  # the main thread is stopped while this check runs
        return None, []

    def sanity(self, engine):
        ran.append("sanity")

    def signal_arrives(*arguments):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(checks.QualityAccumulator, "check_shortcut_effect", slow_effect)
    monkeypatch.setattr(checks.QualityAccumulator, "check_sanity", sanity)
    monkeypatch.setattr(findings, "classification_figures", signal_arrives)
    with pytest.raises(Terminated):
        report.audit(tiny_classifier(32, "tiny_signal"), synthetic_films(8, 32),
                     class_names=["COVID-19", "NORMAL", "OTHER_INFECTION"], quality="fast",
                     output_dir=None)
    assert ran == []
