"""The reporting plugin, black-box: a tiny test module records results as the bench tests do, and the
session's report holds each row once, with and without xdist, merged with the results store."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from report_plugin_runs import run

from harness.cases import Case
from harness.methods import FREE_LUNCH, NAIVE
from harness.result import Result
from harness.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]

# Six measured cases (one skipped as infeasible after recording, one failing after recording), and one
# predicted infeasible at collection, whose row travels on the setup report as bench/conftest.py does.
TEST_MODULE = """
import pytest
from harness.cases import Case
from harness.methods import FREE_LUNCH, NAIVE
from harness.plan import make_plan
from harness.result import Result

MODELS = ["pythia-14m", "tiny-vit", "tiny-roberta"]
CASES = [Case(model=m, gpu_type="cpu", gpus_per_node=1, method=x)
         for m in MODELS for x in (NAIVE, FREE_LUNCH)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, record_property):
    if case.model == "tiny-roberta" and case.method == NAIVE:
        result = Result(case=case, status="infeasible", reason="OOM at micro-batch 1")
    else:
        days = 0.5 if case.method == NAIVE else 0.25
        result = Result(case=case, status="ok", micro_batch_size=8, grad_acc_steps=1, step_time_s=days * 86.4,
                        training_days=days, plan=make_plan(case, 8).to_dict())
    record_property("pretrain_bench_result", result.to_dict())
    if result.status == "infeasible":
        pytest.skip(f"infeasible: {result.reason}")
    assert case.model != "tiny-vit" or case.method != FREE_LUNCH, "a failing sanity check"


PREDICTED = Case(model="tiny-mamba", gpu_type="cpu", gpus_per_node=1, method=NAIVE)


@pytest.mark.skip(reason="predicted: needs more memory than the host has")
def test_predicted():
    pass
"""

CONFTEST = """
from harness.result import Result


def pytest_collection_modifyitems(config, items):
    from test_cases import PREDICTED

    for item in items:
        skip = item.get_closest_marker("skip")
        if skip is not None:
            row = Result(case=PREDICTED, status="infeasible", reason=skip.kwargs["reason"])
            item.user_properties.append(("pretrain_bench_result", row.to_dict()))
"""

EXPECTED = {
    "pythia-14m-cpux1-naive",
    "pythia-14m-cpux1-free-lunch",
    "tiny-vit-cpux1-naive",
    "tiny-vit-cpux1-free-lunch",
    "tiny-roberta-cpux1-naive",
    "tiny-roberta-cpux1-free-lunch",
    "tiny-mamba-cpux1-naive",
}


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocess imports harness, models, reports
    pytester.makepyfile(test_cases=TEST_MODULE)
    pytester.makeconftest(CONFTEST)
    return pytester


def report_rows(pytester: pytest.Pytester) -> list[dict[str, str]]:
    runs = list((pytester.path / "report").iterdir())
    assert len(runs) == 1, f"one run folder per session, found {runs}"
    with (runs[0] / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_each_row_is_written_once(project, xdist):
    result = run(project, *xdist)
    result.assert_outcomes(passed=4, failed=1, skipped=2)
    rows = report_rows(project)
    ids = [r["case_id"] for r in rows]
    assert sorted(ids) == sorted(EXPECTED)  # none lost, none twice
    by_id = {r["case_id"]: r for r in rows}
    assert by_id["tiny-mamba-cpux1-naive"]["reason"] == "predicted: needs more memory than the host has"
    assert by_id["tiny-roberta-cpux1-naive"]["reason"] == "OOM at micro-batch 1"
    assert by_id["tiny-vit-cpux1-free-lunch"]["training_days"] == "0.25"  # recorded, then failed
    result.stdout.fnmatch_lines(
        [
            "*pretrain-bench report*",
            "*pythia-14m*cpu x1*free-lunch*8 x 1*0.25*",
            "report: *report*",
            "page: *index.html",
        ]
    )
    run_dir = next((project.path / "report").iterdir())
    assert (run_dir / "best" / "pythia-14m-cpux1-free-lunch" / "plan.json").is_file()


def test_stored_results_are_merged_and_this_sessions_rows_win(project):
    store = ResultStore(project.path / "results")
    stale = Result(
        case=Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=NAIVE),
        status="ok",
        micro_batch_size=4,
        grad_acc_steps=2,
        training_days=9.0,
        created=1.0,
    )
    other = Result(
        case=Case(model="tiny-convnext", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH),
        status="infeasible",
        reason="from an earlier session",
    )
    store.append(stale)
    store.append(other)
    run(project).assert_outcomes(passed=4, failed=1, skipped=2)
    by_id = {r["case_id"]: r for r in report_rows(project)}
    assert set(by_id) == EXPECTED | {"tiny-convnext-cpux1-free-lunch"}
    assert by_id["pythia-14m-cpux1-naive"]["training_days"] == "0.5"
    assert by_id["tiny-convnext-cpux1-free-lunch"]["reason"] == "from an earlier session"


def test_no_report_and_no_rows_write_nothing(project):
    run(project, "--no-report").assert_outcomes(passed=4, failed=1, skipped=2)
    assert not (project.path / "report").exists()
    run(project, "-k", "nothing_matches").assert_outcomes()
    assert not (project.path / "report").exists()


def test_a_file_is_refused_as_the_report_folder(project):
    (project.path / "afile").write_text("")
    result = project.runpytest_subprocess("-p", "reports.plugin", "--report-dir", str(project.path / "afile"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*afile is a file; a folder is needed*"])
