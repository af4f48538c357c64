"""The session's view of the engine: options from the command line, the store, the launcher, the search.

A case test asks `measure(case)`. A search works on a whole group (one model on one node: the
selected cases that share it) the first time one of its cases asks, and answers the others from what
it settled: the search of a model on a node is one search, with one wall time, whichever strategy.
Under pytest-xdist two workers may ask for cases of one group: a lock per group in the results
folder lets one search while the other waits, then finds every result of the group in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.cases import Case
from harness.engine import Engine, EngineOptions
from harness.result import Result
from harness.search import SearchStrategy, get_strategy


@dataclass(kw_only=True, slots=True)
class Runner:
    engine: Engine
    strategy: SearchStrategy
    groups: dict[str, list[Case]]
    locks: Path
    started: float  # when the session began: what is stored since then, this run made
    parity_references: dict[tuple, list[float]] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config) -> Runner:
        from bench.plugin import Progress, bench_key
        from hardware import detect_node
        from harness.compile_cache import cache_env
        from harness.env import controller_environment, fingerprint_key
        from harness.gpu_pool import GpuPool, visible_devices
        from harness.launch import LocalLauncher
        from harness.store import ResultStore

        node = detect_node()
        environment = controller_environment(node)
        write = _writer(config)
        options = EngineOptions(
            timed_steps=config.getoption("timed_steps"),
            max_micro_batch=config.getoption("max_micro_batch"),
            loader_workers=config.getoption("loader_workers"),
            full_accumulation=config.getoption("full_accumulation"),
            timeout_s=config.getoption("job_timeout"),
            work_dir=Path(config.getoption("jobs_dir")),
            force=config.getoption("force"),
            progress=Progress(write=write),
        )
        cache = config.getoption("compile_cache")
        gpus = visible_devices(node.count) if node.gpu_type not in (None, "cpu") else []
        launcher = LocalLauncher(
            pool=GpuPool(gpus),
            env=cache_env(cache, environment) if cache is not None else {},
            parallel=config.getoption("parallel_jobs"),
            waiting=write,
        )
        results_dir = Path(config.getoption("results_dir"))
        engine = Engine(
            store=ResultStore(results_dir),
            environment=environment,
            fingerprint=lambda case: fingerprint_key(environment, case),
            options=options,
            launcher=launcher,
        )
        groups: dict[str, list[Case]] = {}
        for case in config.stash[bench_key].selected:
            groups.setdefault(case.group_id, []).append(case)
        return cls(
            engine=engine,
            strategy=get_strategy(config.getoption("search")),
            groups=groups,
            locks=results_dir / ".locks",
            started=config.stash[bench_key].started,
        )

    def measure(self, case: Case) -> Result:
        if case.id not in self.results:
            cases = self.groups.get(case.group_id, [case])
            with self._group_lock(case.group_id):
                self.results |= self.engine.search(cases, self.strategy, since=self.started)
        return self.results[case.id]

    @contextlib.contextmanager
    def _group_lock(self, key: str) -> Iterator[None]:
        self.locks.mkdir(parents=True, exist_ok=True)
        with (self.locks / f"{key}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or its holder dies
            yield

    def validate(self, result: Result, steps: int, chunk: int | None = None) -> dict:
        from harness.checks import validate

        return validate(result, engine=self.engine, steps=steps, chunk=chunk)

    def parity(self, case: Case, steps: int) -> dict:
        from harness.checks import loss_parity

        return loss_parity(case, engine=self.engine, steps=steps, references=self.parity_references)

    def stored(self, case: Case) -> Result | None:
        return self.engine.store.latest_comparable(case, self.engine.environment)


def _writer(config: pytest.Config):
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

    return write
