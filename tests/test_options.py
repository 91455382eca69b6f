"""One declaration of options (report/options.py): MLproject, the CLI, the Python API, the
validation and the report's Settings table all agree with it."""

from __future__ import annotations

import inspect

import pytest
import yaml

import report
from report import options
from report.cli import build_parser, main
from report.errors import OptionError
from tests.conftest import PROJECT_ROOT

MLPROJECT = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())


def mlproject_rendering(option: options.Option) -> str:
    """How MLproject must spell the option's default."""
    if option.default is None:
        return "none"
    if option.kind == "bool":
        return "yes" if option.default else "no"
    return str(option.default)


def mlproject_type(option: options.Option) -> str:
    # MLflow has no integer or boolean parameter type.
    if option.mlproject_type:
        return option.mlproject_type
    return "float" if option.kind in ("int", "float") else "string"


@pytest.mark.parametrize("entry_point, command", options.ENTRY_POINTS.items())
def test_mlproject_parameters_are_the_declared_options(entry_point, command):
    spec = MLPROJECT["entry_points"][entry_point]
    declared = {option.name: option for option in options.COMMANDS[command]}
    assert set(spec["parameters"]) == set(declared)
    for name, parameter in spec["parameters"].items():
        option = declared[name]
        assert parameter["type"] == mlproject_type(option), name
        default = parameter["default"]
        if option.kind in ("int", "float"):
            assert float(default) == float(option.default), name
        else:
            assert str(default) == mlproject_rendering(option), name
        assert f"{option.flag} {{{name}}}" in spec["command"], name
    assert spec["command"].split()[:4] == ["python", "-m", "report", command]


@pytest.mark.parametrize("command", options.COMMANDS)
def test_cli_flags_are_the_declared_options(command):
    subparsers = build_parser()._subparsers._group_actions[0].choices
    flags = {flag for action in subparsers[command]._actions for flag in action.option_strings}
    assert flags - {"-h", "--help"} == {option.flag for option in options.COMMANDS[command]}


def test_api_keywords_are_the_declared_options():
    parameters = inspect.signature(report.audit).parameters
    keywords = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    declared = {option.keyword for option in options.EXPLAIN}
    assert list(parameters)[:2] == ["model", "data"]
    assert keywords | {"model", "data"} == declared
    for option in options.EXPLAIN:
        if option.keyword in keywords:
            assert parameters[option.keyword].default == option.default
    for name in ("split", "batch_size", "quality"):
        assert name in report.audit.__doc__


def test_every_mlproject_default_passes_the_cli_validation():
    for entry_point, command in options.ENTRY_POINTS.items():
        parameters = MLPROJECT["entry_points"][entry_point]["parameters"]
        given = {name: str(p["default"]) for name, p in parameters.items()}
        assert options.resolve(command, given, style="cli") == options.defaults(command)


@pytest.mark.parametrize("name, bad, words", [
    ("batch_size", "0", "below 1"),
    ("batch_size", "2.5", "not a whole number"),
    ("alpha", "1.5", "above 1"),
    ("alpha", "nan", "not a number"),
    ("method", "gradcam+++", "choose one of gradcam, gradcam++, layercam, scorecam"),
    ("unsafe_deserialization", "maybe", "not yes or no"),
    ("limit", "-1", "below 0"),
])
def test_the_cli_and_the_api_refuse_a_bad_value_naming_it_as_the_caller_wrote_it(
        name, bad, words):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(OptionError) as from_cli:
        options.resolve("explain", {name: bad}, style="cli")
    assert str(from_cli.value).startswith(f"{flag}: ") and words in str(from_cli.value)
    python_value = bad if name in ("method", "unsafe_deserialization") else float(bad)
    with pytest.raises(ValueError) as from_python:
        options.resolve("explain", {name: python_value})
    assert str(from_python.value).startswith(f"{name}: ") and words in str(from_python.value)


def test_cli_prints_one_line_naming_the_flag(capsys):
    assert main(["explain", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --batch-size: 0 is below 1"


def test_api_refuses_unknown_keywords_and_bad_values_before_any_work():
    with pytest.raises(ValueError, match="^bogus: unknown option"):
        report.audit("models:/x@y", "synthetic", bogus=1)
    with pytest.raises(OptionError, match="^quality: unknown value 'slow'"):
        report.audit("models:/x@y", "synthetic", quality="slow")


def test_cli_spellings_convert_to_the_api_types():
    values = options.resolve("explain", {
        "batch_size": "32.0", "alpha": ".5", "unsafe_deserialization": "yes",
        "label_map": "none", "class_names": "A, B,C"}, style="cli")
    assert values["batch_size"] == 32 and isinstance(values["batch_size"], int)
    assert values["alpha"] == 0.5
    assert values["unsafe_deserialization"] is True
    assert values["label_map"] is None
    assert values["class_names"] == ["A", "B", "C"]


def test_declared_choices_match_what_the_code_implements():
    from report.cam.engine import METHODS
    from report.cam.normalise import NORMALISATIONS
    from report.cam.overlay import COLORMAPS
    from report.checks import LEVELS
    from report.data.split import SPLITS
    from report.model import BACKBONES

    assert set(options.METHODS) == set(METHODS)
    assert {name: engine.title for name, engine in METHODS.items()} == options.METHODS
    assert set(options.NORMALISATIONS) == set(NORMALISATIONS)
    assert set(options.COLORMAPS) == set(COLORMAPS)
    assert set(options.QUALITY_LEVELS) == set(LEVELS)
    assert set(options.SPLITS) == set(SPLITS)
    assert set(options.BACKBONES) == set(BACKBONES)
    from report.i18n import LANGUAGES

    assert options.LANGUAGES == LANGUAGES


def test_settings_table_comes_from_the_declaration():
    values = options.defaults("explain")
    rows = options.settings_rows("explain", values, resolved={"layer": "conv (automatic)"})
    labelled = [option for option in options.EXPLAIN if option.label]
    assert list(rows) == [option.label for option in labelled]
    assert rows["Method"] == "Grad-CAM (Selvaraju et al. 2017)"
    assert rows["Target layer"] == "conv (automatic)"
    assert rows["Class score"] == options.SCORES["logit"]
