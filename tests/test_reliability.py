"""Reliability checks that need no job: unstable timings, leftovers of earlier runs, the run guard's
warnings, and folders given relative to another directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cases import Case
from harness.methods import FREE_LUNCH
from harness.processes import leftover_workers
from harness.result import Result, sanity_problems, timing_warning

REPO = Path(__file__).resolve().parents[1]


def timed(gpu_type: str, samples: list[float]) -> Result:
    case = Case(
        model="pythia-160m" if gpu_type != "cpu" else "pythia-14m", gpu_type=gpu_type, method=FREE_LUNCH
    )
    return Result(case=case, status="ok", timing={"step_samples_s": samples})


def test_a_wide_spread_is_flagged_and_a_gross_one_fails_the_gate_on_a_gpu():
    steady = [1.00, 1.01, 0.99, 1.02, 1.00]
    assert timing_warning(steady) == ""
    unstable = [1.0, 1.3, 1.0, 1.35, 1.02, 1.4]
    assert timing_warning(unstable).startswith("unstable timing: the inter-quartile range is")
    assert not sanity_problems(timed("h100", unstable))  # flagged, not refused
    # The tiny case that fell from 0.448 s to 0.016 s within one run: a GPU refuses it.
    gross = [0.448, 0.3, 0.1, 0.05, 0.016]
    (problem,) = sanity_problems(timed("h100", gross))
    assert "28.0x, more than 2x" in problem
    # The CPU profile shares a small host by design: flagged, never refused.
    assert sanity_problems(timed("cpu", gross)) == []
    assert timing_warning(gross)


def test_a_worker_left_by_an_earlier_controller_is_found_and_named(tmp_path):
    # A stand-in whose command line reads like a worker's, orphaned (its parent shell exits at once).
    marker = tmp_path / "job.json"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' -m harness.worker {marker}"
    subprocess.run(["sh", "-c", f"({sleeper} &)"], check=True, timeout=10)
    deadline = time.monotonic() + 10
    found = []
    while not found and time.monotonic() < deadline:
        found = [w for w in leftover_workers() if str(marker) in w.command]
        time.sleep(0.1)
    try:
        assert len(found) == 1
        assert f"kill -9 {found[0].pid}" in found[0].describe()
    finally:
        for worker in found:
            os.kill(worker.pid, signal.SIGKILL)


def test_the_run_guard_warns_of_cpu_jobs_side_by_side_under_xdist(tmp_path):
    from types import SimpleNamespace

    from bench.guard import RunGuard

    guard = RunGuard(results_dir=tmp_path / "results")
    config = SimpleNamespace(option=SimpleNamespace(numprocesses=2))
    guard.start(config, cpu_cases=True)
    try:
        assert any("share this host's cores" in w for w in guard.warnings)
        assert (tmp_path / "results" / ".lock").is_file()
    finally:
        guard.stop()
    assert not (tmp_path / "results" / ".lock").exists()


@pytest.mark.slow
def test_relative_folders_resolve_against_the_directory_pytest_runs_from(tmp_path):
    """pytest started outside the checkout, with the default (relative) folders: jobs run from the
    repository, and still write where the user asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PRETRAIN_BENCH_FAULT")}
    env |= {"PRETRAIN_BENCH_NODE": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "bench"),
        "--rootdir",
        str(REPO),
        "-c",
        str(REPO / "pytest.ini"),
        "-p",
        "no:cacheprovider",
        "-m",
        "cpu",
        "--models",
        "tiny-vit",
        "--gpu-counts",
        "1",
        "--methods",
        "naive",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert list((tmp_path / "runs" / "jobs" / "tiny-vit-cpux1-naive").glob("*/time-mb8/result.json"))
    assert list((tmp_path / "runs" / "results" / "tiny-vit-cpux1-naive").glob("*.json"))
    assert list((tmp_path / "runs" / "report").iterdir())
