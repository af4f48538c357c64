"""pytest-benchmark history: the real step-time samples are what is saved and compared."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from reports.history import record_samples

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [0.5, 0.25, 0.75, 1.0, 0.125]
EXTRA = {"case_id": "pythia-14m-cpux1-free-lunch", "micro_batch_size": 8, "training_days": 0.25}

TEST_MODULE = f"""
from reports.history import record_samples


def test_step_time(benchmark):
    stats = record_samples(benchmark, {SAMPLES!r}, {EXTRA!r})
    assert stats is not None, "benchmarking is on: the samples must be recorded"
"""


def saved_runs(storage: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(storage.glob("*/*.json"))]


def test_samples_are_saved_exactly_and_compare_across_runs(pytester: pytest.Pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PRETRAIN_BENCH_NODE", "cpu")  # a known node for machine_info, whatever runs this
    # Run from an xdist worker, the inner session would inherit its variables, and pytest-benchmark
    # disables itself when it sees them.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_history=TEST_MODULE)
    storage = tmp_path / "benchmarks"
    common = [
        "-p",
        "reports.plugin",
        "-p",
        "no:cacheprovider",
        "--no-report",
        "--benchmark-autosave",
        "--benchmark-save-data",
        f"--benchmark-storage=file://{storage}",
    ]

    first = pytester.runpytest_subprocess(*common, timeout=120)
    first.assert_outcomes(passed=1)
    [saved] = saved_runs(storage)
    [bench] = saved["benchmarks"]
    stats = bench["stats"]
    assert stats["data"] == SAMPLES  # the measured samples themselves, in order, nothing timed here
    assert (stats["min"], stats["max"], stats["rounds"], stats["iterations"]) == (0.125, 1.0, 5, 1)
    assert stats["median"] == statistics.median(SAMPLES) and stats["mean"] == statistics.mean(SAMPLES)
    assert bench["extra_info"] == EXTRA
    gpu = saved["machine_info"]["gpu"]
    assert (gpu["type"], gpu["count"]) == ("cpu", 0)
    assert set(saved["machine_info"]["training_stack"]) >= {"cuda", "torch", "transformers", "deepspeed"}

    second = pytester.runpytest_subprocess(*common, "--benchmark-compare", timeout=120)
    second.assert_outcomes(passed=1)
    second.stderr.fnmatch_lines(["*Comparing against benchmarks from*0001_*.json"])
    second.stdout.fnmatch_lines(["*benchmark: 2 tests*", "test_step_time (0001*", "test_step_time (NOW)*"])
    runs = saved_runs(storage)
    assert len(runs) == 2 and runs[1]["benchmarks"][0]["stats"]["data"] == SAMPLES


def fake_fixture(disabled: bool) -> SimpleNamespace:
    made = []

    def make_stats(iterations):
        made.append(SimpleNamespace(iterations=iterations, data=[], update=lambda d: made[-1].data.append(d)))
        return made[-1]

    return SimpleNamespace(disabled=disabled, extra_info={}, _mode=None, _make_stats=make_stats, made=made)


def test_disabled_benchmarks_keep_only_the_extra_info():
    fixture = fake_fixture(disabled=True)  # under xdist or --benchmark-disable
    assert record_samples(fixture, SAMPLES, EXTRA) is None
    assert fixture.extra_info == EXTRA and fixture.made == [] and fixture._mode is None


def test_a_fixture_takes_one_set_of_samples():
    fixture = fake_fixture(disabled=False)
    stats = record_samples(fixture, SAMPLES, EXTRA)
    assert (stats.iterations, stats.data) == (1, SAMPLES)
    with pytest.raises(RuntimeError, match="already used"):
        record_samples(fixture, SAMPLES, EXTRA)


@pytest.mark.parametrize("samples", [[], [0.1, 0.0], [0.1, float("nan")], [-1.0]])
def test_unusable_samples_are_refused(samples):
    with pytest.raises(ValueError):
        record_samples(fake_fixture(disabled=False), samples, EXTRA)
