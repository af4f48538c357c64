"""Running pytest with the report plugin in a child process, for the report-plugin tests."""

from __future__ import annotations

import pytest


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess with reports.plugin, its report and results folders inside pytester's."""
    return pytester.runpytest_subprocess(
        "-p",
        "reports.plugin",
        "-p",
        "no:cacheprovider",
        "--report-dir",
        str(pytester.path / "report"),
        "--results-dir",
        str(pytester.path / "results"),
        *args,
        timeout=120,
    )
