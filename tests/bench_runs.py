"""`pytest bench ...` as a child process, for the tests that run the benchmark black-box: every run
points the results store, the report and the job folders into a test's folder, and describes the
node through PRETRAIN_BENCH_NODE so that detection is the same on every machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Variables of the outer pytest (or the user's shell) that would change the child's run.
LEAKY_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PRETRAIN_BENCH_HARDWARE", "PRETRAIN_BENCH_FAULT")


def bench_env(node: str = "cpu", extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    return env | {"PRETRAIN_BENCH_NODE": node, "COLUMNS": "250", **(extra or {})}


def bench_cmd(tmp_path: Path, *args: str, results: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "bench",
        "-p",
        "no:cacheprovider",
        "--results-dir",
        str(results or tmp_path / "results"),
        "--report-dir",
        str(tmp_path / "report"),
        "--jobs-dir",
        str(tmp_path / "jobs"),
        *args,
    ]
