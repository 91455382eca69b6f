"""In CI a skipped test is a failed test.

Locally a test that needs Chromium, PostgreSQL or Java skips and says why (`-ra` lists the
reason). In CI (`CI=true`, as GitHub Actions, GitLab and most runners set it) those programs
are installed by `scripts/install-system-deps.sh`, so a skip there means the install or the
test broke, and a green run would hide it.
"""

from __future__ import annotations

import os

import pytest

CI_TRUE = ("1", "true", "yes")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped while collected (`pytest.importorskip` at its top)."""
    outcome = yield
    _fail_a_skip(outcome.get_result())


def _fail_a_skip(report) -> None:
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (CI={os.environ['CI']}), which must run every test: {reason}"
