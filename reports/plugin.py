"""The reporting plugin: every case's Result as the tests report it -> one report folder per session.

Built the way pytest's junitxml is: the collector lives in `config.stash` and is created in
`pytest_configure` only when `not hasattr(config, "workerinput")`, so under xdist only the controller
aggregates (workers' reports, user_properties included, travel to it); it is fed from
`report.user_properties` as reports arrive, written in `pytest_sessionfinish`, and
`pytest_terminal_summary` prints a short table and where the files went.

A case test records `("pretrain_bench_result", Result.to_dict())` with `record_property`; a case
predicted infeasible carries the same property from collection, so its setup report holds it. A test
has up to three reports (setup, call, teardown): rows are kept per node id, the last report winning.

Checks of results travel the same way: `("pretrain_bench_validation", record)` and
`("pretrain_bench_parity", record)` (see `reports.checks`), kept per node id and kind, the last report
winning; at session end they are merged with the store's newest check per case, this session's
records winning per case id.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from harness.result import Result
from harness.store import DEFAULT_ROOT, ResultStore

PROPERTY = "pretrain_bench_result"
CHECK_PROPERTIES = {"validation": "pretrain_bench_validation", "parity": "pretrain_bench_parity"}
CHECK_KINDS = {name: kind for kind, name in CHECK_PROPERTIES.items()}  # property name -> kind
DEFAULT_REPORT_DIR = Path("runs") / "report"


def folder(value: str) -> Path:
    """Option type: a folder path (made absolute now, so a test that changes directory cannot move it)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"{value} is a file; a folder is needed")
    return path.absolute()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pretrain-bench-report", "pretrain-bench report")
    group.addoption(
        "--report-dir",
        type=folder,
        default=str(DEFAULT_REPORT_DIR),
        metavar="DIR",
        help="write each session's report to a new folder DIR/<YYYYmmdd-HHMMSS>/ (default: %(default)s)",
    )
    group.addoption(
        "--no-report", action="store_true", default=False, help="collect no results and write no report"
    )
    group.addoption(
        "--results-dir",
        type=folder,
        default=str(DEFAULT_ROOT),
        metavar="DIR",
        help="the results store: measured cases are kept and resumed from here, and the "
        "report merges its newest result per case (default: %(default)s)",
    )


class ReportCollector:
    def __init__(self, report_dir: Path, results_dir: Path) -> None:
        self.report_dir = report_dir
        self.results_dir = results_dir
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.started = time.time()
        self.rows: dict[str, Any] = {}  # node id -> Result.to_dict()
        self.checks: dict[str, dict[str, Any]] = {
            kind: {} for kind in CHECK_PROPERTIES
        }  # kind -> node id -> record
        self.problems: list[str] = []
        self.out_dir: Path | None = None
        self.files: dict[str, Path] = {}
        self.summary: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.rows[report.nodeid] = value
            elif name in CHECK_KINDS:
                self.checks[CHECK_KINDS[name]][report.nodeid] = value

    def measured(self) -> list[Result]:
        results = []
        for nodeid, data in self.rows.items():
            try:
                results.append(Result.from_dict(data))
            except (KeyError, TypeError, ValueError) as error:  # a malformed row from a test, not ours
                self.problems.append(f"{nodeid}: unreadable {PROPERTY} ({error!r}); left out")
        return results

    def session_checks(self, kind: str) -> list[dict[str, Any]]:
        from reports.checks import unreadable

        records = []
        for nodeid, record in self.checks[kind].items():
            why = unreadable(record)
            if why is None:
                records.append(record)
            else:
                self.problems.append(f"{nodeid}: unreadable {CHECK_PROPERTIES[kind]} ({why}); left out")
        return records

    def stored_checks(self, kind: str) -> list[dict[str, Any]]:
        from reports.checks import unreadable

        try:
            return [r for r in ResultStore(self.results_dir).checks(kind) if unreadable(r) is None]
        except (KeyError, TypeError, AttributeError) as error:  # a hand-edited record without its keys
            self.problems.append(f"{self.results_dir}: unreadable stored {kind} checks ({error!r}); left out")
            return []

    def run_dir(self) -> Path:
        path = self.report_dir / self.stamp
        n = 1
        while path.exists():  # two sessions in the same second (xdist reruns, tests)
            path = self.report_dir / f"{self.stamp}-{n}"
            n += 1
        return path

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from reports.build import check_lines, summary_table, write_report
        from reports.checks import merge
        from reports.rows import dedupe, groups
        from reports.search import search_lines
        from reports.tables import text_table

        measured = self.measured()
        session_checks = {kind: self.session_checks(kind) for kind in CHECK_PROPERTIES}
        if not measured and not any(session_checks.values()):
            # Nothing measured or checked in this session (a unit-test run, --collect-only): writing
            # a report from the store alone is `python -m reports`'s job.
            return
        store = ResultStore(self.results_dir)
        stored = store.latest_per_case()
        merged = dedupe([*stored.values(), *measured])  # this session's rows last: they win
        found = {kind: merge(self.stored_checks(kind), session_checks[kind]) for kind in CHECK_PROPERTIES}
        searches = store.check_history("search")
        self.out_dir = self.run_dir()
        self.files = write_report(
            merged, self.out_dir, validations=found["validation"], parities=found["parity"], searches=searches
        )
        self.summary = text_table(summary_table(groups(merged)).frame) if merged else []
        self.summary += check_lines(found["validation"], found["parity"])
        # This session's searches: what the run just cost.
        self.summary += search_lines([r for r in searches if r.get("created", 0.0) >= self.started])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from reports.search import faults_line

        faults = faults_line(since=self.started)
        if faults is not None:  # this session ran the fault matrix (tests/test_faults.py)
            terminalreporter.write_sep("-", "pretrain-bench fault matrix")
            terminalreporter.write_line(faults)
        if not self.files and not self.problems:
            return
        terminalreporter.write_sep("-", "pretrain-bench report")
        for line in self.summary:
            terminalreporter.write_line(line)
        for problem in self.problems:
            terminalreporter.write_line(f"warning: {problem}", yellow=True)
        if self.out_dir is not None:
            terminalreporter.write_line(f"report: {self.out_dir}")
            terminalreporter.write_line(f"page:   {self.files['index']}")


report_key = pytest.StashKey[ReportCollector]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.option.no_report:
        return
    collector = ReportCollector(config.option.report_dir, config.option.results_dir)
    config.stash[report_key] = collector
    config.pluginmanager.register(collector, "pretrain-bench-report-collector")


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.stash.get(report_key, None)
    if collector is not None:
        del config.stash[report_key]
        config.pluginmanager.unregister(collector)


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark may be absent or disabled (-p no:benchmark)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """GPUs and the training stack into pytest-benchmark's saved machine_info.

    The node comes from NVML / nvidia-smi (no CUDA context). The code version stays out: it changes
    with every commit, which pytest-benchmark's commit_info already records, and a differing
    machine_info makes --benchmark-compare warn.
    """
    from hardware import detect_node
    from harness.env import controller_environment

    node = detect_node()
    env = controller_environment(node)
    machine_info["gpu"] = {
        "type": node.gpu_type,
        "name": env["gpu_name"],
        "count": env["gpu_count"],
        "driver": env["driver"],
        "cuda_driver": node.cuda_driver_version,
        "interconnect": node.interconnect,
    }
    machine_info["training_stack"] = {
        name: env[name] for name in ("cuda", "torch", "transformers", "accelerate", "deepspeed")
    }
