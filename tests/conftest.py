"""Hooks for the suite's own tests (plugins are registered in the root conftest only)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Keeps the call phase's report on the item, for fixtures that record how their test ended
    # (the fault matrix of tests/test_faults.py).
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
