"""pytest-benchmark history of the real step times, for `--benchmark-autosave` / `--benchmark-compare`.

The steps are timed by the distributed worker, not by pytest-benchmark calling a function, so the
measured samples are fed into the fixture's statistics as they are: `BenchmarkFixture._make_stats`
registers a stats record with the benchmark session (the same call the fixture makes itself before
timing) and its `update(duration)` adds one sample. Both exist, with these signatures, in
pytest-benchmark 4 and 5. Nothing is timed here, so the saved min/median/max are the step times.

pytest-benchmark disables itself under xdist (and with --benchmark-disable); then only the extra info
is kept, and the report, which never depends on pytest-benchmark, is still complete.
"""

from __future__ import annotations

import math
from typing import Any

# What the fixture shows as its mode when it complains about a second use.
MODE = "reports.history.record_samples(...)"


def record_samples(benchmark_fixture: Any, samples: list[float], extra_info: dict[str, Any]) -> Any:
    """Record measured step times (seconds, one optimizer step each) as this benchmark's rounds.

    Returns the pytest-benchmark stats record, or None when benchmarking is disabled.
    """
    samples = [float(s) for s in samples]
    if not samples:
        raise ValueError("no step-time samples to record")
    bad = [s for s in samples if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"step-time samples must be finite and positive, got {bad}")
    benchmark_fixture.extra_info.update(extra_info)
    if benchmark_fixture.disabled:
        return None
    if benchmark_fixture._mode:
        # The fixture holds one set of rounds per test: a second call would mix two measurements.
        raise RuntimeError(f"the benchmark fixture was already used ({benchmark_fixture._mode})")
    # Marks the fixture used: no "fixture was not used" warning, and a later benchmark(...) call
    # raises FixtureAlreadyUsed instead of adding timings of its own.
    benchmark_fixture._mode = MODE
    stats = benchmark_fixture._make_stats(1)  # one iteration per round: each sample is one step
    for sample in samples:
        stats.update(sample)
    return stats
