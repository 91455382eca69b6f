"""CI strictness: a skip fails the run under CI=true, and the system-package script fails
loudly there instead of letting the tests that need its programs skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-system-deps.sh"
SKIPPING_TEST = """
import pytest

def test_needs_a_missing_program():
    pytest.skip("Chromium not found")

def test_runs():
    assert True
"""


@pytest.mark.parametrize(("ci", "failed", "skipped"), [("true", 1, 0), ("", 0, 1)])
def test_a_skip_fails_only_in_ci(pytester, monkeypatch, ci, failed, skipped):
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(SKIPPING_TEST)
    result = pytester.runpytest("-p", "tests.ci_strict")
    result.assert_outcomes(passed=1, failed=failed, skipped=skipped)
    if ci:
        result.stdout.fnmatch_lines(["*skipped in CI*Chromium not found*"])


@pytest.mark.parametrize(("ci", "failed"), [("true", 1), ("", 0)])
def test_a_module_skipped_while_collected_fails_only_in_ci(pytester, monkeypatch, ci, failed):
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_needs_it="""
import pytest
pytest.importorskip("a_module_nobody_installed")

def test_never_collected():
    pass
""")
    result = pytester.runpytest("-p", "tests.ci_strict")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == failed
    assert outcomes.get("skipped", 0) == 1 - failed


def run_script_without_apt(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    """The script on a machine where apt-get cannot be found (an empty PATH)."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": str(empty), "CI": ci}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True)


def test_the_system_package_script_fails_loudly_in_ci(tmp_path):
    result = run_script_without_apt(tmp_path, "true")
    assert result.returncode != 0
    assert "ERROR" in result.stderr and "CI" in result.stderr
    assert "chromium" in result.stderr


def test_the_system_package_script_only_warns_outside_ci(tmp_path):
    result = run_script_without_apt(tmp_path, "")
    assert result.returncode == 0
    assert "will skip" in result.stdout
