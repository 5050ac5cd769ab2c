"""Suite-wide rules of the test run."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

MUST_RUN_IN_CI = ("slow", "ray", "postgres", "root", "browser")
"""Markers of tests that need something besides the virtualenv (a tool, an extra, a database
server, a browser): in CI a skip would pass unnoticed, so it fails instead."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and _in_ci()
        and any(item.get_closest_marker(name) for name in MUST_RUN_IN_CI)
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every {MUST_RUN_IN_CI} test must run: {reason}"
    return report
