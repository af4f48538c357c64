"""The session's view of the engine: options from the command line, the store, the environment."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.cases import Case
from harness.engine import EngineOptions, measure_case
from harness.env import controller_environment, fingerprint_key
from harness.result import Result
from harness.store import ResultStore


@dataclass(frozen=True, kw_only=True, slots=True)
class Runner:
    store: ResultStore
    environment: dict
    options: EngineOptions
    parity_references: dict[tuple, list[float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config) -> Runner:
        from bench.plugin import Progress
        from hardware import detect_node

        environment = controller_environment(detect_node())
        timed = config.getoption("timed_steps")
        reporter = config.pluginmanager.get_plugin("terminalreporter")

        capture = config.pluginmanager.get_plugin("capturemanager")

        def write(line: str) -> None:
            # Under xdist the worker's terminal is not shown; stderr of the worker is, with -s.
            if reporter is None or hasattr(config, "workerinput"):
                print(line, file=sys.stderr, flush=True)
                return
            # Progress is written during a test's call, which pytest captures: show it live.
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write_line(line)
            else:
                reporter.write_line(line)

        total = getattr(config, "_pretrain_bench_selected", 0) or 1
        options = EngineOptions(
            timed_steps=timed,
            max_micro_batch=config.getoption("max_micro_batch"),
            loader_workers=config.getoption("loader_workers"),
            full_accumulation=config.getoption("full_accumulation"),
            timeout_s=config.getoption("job_timeout"),
            work_dir=Path(config.getoption("jobs_dir")),
            force=config.getoption("force"),
            progress=Progress(total=total, write=write),
        )
        return cls(
            store=ResultStore(config.getoption("results_dir")),
            environment=environment,
            options=options,
        )

    def validate(self, result: Result, steps: int, chunk: int | None = None) -> dict:
        from harness.checks import validate

        return validate(result, store=self.store, options=self.options, steps=steps, chunk=chunk)

    def parity(self, case: Case, steps: int) -> dict:
        from harness.checks import loss_parity

        return loss_parity(
            case, store=self.store, options=self.options, steps=steps, references=self.parity_references
        )

    def stored(self, case: Case) -> Result | None:
        return self.store.latest_comparable(case, self.environment)

    def measure(self, case: Case) -> Result:
        progress = self.options.progress
        if progress is not None:
            progress(case.id, "begin")
        try:
            return measure_case(
                case,
                store=self.store,
                environment=self.environment,
                fingerprint=fingerprint_key(self.environment, case),
                options=self.options,
            )
        finally:
            if progress is not None:
                progress(case.id, "end")
