"""Benchmark options, hardware matching at setup, and the session's engine fixture.

Cases are parametrized in bench/conftest.py from these options; each case test asks the `engine`
fixture for its result. A case runs only on matching hardware: at setup it is compared with the
node detected through NVML / nvidia-smi (no CUDA context in the pytest process).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.compile_cache import DEFAULT_ROOT as COMPILE_CACHE
from harness.methods import METHOD_SETS
from harness.result import MIN_TIMED_STEPS
from harness.strategies import STRATEGIES
from models.names import suggest
from reports.plugin import folder

GPU_COUNTS = (1, 2, 4, 8)
CPU_PROCESS_COUNTS = (1, 2)


def _choices(kind: str, valid: Callable[[], list[str]]) -> Callable[[str], list[str]]:
    """An option type: a comma-separated list of known names, or a usage error with suggestions."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        if names == ["all"]:
            return list(valid())
        for name in names:
            if name not in valid():
                close = suggest(name, valid())
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise pytest.UsageError(
                    f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(valid()))}"
                )
        return names

    return parse


def _model_names() -> list[str]:
    from models import MODELS

    return list(MODELS)


def _gpu_names() -> list[str]:
    from hardware import active_registry  # built-ins plus the user's hardware file

    return list(active_registry())


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise pytest.UsageError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise pytest.UsageError(f"counts must be at least 1, got {text!r}")
    return counts


def _at_least(option: str, low: float, kind: type = int, why: str = "") -> Callable[[str], float]:
    """An option type: a number of `kind` no smaller than `low` (strictly larger for low 0.0 floats)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise pytest.UsageError(f"{option} takes a {kind.__name__}, got {text!r}") from None
        too_small = value <= low if (kind is float and low == 0.0) else value < low
        if too_small:
            bound = f"more than {low:g}" if kind is float and low == 0.0 else f"at least {low:g}"
            raise pytest.UsageError(f"{option} must be {bound}{why}, got {text}")
        return value

    return parse


def _cache(value: str) -> Path | None:
    return None if value.lower() == "none" else folder(value)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pretrain-bench", "pre-training benchmark cases")
    group.addoption(
        "--models",
        type=_choices("model", _model_names),
        default=None,
        help="models to benchmark, comma-separated or 'all' (default: the paper's models on GPU "
        "types, the tiny models on cpu)",
    )
    group.addoption(
        "--gpus",
        type=_choices("GPU type", _gpu_names),
        default=None,
        help="GPU types to collect cases for (default: all; select with -m <type>)",
    )
    group.addoption(
        "--gpu-counts",
        type=_counts,
        default=None,
        help=f"GPUs per node (default: {','.join(map(str, GPU_COUNTS))}; cpu: "
        f"{','.join(map(str, CPU_PROCESS_COUNTS))} processes)",
    )
    group.addoption("--nodes", type=_counts, default=[1], help="node counts (default: 1)")
    group.addoption(
        "--methods",
        type=_choices("method set", lambda: list(METHOD_SETS)),
        default=["naive", "free-lunch"],
        help="naive, free-lunch, all (comma-separated union)",
    )
    group.addoption(
        "--search",
        choices=tuple(STRATEGIES),
        default="fast",
        help="fast: predict each case's micro-batch with the memory model, prune cases that cannot be "
        "fastest (reported as pruned, with the rule), time the rest briefly and the best fully; "
        "exhaustive: probe and time every case (default: %(default)s)",
    )
    group.addoption(
        "--compile-cache",
        type=_cache,
        default=str(COMPILE_CACHE),
        metavar="DIR",
        help="compile cache shared by every job and later runs on this node, keyed by the environment; "
        "'none' compiles from cold in every job (default: %(default)s)",
    )
    group.addoption(
        "--parallel-jobs",
        action="store_true",
        help="run independent jobs side by side on disjoint GPUs of this node (off by default: a case "
        "timed beside others must first be shown to agree with the same case timed alone)",
    )
    group.addoption(
        "--require-hardware",
        action="store_true",
        help="fail, rather than skip, a case whose hardware this node does not have",
    )
    group.addoption("--force", action="store_true", help="re-measure cases already in the results store")
    group.addoption(
        "--timed-steps",
        type=_at_least("--timed-steps", MIN_TIMED_STEPS, why=" (a median and a spread)"),
        default=MIN_TIMED_STEPS,
        help="timed optimizer steps per case (at least 5; default: %(default)s)",
    )
    group.addoption(
        "--max-micro-batch",
        type=_at_least("--max-micro-batch", 1),
        default=None,
        help="cap the micro-batch probe (default: no cap)",
    )
    group.addoption(
        "--loader-workers",
        type=_at_least("--loader-workers", 0),
        default=0,
        help="data-loader worker processes per GPU (the Trainer's dataloader_num_workers, holding a whole "
        "step's micro-batches; default 0, its default: the training process collates every micro-batch)",
    )
    group.addoption(
        "--full-accumulation",
        action="store_true",
        help="time at the recipe's full gradient accumulation instead of extrapolating",
    )
    group.addoption(
        "--job-timeout",
        type=_at_least("--job-timeout", 0.0, float),
        default=1800.0,
        help="seconds before a job is killed (a validation job gets its predicted training time on top; "
        "default: %(default)s)",
    )
    group.addoption(
        "--validate",
        action="store_true",
        help="after timing a case, train it at the full accumulation and compare (validation.csv)",
    )
    group.addoption(
        "--validation-steps",
        type=_at_least("--validation-steps", 1),
        default=20,
        help="timed optimizer steps of a validation (default: %(default)s)",
    )
    group.addoption(
        "--validation-chunk",
        type=_at_least("--validation-chunk", 1),
        default=None,
        metavar="N",
        help="time at most N of the validation's steps per run (each part warms up on its own); the parts "
        "are stored and the next run goes on until all --validation-steps are done",
    )
    group.addoption(
        "--parity",
        action="store_true",
        help="compare each free-lunch case's losses with naive eager on the same batches (parity.csv)",
    )
    group.addoption(
        "--checks-only",
        action="store_true",
        help="measure nothing: run --validate/--parity on the results already stored for this machine",
    )
    group.addoption(
        "--parity-steps",
        type=_at_least("--parity-steps", 2, why=" (the first loss comes before any optimizer step)"),
        default=5,
        help="optimizer steps of a loss-parity run (default: %(default)s)",
    )
    group.addoption(
        "--jobs-dir",
        type=folder,  # absolute now: jobs run from the repository, not from here
        default=str(Path("runs") / "jobs"),
        help="where each job's files and output.log go (default: %(default)s)",
    )


def node_mismatch(case, node) -> str | None:
    """Why this node (or allocation) cannot run the case, or None."""
    if case.num_nodes > 1:
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("NNODES", "1")))
        if nodes < case.num_nodes:
            return f"case needs {case.num_nodes} nodes; this allocation has {nodes}"
    return node.mismatch(case.gpu_type, case.gpus_per_node)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Option combinations that cannot work end the run before anything is collected.

    SIGTERM (a batch system's time limit, `timeout`) ends the run as Ctrl-C does: the running job is
    killed with its workers, the results stored so far stay, and the session's report is written."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    config.stash[bench_key] = BenchState()
    if config.getoption("checks_only", False) and not (
        config.getoption("validate") or config.getoption("parity")
    ):
        raise pytest.UsageError("--checks-only measures nothing: add --validate and/or --parity")
    chunk = config.getoption("validation_chunk", None)
    if chunk is not None and not config.getoption("validate", False):
        raise pytest.UsageError("--validation-chunk splits a validation: add --validate")


def pytest_runtest_setup(item: pytest.Item) -> None:
    case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
    if case is None:
        return
    from hardware import detect_node

    reason = node_mismatch(case, detect_node())
    if reason is None:
        return
    if item.config.getoption("require_hardware"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass
class BenchState:
    """The session's benchmark state (in config.stash): the cases selected to run, the run's guard
    (controller only) and the engine's runner (where cases run)."""

    selected: list[Any] = field(default_factory=list)
    guard: Any = None
    runner: Any = None
    # When this process's session began: a result stored since then was made by this run (under
    # xdist, by another worker of it), whatever its status.
    started: float = field(default_factory=time.time)


bench_key = pytest.StashKey[BenchState]()


@dataclass
class Progress:
    """Live lines: the case, what it is doing (with the search's own time-left estimate), and the
    time since the run began."""

    write: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)

    def __call__(self, case_id: str, message: str) -> None:
        self.write(f"[{case_id}] {message} ({(time.monotonic() - self.started) / 60:.1f} min into the run)")


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest):
    from bench.runner import Runner

    state = request.config.stash[bench_key]
    if state.runner is None:
        state.runner = Runner.from_config(request.config)
    return state.runner


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist the controller collects nothing (its workers do), so it takes the run's
    guard here, before any worker runs a case, when the run includes the benchmark."""
    from bench.guard import RunGuard, runs_benchmark

    config = session.config
    controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if controller and runs_benchmark(config):
        state = config.stash[bench_key]
        state.guard = RunGuard(results_dir=config.getoption("results_dir"))
        state.guard.start(config, cpu_cases=guard_cpu_cases(config))


def guard_cpu_cases(config: pytest.Config) -> bool:
    """Whether the run's cases are CPU ones: a node without GPUs, or `-m cpu`."""
    from hardware import detect_node

    marks = config.option.markexpr or ""
    return detect_node().gpu_type == "cpu" or "cpu" in marks.split()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(bench_key, None)
    if state is not None and state.guard is not None:
        state.guard.stop()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(bench_key, None)
    if state is None or state.guard is None or not state.guard.warnings:
        return
    terminalreporter.write_sep("-", "pretrain-bench warnings")
    for line in state.guard.warnings:
        terminalreporter.write_line(f"warning: {line}", yellow=True)
