"""The project installs as a package: a non-editable `pip install` of a clone works anywhere.

The slow test installs a copy of the working tree, as a clone of it would look, into a fresh
venv, then uses it from an unrelated folder with no PYTHONPATH and no MLflow settings: the
Python API writes its report where asked and starts no MLflow run, and the CLI writes under
--output-dir, never inside site-packages.

Why a copy of `git ls-files --cached --others --exclude-standard` and not `git clone`: a clone
of HEAD would leave out the uncommitted work under test; installing straight from the project
root would see its ignored leftovers (build/, *.egg-info, mlflow.db, reports/), and a stale
build/lib holding the templates could hide package data that pyproject.toml no longer ships.
The copy holds exactly what a clone plus the uncommitted work holds, nothing ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pypdf import PdfReader

from report.render import DISCLAIMER
from tests.conftest import PROJECT_ROOT

CLASSES = ["COVID-19", "NORMAL", "OTHER_INFECTION"]
SIZE = 32

AUDIT_SCRIPT = f"""
import sys

import keras
import numpy as np

import report

inputs = keras.Input(({SIZE}, {SIZE}, 3))
x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(3, activation="softmax")(x)
model = keras.Model(inputs, outputs)  # untrained: the report is about the mechanics here

rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(12, {SIZE}, {SIZE}, 3), dtype=np.uint8)
labels = rng.integers(0, 3, size=12)
result = report.audit(model, (images, labels), class_names={CLASSES!r}, quality="off")
result.to_pdf("out/report.pdf")
result.to_html("out/report.html")
print(report.__file__)
"""

SAVE_MODEL_SCRIPT = f"""
import sys

import keras
import mlflow

inputs = keras.Input(({SIZE}, {SIZE}, 3))
x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(3, activation="softmax")(x)
model = keras.Model(inputs, outputs)
mlflow.keras.save_model(model, sys.argv[1], metadata={{
    "class_names": {CLASSES!r},
    "preprocessing": {{"image_size": [{SIZE}, {SIZE}], "color": "rgb", "scale": 1 / 255}},
}})
"""


# --- fast: what pyproject.toml ships ------------------------------------------------------


def _setuptools() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_for_setuptools():
    on_disk = {
        ".".join(init.parent.relative_to(PROJECT_ROOT).parts)
        for init in (PROJECT_ROOT / "report").rglob("__init__.py")
    }
    assert set(_setuptools()["packages"]) == on_disk | {"report.templates"}


def test_templates_ship_from_the_top_level_folder():
    setuptools = _setuptools()
    assert setuptools["package-dir"]["report.templates"] == "templates"
    patterns = setuptools["package-data"]["report.templates"]
    shipped = {p.name for pattern in patterns for p in (PROJECT_ROOT / "templates").glob(pattern)}
    assert {"report.html.j2", "report.css"} <= shipped
    assert shipped == {p.name for p in (PROJECT_ROOT / "templates").iterdir() if p.is_file()}


def test_the_evaluator_plugin_is_registered():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["mlflow.model_evaluator"] == {
        "cxr-gradcam": "report.evaluator:CxrGradcamEvaluator"
    }


# --- slow: a real install into a fresh venv -----------------------------------------------


def copy_of_a_clone(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def clean_env(home: Path) -> dict[str, str]:
    """No MLflow settings, no PYTHONPATH, and a HOME of its own to look into afterwards."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2")
    return env


def run(command: list, env: dict[str, str], cwd: Path, timeout: int = 900):
    result = subprocess.run(
        [str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def listing(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts
    }


def mlflow_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name in {"mlflow.db", "mlruns", ".mlflow"}]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    clone = copy_of_a_clone(root / "clone")
    venv = root / "venv"
    env = clean_env(Path.home())  # pip keeps its (warm) cache under the real HOME
    run([sys.executable, "-m", "venv", venv], env, root)
    python = venv / "bin" / "python"
    # Not editable: the package is built from the clone and copied into site-packages, with
    # the same pins as the dev venv (they are pyproject.toml's).
    run([python, "-m", "pip", "install", "--quiet", clone], env, root, timeout=1800)
    shutil.rmtree(clone)  # nothing may keep using the source tree
    site = Path(run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, root,
    ).stdout.strip())
    return {"root": root, "python": python, "site": site}


@pytest.mark.slow
def test_installed_package_works_outside_a_checkout(installed):
    root, python, site = installed["root"], installed["python"], installed["site"]
    package = site / "report"
    assert (package / "templates" / "report.html.j2").is_file()
    assert (package / "templates" / "report.css").is_file()
    assert (package / "locales" / "pt_BR" / "LC_MESSAGES" / "report.po").is_file()
    before = listing(package)

    # a) The Python API from an unrelated folder: the report where asked, and no MLflow run.
    home = root / "home"
    env = clean_env(home)
    cwd = root / "api"
    cwd.mkdir()
    (root / "audit.py").write_text(AUDIT_SCRIPT)
    result = run([python, root / "audit.py"], env, cwd)
    assert Path(result.stdout.strip().splitlines()[-1]).resolve().is_relative_to(site.resolve())
    pdf = cwd / "out" / "report.pdf"
    pages = [" ".join(page.extract_text().split()) for page in PdfReader(pdf).pages]
    assert pages and all(DISCLAIMER in page for page in pages)
    assert (cwd / "out" / "report.html").is_file()
    # Only what the script wrote: its two files, and the artifact files audit() keeps under
    # its default output_dir, ./reports. No mlflow.db, no mlruns: not here, above, or in HOME.
    written = listing(cwd)
    assert {p for p in written if Path(p).parts[0] == "out"} == {
        "out", "out/report.pdf", "out/report.html"
    }
    assert {Path(p).parts[0] for p in written} <= {"out", "reports"}, written
    assert not mlflow_leftovers(root) and not mlflow_leftovers(home)

    # b) The CLI on a local MLflow model folder: reports under --output-dir only.
    model = root / "model"
    (root / "save_model.py").write_text(SAVE_MODEL_SCRIPT)
    (root / "save").mkdir()
    run([python, root / "save_model.py", model], env, root / "save")
    cwd = root / "cli"
    cwd.mkdir()
    output_dir = root / "reports"
    result = run(
        [python, "-m", "report", "explain", "--model-uri", model, "--data", "synthetic:30",
         "--quality", "off", "--language", "pt-BR", "--output-dir", output_dir],
        env, cwd,
    )
    assert "Acurácia" in result.stdout  # the catalog is read from the installed package
    printed = [Path(line.strip()) for line in result.stdout.splitlines()
               if line.strip().endswith(("report.html", "report.pdf"))]
    assert {p.name for p in printed} == {"report.html", "report.pdf"}, result.stdout
    for path in printed:
        assert path.is_file() and path.resolve().is_relative_to(output_dir.resolve()), path
    assert listing(package) == before  # nothing written inside site-packages
    assert not list(site.glob("**/report.pdf")) and not (site / "reports").exists()
