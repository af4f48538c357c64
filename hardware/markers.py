"""pytest plugin: one marker per GPU type of the registry, so that `--strict-markers` accepts them.

Listed in the root conftest's pytest_plugins; `-p hardware.markers` loads it elsewhere. Types added
through $PRETRAIN_BENCH_HARDWARE get their markers too.
"""

from __future__ import annotations

import pytest

from hardware.overrides import HardwareFileError, active_registry
from hardware.registry import marker_name


def pytest_configure(config: pytest.Config) -> None:
    try:
        registry = active_registry()
    except HardwareFileError as error:  # a broken user file stops the run with its own message
        raise pytest.UsageError(str(error)) from error
    for gpu in registry.values():
        config.addinivalue_line("markers", f"{marker_name(gpu)}: case needs {gpu.description}")
