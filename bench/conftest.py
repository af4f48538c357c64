"""Parametrizes `case` over models x GPU types x GPU counts x node counts x methods."""

from __future__ import annotations

import pytest

from bench.plugin import CPU_PROCESS_COUNTS, GPU_COUNTS
from harness.cases import Case
from harness.methods import method_set
from harness.result import Result


def collect_cases(config: pytest.Config) -> list[Case]:
    from hardware import active_registry
    from models import MODELS, PAPER_MODELS, TINY_MODELS

    gpus = config.getoption("gpus") or list(active_registry())
    chosen_models = config.getoption("models")
    cases: set[Case] = set()
    for gpu in gpus:
        cpu = gpu == "cpu"
        models = chosen_models or (TINY_MODELS if cpu else PAPER_MODELS)
        counts = config.getoption("gpu_counts") or (CPU_PROCESS_COUNTS if cpu else GPU_COUNTS)
        for model in models:
            if MODELS[model].tiny != cpu and not chosen_models:
                continue
            for nodes in config.getoption("nodes"):
                for count in counts:
                    for name in config.getoption("methods"):
                        for method in method_set(name, nodes * count):
                            cases.add(
                                Case(
                                    model=model,
                                    gpu_type=gpu,
                                    num_nodes=nodes,
                                    gpus_per_node=count,
                                    method=method,
                                )
                            )
    # Sorted by id: every xdist worker must collect the same list in the same order.
    return sorted(cases, key=lambda c: c.id)


def case_marks(case: Case) -> list[pytest.MarkDecorator]:
    from hardware import marker_name
    from harness.estimate import predicted_infeasible
    from harness.plan import refusal
    from models import get_model

    marks = [
        getattr(pytest.mark, marker_name(case.gpu_type)),
        getattr(pytest.mark, f"family_{get_model(case.model).family}"),
    ]
    if case.gpu_type != "cpu":
        marks += [pytest.mark.gpu, pytest.mark.slow]
    if case.num_gpus > 1:
        marks.append(pytest.mark.multigpu)
    reason = refusal(case) or predicted_infeasible(case)
    if reason is not None:
        marks.append(pytest.mark.skip(reason=reason))
    return marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    cases = collect_cases(metafunc.config)
    metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=case_marks(c)) for c in cases])


def pytest_collection_finish(session: pytest.Session) -> None:
    """The cases that will run (selected, not skip-marked): the fast search's groups; and, before the
    first of them runs, the run's guard (bench.guard) on the controller."""
    from bench.guard import RunGuard
    from bench.plugin import bench_key

    config = session.config
    state = config.stash[bench_key]
    state.selected = [
        item.callspec.params["case"]  # type: ignore[attr-defined]
        for item in session.items
        if "case" in getattr(getattr(item, "callspec", None), "params", {})
        and item.get_closest_marker("skip") is None
    ]
    if state.selected and not config.option.collectonly and not hasattr(config, "workerinput"):
        state.guard = RunGuard(results_dir=config.getoption("results_dir"))
        state.guard.start(config, cpu_cases=any(case.gpu_type == "cpu" for case in state.selected))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A case skipped at collection still gets its row in the report, with the predicted reason.
    for item in items:
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
        skip = item.get_closest_marker("skip")
        if case is not None and skip is not None:
            row = Result(case=case, status="infeasible", reason=skip.kwargs.get("reason", ""))
            item.user_properties.append(("pretrain_bench_result", row.to_dict()))
