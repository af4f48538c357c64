"""The bench plugin black-box: `pytest bench ...` in a child process, with the repository as rootdir.

Every run points the results store, the report and the job folders into tmp_path, and describes the
node through PRETRAIN_BENCH_NODE so that detection is the same on every machine.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from bench_runs import REPO, bench_cmd, bench_env

CASE_LINE = re.compile(r"^bench/test_cases\.py::test_case\[(.+)\]$", re.MULTILINE)
SKIPPED_LINE = re.compile(r"^SKIPPED \[\d+\] [^:]+(?::\d+)?: (.+)$", re.MULTILINE)


def bench(
    tmp_path: Path, *args: str, node: str = "cpu", timeout: float = 600, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        bench_cmd(tmp_path, *args),
        cwd=REPO,
        env=bench_env(node, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def collected_ids(proc: subprocess.CompletedProcess) -> list[str]:
    return CASE_LINE.findall(proc.stdout)


def skip_reasons(proc: subprocess.CompletedProcess) -> list[str]:
    return SKIPPED_LINE.findall(proc.stdout)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


ONE_CPU_CASE = ("-m", "cpu", "--models", "tiny-vit", "--gpu-counts", "1", "--methods", "naive")
CPU_ID = "tiny-vit-cpux1-naive"


# --- collection ---------------------------------------------------------------------------------


def test_whole_matrix_collects_with_unique_sorted_ids(tmp_path):
    proc = bench(tmp_path, "--collect-only", "-q", "--methods", "all")
    assert proc.returncode == 0, output(proc)[-3000:]
    ids = collected_ids(proc)
    assert len(ids) > 8000
    assert len(set(ids)) == len(ids), "duplicate case ids"
    # Sorted: every xdist worker must collect the same list in the same order.
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[a-z0-9.-]+", i) for i in ids)
    found = re.search(r"(\d+) tests? collected in ([\d.]+)s", proc.stdout)
    assert found, proc.stdout[-500:]
    assert int(found.group(1)) == len(ids)
    # The 3 s collection target is a performance figure: reported here, not asserted.
    print(f"collection of {len(ids)} cases: {float(found.group(2)):.2f} s (target < 3 s)")
    assert not (tmp_path / "report").exists()  # --collect-only measures nothing: no report


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--models", "pythia-1g", "Unknown model 'pythia-1g'. Did you mean: pythia-1b"),
        ("--gpus", "h10", "Unknown GPU type 'h10'. Did you mean: h100"),
        ("--methods", "everything", "Unknown method set 'everything'."),
        ("--gpu-counts", "0", "counts must be at least 1"),
        ("--timed-steps", "3", "--timed-steps must be at least 5"),
        ("--validation-steps", "0", "--validation-steps must be at least 1"),
        ("--validation-chunk", "0", "--validation-chunk must be at least 1, got 0"),
        ("--loader-workers", "-1", "--loader-workers must be at least 0, got -1"),
        ("--max-micro-batch", "0", "--max-micro-batch must be at least 1, got 0"),
        ("--max-micro-batch", "-4", "--max-micro-batch must be at least 1, got -4"),
        ("--job-timeout", "0", "--job-timeout must be more than 0, got 0"),
        ("--parity-steps", "1", "--parity-steps must be at least 2"),
        ("--timed-steps", "many", "--timed-steps takes a int, got 'many'"),
    ],
)
def test_invalid_option_values_are_usage_errors(tmp_path, option, value, expected):
    proc = bench(tmp_path, "--collect-only", "-q", option, value)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR == 4, output(proc)[-2000:]
    assert expected in proc.stderr
    if option == "--methods":
        assert "Available: all, free-lunch, naive" in proc.stderr
    assert "Traceback" not in output(proc)


def test_markers_of_every_case(tmp_path):
    """Each case carries its GPU-type marker, its family, gpu+slow off the CPU, multigpu above one GPU."""
    from hardware import active_registry, marker_name
    from models import get_model

    dump = tmp_path / "marks.json"
    (tmp_path / "markdump.py").write_text(
        "import json, os\n"
        "def pytest_collection_finish(session):\n"
        "    rows = []\n"
        "    for item in session.items:\n"
        "        case = item.callspec.params['case']\n"
        "        rows.append({\n"
        "            'id': item.callspec.id, 'case_id': case.id, 'model': case.model,\n"
        "            'gpu_type': case.gpu_type, 'num_gpus': case.num_gpus,\n"
        "            'marks': sorted({m.name for m in item.iter_markers()}),\n"
        "            'skip': [m.kwargs.get('reason') for m in item.iter_markers('skip')],\n"
        "            'props': [v for k, v in item.user_properties if k == 'pretrain_bench_result'],\n"
        "        })\n"
        "    with open(os.environ['MARKDUMP'], 'w') as f:\n"
        "        json.dump(rows, f)\n"
    )
    proc = bench(
        tmp_path,
        "--collect-only",
        "-q",
        "--nodes",
        "1,2",
        "-p",
        "markdump",
        extra_env={"MARKDUMP": str(dump), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
    )
    assert proc.returncode == 0, output(proc)[-3000:]
    rows = json.loads(dump.read_text())
    gpu_markers = {marker_name(name) for name in active_registry()}
    assert len(rows) > 1000
    assert {r["gpu_type"] for r in rows} == set(active_registry())
    for r in rows:
        marks = set(r["marks"])
        assert r["id"] == r["case_id"]
        assert marks & gpu_markers == {marker_name(r["gpu_type"])}, r
        assert {m for m in marks if m.startswith("family_")} == {f"family_{get_model(r['model']).family}"}, r
        on_gpu = r["gpu_type"] != "cpu"
        assert ("gpu" in marks) is on_gpu and ("slow" in marks) is on_gpu, r
        assert ("multigpu" in marks) is (r["num_gpus"] > 1), r
        # A case skipped at collection says why and already has its report row.
        if r["skip"]:
            assert all(r["skip"]), r
            assert [p["status"] for p in r["props"]] == ["infeasible"], r
            assert r["props"][0]["reason"] == r["skip"][0]
        else:
            assert r["props"] == [], r

    proc = bench(tmp_path, "--collect-only", "-q", "-m", "h100 and multigpu and family_pythia")
    assert proc.returncode == 0, output(proc)[-3000:]
    ids = collected_ids(proc)
    expected = [
        r["id"]
        for r in rows
        if r["gpu_type"] == "h100"
        and r["num_gpus"] > 1
        and "nodes" not in r["id"]
        and "family_pythia" in r["marks"]
    ]
    assert ids and sorted(ids) == sorted(expected)
    assert all(i.startswith("pythia-") and "-h100x" in i and "-h100x1-" not in i for i in ids)


# --- skips at setup and at collection -------------------------------------------------------------

H100_CASE = ("-m", "h100", "--models", "pythia-160m", "--gpu-counts", "1", "--methods", "naive", "-rs")


def test_case_for_absent_hardware_is_skipped_with_the_reason(tmp_path):
    proc = bench(tmp_path, *H100_CASE, node="cpu")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "1 skipped" in proc.stdout
    reasons = skip_reasons(proc)
    assert len(reasons) == 1 and "case needs 1 x h100; this node has" in reasons[0], proc.stdout
    assert "cpu" in reasons[0]
    assert not (tmp_path / "jobs").exists()  # nothing launched


def test_absent_hardware_with_require_hardware_fails(tmp_path):
    proc = bench(tmp_path, *H100_CASE, "--require-hardware", node="cpu")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED == 1, output(proc)[-3000:]
    assert "case needs 1 x h100; this node has" in proc.stdout
    assert "skipped" not in proc.stdout.splitlines()[-1]
    assert not (tmp_path / "jobs").exists()


def test_too_few_gpus_of_the_right_type_is_skipped(tmp_path):
    args = ("-m", "h200", "--models", "pythia-160m", "--gpu-counts", "4", "--methods", "naive", "-rs")
    proc = bench(tmp_path, *args, node="h200x2")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert skip_reasons(proc) == ["case needs 4 x h200; this node has 2 x h200"]


def test_case_predicted_infeasible_is_skipped_at_collection_with_a_report_row(tmp_path):
    args = ("-m", "rtx3090", "--models", "pythia-6.9b", "--gpu-counts", "1", "--methods", "naive", "-rs")
    # On matching hardware: were the skip mark missing, a job would start (and fail within 60 s).
    proc = bench(tmp_path, *args, "--job-timeout", "60", node="rtx3090")
    assert proc.returncode == 0, output(proc)[-3000:]
    reasons = skip_reasons(proc)
    assert len(reasons) == 1 and reasons[0].startswith("predicted:"), proc.stdout
    assert "GiB" in reasons[0] and "rtx3090" in reasons[0]
    assert not (tmp_path / "jobs").exists()  # skipped before any job, even on matching hardware
    csv = next((tmp_path / "report").glob("*/results.csv")).read_text()
    assert "pythia-6.9b" in csv and "infeasible" in csv


def test_gpu_count_that_does_not_divide_the_batch_is_skipped(tmp_path):
    args = ("-m", "h100", "--models", "pythia-160m", "--gpu-counts", "3", "--methods", "naive", "-rs")
    proc = bench(tmp_path, *args, "--job-timeout", "60", node="h100x4")
    assert proc.returncode == 0, output(proc)[-3000:]
    reasons = skip_reasons(proc)
    assert len(reasons) == 1 and "not divisible by 3 GPUs" in reasons[0], proc.stdout
    assert "1024" in reasons[0]
    assert not (tmp_path / "jobs").exists()


# --- the CPU profile end to end (real jobs) -------------------------------------------------------


@pytest.mark.slow
def test_cpu_profile_end_to_end_resumes_and_forces(tmp_path):
    proc = bench(tmp_path, *ONE_CPU_CASE)
    assert proc.returncode == 0, output(proc)[-4000:]
    assert "1 passed" in proc.stdout
    reports = sorted((tmp_path / "report").iterdir())
    assert len(reports) == 1
    run = reports[0]
    for name in (
        "results.csv",
        "training_days.md",
        "optimal_configs.md",
        "costs.md",
        "costs.csv",
        "index.html",
    ):
        assert (run / name).is_file(), name
    assert f"report: {run}" in proc.stdout
    plan = json.loads((run / "best" / CPU_ID / "plan.json").read_text())
    assert plan["case"]["id"] == CPU_ID
    assert plan["training_args"]["max_steps"] == 1000  # the recipe's, not the timing run's
    assert plan["micro_batch_size"] * plan["grad_acc_steps"] == 8
    assert CPU_ID in (run / "results.csv").read_text()
    records = files_under(tmp_path / "results" / CPU_ID)
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "ok"
    # The search is recorded once, with its wall time and what it measured.
    (search,) = files_under(tmp_path / "results" / "_search")
    assert json.loads(search.read_text())["measured"] == 1
    jobs = sorted((tmp_path / "jobs" / CPU_ID).iterdir())
    assert len(jobs) == 1

    # Again: the stored result is reused, nothing is measured.
    again = bench(tmp_path, *ONE_CPU_CASE)
    assert again.returncode == 0, output(again)[-4000:]
    assert "1 passed" in again.stdout
    now = files_under(tmp_path / "results" / CPU_ID)
    # The store key holds a hash of harness/ and models/: an edit there between the two runs
    # (a concurrent checkout change) legitimately re-measures. Say so rather than blame resume.
    fingerprints = {p.name.split("-")[0] for p in now}
    assert len(fingerprints) == 1, f"code fingerprint changed between the runs: {sorted(fingerprints)}"
    assert now == records
    assert files_under(tmp_path / "results" / "_search") == [search]  # nothing ran: no new search record
    assert sorted((tmp_path / "jobs" / CPU_ID).iterdir()) == jobs
    assert len(list((tmp_path / "report").iterdir())) == 2  # a report per session all the same

    # --checks-only validates the stored prediction: one validation job, no new measurement.
    checked = bench(tmp_path, *ONE_CPU_CASE, "--checks-only", "--validate", "--validation-steps", "3")
    assert checked.returncode == 0, output(checked)[-4000:]
    assert files_under(tmp_path / "results" / CPU_ID) == records
    validation = json.loads(files_under(tmp_path / "results" / "_validation")[0].read_text())
    assert validation["case_id"] == CPU_ID and validation["steps"] == 3
    assert validation["predicted_step_s"] == json.loads(records[0].read_text())["step_time_s"]
    attempts = sorted((tmp_path / "jobs" / CPU_ID).iterdir())
    assert [p.name for p in attempts[-1].iterdir()] == ["validate"]

    # A validation in parts: 2 of 3 steps now (the test skips and says so), the last one in the next run.
    args = (
        *ONE_CPU_CASE,
        "--checks-only",
        "--validate",
        "--validation-steps",
        "3",
        "--validation-chunk",
        "2",
    )
    first = bench(tmp_path, *args, "-rs")
    assert first.returncode == 0, output(first)[-4000:]
    assert skip_reasons(first) == [f"validation of {CPU_ID} in parts: 2 of 3 steps done; run again to go on"]
    assert len(files_under(tmp_path / "results" / "_validation")) == 1
    # The unfinished validation does not stand in for the stored one in this run's report.
    report = max((tmp_path / "report").iterdir(), key=lambda p: p.stat().st_mtime)
    with (report / "validation.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["case_id"] == CPU_ID and row["error_pct"] and row["steps"] == "3"
    second = bench(tmp_path, *args)
    assert second.returncode == 0 and "1 passed" in second.stdout, output(second)[-4000:]
    parts = [json.loads(p.read_text()) for p in files_under(tmp_path / "results" / "_validation-part")]
    assert sorted(part["steps"] for part in parts) == [1, 2, 3]  # the first, whole validation is a part too
    newest = max(
        (json.loads(p.read_text()) for p in files_under(tmp_path / "results" / "_validation")),
        key=lambda r: r["created"],
    )
    assert newest["steps"] == 3 and len(newest["part_ids"]) == 2
    assert newest["same_instance"] is True  # predicted and validated on this machine's boot
    assert newest["measured_step_s"] == pytest.approx(
        sum(part["window_s"] for part in parts if part["part_id"] in newest["part_ids"]) / 3
    )

    # --force measures again and appends a record. A 2 s job timeout keeps this cheap: the record
    # is the new measurement's (a timeout), which the stored "ok" could not have produced.
    forced = bench(tmp_path, *ONE_CPU_CASE, "--force", "--job-timeout", "2")
    assert forced.returncode == 1, output(forced)[-4000:]
    new = [p for p in files_under(tmp_path / "results" / CPU_ID) if p not in records]
    assert len(new) == 1
    record = json.loads(new[0].read_text())
    assert record["status"] == "error" and re.search(r"timed out after \d+ s", record["reason"]), record
    assert len(list((tmp_path / "jobs" / CPU_ID).iterdir())) == 5


def test_checks_only_needs_a_check_and_a_stored_result(tmp_path):
    proc = bench(tmp_path, *ONE_CPU_CASE, "--checks-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, output(proc)[-2000:]
    assert "add --validate and/or --parity" in proc.stderr
    proc = bench(tmp_path, *ONE_CPU_CASE, "--validation-chunk", "2")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, output(proc)[-2000:]
    assert "--validation-chunk splits a validation: add --validate" in proc.stderr
    proc = bench(tmp_path, *ONE_CPU_CASE, "--checks-only", "--validate", "-rs")
    assert proc.returncode == 0, output(proc)[-2000:]
    assert skip_reasons(proc) == [f"no stored result of {CPU_ID} on this machine to validate"]
    assert not (tmp_path / "jobs").exists()


@pytest.fixture(scope="module")
def timed_out_pair(tmp_path_factory):
    """Two cpu cases of 42 collected (40 deselected by -m), each ended by a 2 s job timeout."""
    tmp = tmp_path_factory.mktemp("timeouts")
    proc = bench(tmp, "-m", "cpu", "--models", "tiny-vit", "--methods", "naive", "--job-timeout", "2")
    # Not an assert: a broken setup must read as an error of the fixture, not a failed check.
    if proc.returncode != 1 or not re.search(r"2 failed, \d+ deselected", proc.stdout):
        raise RuntimeError(f"unexpected run (exit {proc.returncode}):\n{output(proc)[-4000:]}")
    return tmp, proc


@pytest.mark.slow
def test_progress_lines_are_shown_live(timed_out_pair):
    _, proc = timed_out_pair
    before_failures = proc.stdout.split(" FAILURES ")[0]
    assert "[tiny-vit-cpux1-naive] time mb=8 gas=1/1" in before_failures


@pytest.mark.slow
def test_time_left_counts_only_selected_cases(timed_out_pair):
    _, proc = timed_out_pair
    left = re.findall(r"left for (\d+) job\(s\)", proc.stdout)
    if not left:
        raise RuntimeError(f"no time-left estimate in the output:\n{proc.stdout[-3000:]}")
    # The second search (one case: its timing and a step-down at most) after the first one's job;
    # the 40 deselected cases count for nothing.
    assert left == ["2"], left


@pytest.mark.slow
def test_a_stored_error_is_measured_again(timed_out_pair):
    tmp, _ = timed_out_pair
    if len(files_under(tmp / "results" / CPU_ID)) != 1:
        raise RuntimeError("expected the one stored error of the timed-out run")
    proc = bench(tmp, *ONE_CPU_CASE, "--job-timeout", "2")
    if proc.returncode != 1:  # measured again or not, the case ends in a timeout error
        raise RuntimeError(output(proc)[-3000:])
    assert len(files_under(tmp / "results" / CPU_ID)) == 2
