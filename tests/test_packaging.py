"""The project's set-up files agree with each other."""

import tomllib

import yaml

from tests.conftest import PROJECT_ROOT


def pyproject_pins() -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"])


def conda_pins() -> set[str]:
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    pip_sections = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    return set(pip_sections[0])


def test_every_runtime_dependency_is_pinned_exactly():
    assert pyproject_pins()
    assert all("==" in pin for pin in pyproject_pins())


def test_conda_env_repeats_the_pyproject_pins():
    assert conda_pins() == pyproject_pins()


def test_conda_env_python_matches_requires_python():
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]


def test_model_uri_parameter_is_a_uri_not_a_path():
    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert project["entry_points"]["main"]["parameters"]["model_uri"]["type"] == "uri"
