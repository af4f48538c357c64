"""The report's checks of results: step-time validation and loss parity.

Hand-made records -> validation.csv/.md and parity.csv/.md (exact columns, the median/max error against
the targets, PASS/FAIL/skipped rows); the store round trip through `python -m reports`; and the plugin,
black-box: a tiny test module records both properties and the session's run folder holds both files.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_plugin_runs import run

from harness.store import ResultStore
from reports import checks
from reports.build import check_lines, write_report

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000.0
H100 = "NVIDIA H100 80GB HBM3 x1"
FIRST_VALIDATION_COLUMNS = ["case_id", "predicted_step_s", "measured_step_s", "error_pct", "steps", "machine"]


def validation(case_id: str, error: float, *, measured: float = 2.0, created: float = T0) -> dict:
    return {
        "case_id": case_id,
        "predicted_step_s": measured * (1 + error / 100),
        "measured_step_s": measured,
        "error_pct": error,
        "steps": 20,
        "warmup_steps": 3,
        "machine": H100,
        "micro_batch_size": 8,
        "grad_acc_steps": 16,
        "created": created,
    }


def parity(
    case_id: str,
    max_rel_diff: float,
    *,
    precision: str = "bf16",
    tolerance: float = 0.02,
    skipped: str = "",
    created: float = T0,
) -> dict:
    record = {
        "case_id": case_id,
        "reference_case_id": case_id.rsplit("-", 1)[0] + "-naive",
        "method": case_id.rsplit("-", 1)[1],
        "precision": precision,
        "steps": 0 if skipped else 10,
        "losses": [] if skipped else [10.0, 9.5, 9.1],
        "reference_losses": [] if skipped else [10.0, 9.4, 9.0],
        "max_rel_diff": max_rel_diff,
        "tolerance": tolerance,
        "passed": not skipped and max_rel_diff <= tolerance,
        "machine": H100,
        "created": created,
    }
    if skipped:
        record["skipped_reason"] = skipped
    return record


VALIDATIONS = [
    validation("pythia-160m-h100x1-naive", +1.0),
    validation("pythia-160m-h100x1-free-lunch", -2.0),
    validation("pythia-410m-h100x1-ckpt", +4.0),
]
PARITIES = [
    parity("pythia-160m-h100x1-ckpt", 0.004),
    parity("pythia-160m-h100x1-zero1", 0.031),
    parity("pythia-160m-h100x1-fp32", 0.0, precision="fp32", tolerance=1e-4),
    parity("pythia-160m-h100x1-zero3", 0.0, skipped="needs 2 GPUs, 1 found"),
]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    out = tmp_path / "report"
    return out, write_report([], out, validations=VALIDATIONS, parities=PARITIES)


# -- builder ------------------------------------------------------------------------------------------------


def test_validation_csv_has_the_columns_in_order_and_every_record(written):
    out, files = written
    assert files["validation_csv"] == out / "validation.csv"
    columns, rows = read_csv(out / "validation.csv")
    assert columns[:6] == FIRST_VALIDATION_COLUMNS
    assert {"warmup_steps", "micro_batch_size", "grad_acc_steps", "created"} <= set(columns)
    by_id = {r["case_id"]: r for r in rows}
    assert sorted(by_id) == sorted(r["case_id"] for r in VALIDATIONS)
    row = by_id["pythia-410m-h100x1-ckpt"]
    assert float(row["predicted_step_s"]) == pytest.approx(2.08)
    assert (row["measured_step_s"], row["error_pct"], row["steps"], row["machine"]) == (
        "2.0",
        "4.0",
        "20",
        H100,
    )


def test_validation_summary_gives_median_and_max_against_the_targets(written):
    out, _ = written
    text = (out / "validation.md").read_text()
    # |errors| 1, 2, 4: median 2 <= 3, max 4 <= 6.
    assert "3 cases: median |error| 2.00% (target <= 3%: met); max |error| 4.00% (target <= 6%: met)." in text
    assert (
        "| pythia-410m-h100x1-ckpt | NVIDIA H100 80GB HBM3 x1 | 2.08 | 2 | +4.00% | 20 | 3 | 8 x 16 |" in text
    )
    assert "| pythia-160m-h100x1-free-lunch |" in text and "| -2.00% |" in text
    assert check_lines(VALIDATIONS, []) == ["validation: 3 cases, median |error| 2.00%, max 4.00%"]


@pytest.mark.parametrize(
    ("errors", "summary"),
    [
        (
            [1.0, -2.0, 7.0],
            "median |error| 2.00% (target <= 3%: met); max |error| 7.00% (target <= 6%: not met)",
        ),
        (
            [-3.5, 5.0, 4.0],
            "median |error| 4.00% (target <= 3%: not met); max |error| 5.00% (target <= 6%: met)",
        ),
        ([3.0, -6.0], "median |error| 4.50% (target <= 3%: not met); max |error| 6.00% (target <= 6%: met)"),
    ],
)
def test_targets_not_met_are_said_so(errors, summary):
    records = [validation(f"case-{i}", e) for i, e in enumerate(errors)]
    assert summary in checks.validation_summary(records)


def test_a_validation_on_another_instance_is_listed_not_judged(tmp_path):
    """Host speed differs between instances of one machine kind; a prediction is judged on its own."""
    here = validation("pythia-160m-h200x2-fsdp-full", 1.3) | {"same_instance": True}
    elsewhere = validation("pythia-160m-h200x2-fsdp-grad-op", 48.3) | {"same_instance": False}
    unknown = validation("pythia-160m-h200x2-zero1", -0.5)  # recorded before instances were
    records = [here, elsewhere, unknown]
    summary = checks.validation_summary(records)
    assert summary.startswith(
        "2 cases (1 more ran on another instance than their prediction: listed, not judged)"
    )
    assert "max |error| 1.30% (target <= 6%: met)" in summary
    assert check_lines(records, []) == [
        "validation: 2 cases, median |error| 0.90%, max 1.30% "
        "(1 more ran on another instance than their prediction: listed, not judged)"
    ]
    write_report([], tmp_path, validations=records)
    text = (tmp_path / "validation.md").read_text()
    assert "| +48.30% | 20 | 3 | 8 x 16 | another instance |" in text
    assert "| +1.30% | 20 | 3 | 8 x 16 | this instance |" in text
    assert "| -0.50% | 20 | 3 | 8 x 16 | not recorded |" in text  # judged as it stands


def test_parity_rows_say_pass_fail_or_why_skipped(written):
    out, files = written
    assert (files["parity_csv"], files["parity"]) == (out / "parity.csv", out / "parity.md")
    columns, rows = read_csv(out / "parity.csv")
    assert columns[:8] == [
        "case_id",
        "reference_case_id",
        "method",
        "precision",
        "steps",
        "max_rel_diff",
        "tolerance",
        "passed",
    ]
    by_id = {r["case_id"]: r for r in rows}
    assert len(rows) == 4
    assert by_id["pythia-160m-h100x1-zero3"]["skipped_reason"] == "needs 2 GPUs, 1 found"
    assert by_id["pythia-160m-h100x1-ckpt"]["losses"] == "[10.0, 9.5, 9.1]"

    text = (out / "parity.md").read_text()
    assert "| case | reference | precision | steps | max relative difference | tolerance | result |" in text
    assert "| pythia-160m-h100x1-ckpt | pythia-160m-h100x1-naive | bf16 | 10 | 0.004 | 0.02 | PASS |" in text
    assert "| pythia-160m-h100x1-zero1 | pythia-160m-h100x1-naive | bf16 | 10 | 0.031 | 0.02 | FAIL |" in text
    assert "| pythia-160m-h100x1-fp32 | pythia-160m-h100x1-naive | fp32 | 10 | 0 | 0.0001 | PASS |" in text
    assert (
        "| pythia-160m-h100x1-zero3 | pythia-160m-h100x1-naive | bf16 | 0 |  | 0.02 "
        "| skipped: needs 2 GPUs, 1 found |" in text
    )
    assert "2 of 4 pass, 1 fail, 1 skipped" in text
    # The tolerance table: the distinct (precision, tolerance) pairs of the records.
    assert "## Tolerance per precision" in text
    assert "| bf16 | 0.02 | 3 |" in text and "| fp32 | 0.0001 | 1 |" in text
    assert check_lines([], PARITIES) == ["loss parity: 2 of 4 pass (1 skipped)"]
    assert checks.parity_line(PARITIES[:2]) == "loss parity: 1 of 2 pass"


def test_both_sections_are_on_the_page(written):
    out, files = written
    page = files["index"].read_text()
    assert "<h2>Step-time validation</h2>" in page and "<h2>Loss parity</h2>" in page
    assert "Tolerance per precision" in page and "skipped: needs 2 GPUs, 1 found" in page
    assert "validation: 3 cases, median |error| 2.00%, max 4.00%" in page


def test_empty_checks_write_nothing_and_the_old_call_still_works(tmp_path):
    files = write_report([], tmp_path / "a")
    assert not {"validation_csv", "validation", "parity_csv", "parity"} & set(files)
    assert not list((tmp_path / "a").glob("validation*")) and not list((tmp_path / "a").glob("parity*"))
    page = files["index"].read_text()
    assert "Step-time validation" not in page and "Loss parity" not in page
    files = write_report([], tmp_path / "b", validations=VALIDATIONS)
    assert "validation_csv" in files and "parity_csv" not in files


def test_a_repeated_case_keeps_the_last_record_given(tmp_path):
    old, new = validation("c-naive", 9.0), validation("c-naive", 1.0)
    files = write_report([], tmp_path, validations=[old, new])
    _, rows = read_csv(files["validation_csv"])
    assert [r["error_pct"] for r in rows] == ["1.0"]


# -- store round trip ---------------------------------------------------------------------------------------


def test_cli_regenerates_the_checks_from_the_store(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.append_check("validation", validation("pythia-160m-h100x1-naive", 9.0, created=T0))
    for record in VALIDATIONS:  # newer: these win for their case
        store.append_check("validation", record | {"created": T0 + 10})
    for record in PARITIES:
        store.append_check("parity", dict(record))
    out = tmp_path / "regenerated"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "reports", "--results-dir", str(store.root), "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "validation: 3 cases, median |error| 2.00%, max 4.00%" in done.stdout
    assert "loss parity: 2 of 4 pass (1 skipped)" in done.stdout

    columns, rows = read_csv(out / "validation.csv")
    assert columns[:6] == FIRST_VALIDATION_COLUMNS
    assert {r["case_id"]: r["error_pct"] for r in rows} == {
        "pythia-160m-h100x1-naive": "1.0",
        "pythia-160m-h100x1-free-lunch": "-2.0",
        "pythia-410m-h100x1-ckpt": "4.0",
    }
    _, rows = read_csv(out / "parity.csv")
    assert {r["case_id"]: r["passed"] for r in rows} == {
        "pythia-160m-h100x1-ckpt": "True",
        "pythia-160m-h100x1-zero1": "False",
        "pythia-160m-h100x1-fp32": "True",
        "pythia-160m-h100x1-zero3": "False",
    }
    assert (out / "validation.md").is_file() and (out / "parity.md").is_file()
    assert ResultStore(store.root).records() == []  # checks are not results


# -- the plugin, black-box ----------------------------------------------------------------------------------

TEST_MODULE = """
import pytest

H100 = "NVIDIA H100 80GB HBM3 x1"


def validation(case_id, error):
    return {"case_id": case_id, "predicted_step_s": 2.0 * (1 + error / 100), "measured_step_s": 2.0,
            "error_pct": error, "steps": 20, "warmup_steps": 3, "machine": H100, "micro_batch_size": 8,
            "grad_acc_steps": 16, "created": 1.0}


def parity(case_id, diff, skipped=""):
    record = {"case_id": case_id, "reference_case_id": "pythia-14m-cpux1-naive", "method": "free-lunch",
              "precision": "fp32", "steps": 5, "losses": [1.0, 0.9], "reference_losses": [1.0, 0.9],
              "max_rel_diff": diff, "tolerance": 1e-4, "passed": not skipped and diff <= 1e-4,
              "machine": "cpu x1", "created": 1.0}
    if skipped:
        record["skipped_reason"] = skipped
    return record


@pytest.mark.parametrize("case_id,error", [("pythia-14m-cpux1-naive", 1.0), ("tiny-vit-cpux1-naive", -5.0)])
def test_validation(case_id, error, record_property):
    record_property("pretrain_bench_validation", validation(case_id, error))


CASES = [("pythia-14m-cpux1-free-lunch", 0.0), ("tiny-vit-cpux1-free-lunch", 0.5)]


@pytest.mark.parametrize("case_id,diff", CASES)
def test_parity(case_id, diff, record_property):
    record_property("pretrain_bench_parity", parity(case_id, diff))
    assert diff <= 1e-4, "losses differ"


def test_parity_skipped(record_property):
    record_property("pretrain_bench_parity", parity("tiny-roberta-cpux1-zero1", 0.0, "needs 2 processes"))
    pytest.skip("needs 2 processes")
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocess imports harness and reports
    pytester.makepyfile(test_checks=TEST_MODULE)
    return pytester


def run_folder(pytester: pytest.Pytester) -> Path:
    runs = list((pytester.path / "report").iterdir())
    assert len(runs) == 1, f"one run folder per session, found {runs}"
    return runs[0]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_session_that_only_checks_writes_both_files(project, xdist):
    # An older check of a case this session checks again (this session's wins), and one it does not.
    store = ResultStore(project.path / "results")
    store.append_check("validation", validation("pythia-14m-cpux1-naive", 30.0, created=5.0))
    store.append_check("validation", validation("tiny-mamba-cpux1-naive", 0.5, created=5.0))

    result = run(project, *xdist)
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    folder = run_folder(project)
    columns, rows = read_csv(folder / "validation.csv")
    assert columns[:6] == FIRST_VALIDATION_COLUMNS
    assert {r["case_id"]: r["error_pct"] for r in rows} == {
        "pythia-14m-cpux1-naive": "1.0",
        "tiny-vit-cpux1-naive": "-5.0",
        "tiny-mamba-cpux1-naive": "0.5",
    }
    _, rows = read_csv(folder / "parity.csv")
    assert {r["case_id"]: (r["passed"], r["skipped_reason"]) for r in rows} == {
        "pythia-14m-cpux1-free-lunch": ("True", ""),
        "tiny-vit-cpux1-free-lunch": ("False", ""),
        "tiny-roberta-cpux1-zero1": ("False", "needs 2 processes"),
    }
    assert "skipped: needs 2 processes" in (folder / "parity.md").read_text()
    assert (folder / "index.html").is_file()
    result.stdout.fnmatch_lines(
        [
            "*pretrain-bench report*",
            "validation: 3 cases, median |error| 1.00%, max 5.00%",
            "loss parity: 1 of 3 pass (1 skipped)",
            "report: *report*",
        ]
    )


def test_checks_alone_in_the_store_write_no_report(project):
    ResultStore(project.path / "results").append_check("validation", validation("x-naive", 1.0))
    run(project, "-k", "nothing_matches").assert_outcomes()
    assert not (project.path / "report").exists()


def test_an_unreadable_check_is_left_out_with_a_warning(project):
    project.makepyfile(
        test_bad="""
def test_bad(record_property):
    record_property("pretrain_bench_parity", ["not", "a", "record"])
"""
    )
    result = run(project, "test_bad.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*warning: test_bad.py::test_bad: unreadable pretrain_bench_parity*left out*"]
    )
