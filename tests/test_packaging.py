"""The project's set-up files agree with each other."""

import tomllib

import yaml

from tests.conftest import PROJECT_ROOT


def pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def pyproject_pins() -> set[str]:
    return set(pyproject()["dependencies"])


def conda_env() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())


def conda_pins() -> set[str]:
    pip_sections = [d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict)]
    return set(pip_sections[0])


def test_every_runtime_dependency_is_pinned_exactly():
    pins = pyproject_pins() | set(pyproject()["optional-dependencies"]["spark"])
    assert pins
    assert all("==" in pin for pin in pins)


def test_spark_stays_out_of_the_core_install():
    # 456 MB and a JVM that most audits never use: an extra, not a dependency.
    assert not any(pin.startswith("pyspark") for pin in pyproject_pins() | conda_pins())


def test_conda_env_carries_the_spark_extra_from_conda_forge():
    (pin,) = pyproject()["optional-dependencies"]["spark"]
    assert pin.replace("==", "=") in conda_env()["dependencies"]
    assert "openjdk=17" in conda_env()["dependencies"]


def test_conda_env_repeats_the_pyproject_pins():
    assert conda_pins() == pyproject_pins()


def test_conda_env_python_matches_requires_python():
    assert "python=3.11" in conda_env()["dependencies"]


def test_model_uri_parameter_is_a_uri_not_a_path():
    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert project["entry_points"]["main"]["parameters"]["model_uri"]["type"] == "uri"
