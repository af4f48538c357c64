"""What a benchmark run makes sure of before its first job, and gives back at its end.

- One run at a time on a results folder: two would measure every case twice and time each other.
  The run takes the folder's lock (harness.lock), which names the holder when refused.
- The results folder can be written: a run that could not store what it measures says so first.
- No worker of an earlier run is still running: one left by a controller killed outright keeps its
  GPU memory and shares the GPUs with this run's jobs, so each is named, with the memory it holds.
- pytest-xdist runs benchmark jobs side by side: GPU jobs each lease their own GPUs from the node's
  pool; CPU jobs share the host's cores, which slows each other's timings, so that is warned about.
Only the controller does this (under xdist its workers run the cases, inside its lock): without
xdist once the cases are collected, under xdist at the session's start (its controller collects
nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class RunGuard:
    results_dir: Path
    lock: object | None = None
    warnings: list[str] = field(default_factory=list)

    def start(self, config: pytest.Config, *, cpu_cases: bool) -> None:
        from harness.lock import LockHeldError, RunLock
        from harness.processes import leftover_workers
        from harness.store import ResultStore, StoreNotWritableError

        try:
            ResultStore(self.results_dir).check_writable()
        except StoreNotWritableError as error:
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
        try:
            lock = RunLock(self.results_dir).acquire()
        except LockHeldError as error:
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
        self.lock = lock
        if lock.took_over:
            old = lock.took_over
            self.warnings.append(
                f"took over the lock of {self.results_dir} left by pid {old.get('pid')} on "
                f"{old.get('host')}, which is no longer running"
            )
        for leftover in leftover_workers():
            self.warnings.append(f"a worker of an earlier run is still running: {leftover.describe()}")
        workers = getattr(config.option, "numprocesses", None)
        if workers and cpu_cases:
            self.warnings.append(
                "pytest-xdist runs CPU benchmark jobs side by side: they share this host's cores and slow "
                "each other, so their timings are not comparable with a serial run's (GPU jobs get "
                "disjoint GPUs)"
            )

    def stop(self) -> None:
        if self.lock is not None:
            self.lock.release()  # type: ignore[attr-defined]
            self.lock = None


def runs_benchmark(config: pytest.Config) -> bool:
    """Whether the run's paths include the benchmark cases (none given: the configured testpaths)."""
    bench = Path(__file__).resolve().parent
    here = Path(config.invocation_params.dir)
    given = [here / a.split("::")[0] for a in config.args]
    paths = [p.resolve() for p in given or [config.rootpath / t for t in config.getini("testpaths")]]
    return any(p == bench or bench in p.parents or p in bench.parents for p in paths)
