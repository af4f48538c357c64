"""The fault-injection matrix: every fault ends in the right verdict and reason, no process of a job
outlives it (checked by PID), and every completed result survives.

Real torchrun jobs on the CPU (tiny-vit, gloo). Each test records what it proved in
`runs/faults/<test>.json`; the report plugin prints "faults survived: N of M" from that folder, so the
figure of the last run of this module is visible in CI's output.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from bench_runs import REPO, bench_cmd, bench_env

from harness.cases import Case
from harness.engine import Engine, EngineOptions
from harness.launch import LocalLauncher
from harness.methods import FREE_LUNCH, NAIVE
from harness.result import Result
from harness.search import get_strategy
from harness.store import ResultStore

pytestmark = pytest.mark.slow
FAULTS_DIR = REPO / "runs" / "faults"
# tiny-vit: the cheapest model to start and step on a CPU; what is tested here is the job, not the model.
TWO = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=2, method=NAIVE)
ONE = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)


@pytest.fixture(autouse=True)
def survived(request):
    """Writes this test's line of the matrix: passed (the fault ended right) or not (tests/conftest.py
    keeps the call's report on the item)."""
    yield
    report = getattr(request.node, "rep_call", None)
    FAULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"fault": request.node.name, "survived": bool(report and report.passed), "time": time.time()}
    (FAULTS_DIR / f"{request.node.name}.json").write_text(json.dumps(record))


def engine(tmp_path: Path, *, fault: str | None = None, **options) -> Engine:
    env = {"PRETRAIN_BENCH_FAULT": fault} if fault else {}
    opts = EngineOptions(
        work_dir=tmp_path / "jobs",
        timeout_s=options.pop("timeout_s", 240),
        max_micro_batch=options.pop("max_micro_batch", 2),
        max_measured_grad_acc=2,
        env=env,
        **options,
    )
    return Engine(
        store=ResultStore(tmp_path / "store"),
        environment={"gpu_name": "cpu"},
        fingerprint=lambda case: "faults",
        options=opts,
        launcher=LocalLauncher(),
    )


def measure(tmp_path: Path, case: Case, **kwargs) -> Result:
    return engine(tmp_path, **kwargs).search([case], get_strategy("exhaustive"))[case.id]


def worker_pids(root: Path) -> list[int]:
    pids = []
    for events in root.rglob("events-rank*.jsonl"):
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "start":
                pids.append(event["pid"])
    return pids


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_nothing_left(root: Path, timeout_s: float = 15.0) -> None:
    """No worker of any job under `root` runs (PIDs from their start events, and any process whose
    command line names a job file under `root`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in worker_pids(root) if running(pid)]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if str(root) in cmd and "harness.worker" in cmd:
                    left.append(int(proc.name))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"processes outlived their job: {sorted(set(left))}"


# --- faults inside a job ------------------------------------------------------------------------


def test_oom_on_one_rank_is_infeasible_with_its_figures(tmp_path):
    result = measure(tmp_path, TWO, probe="always", fault="oom:rank=1:mb=1", max_micro_batch=1)
    assert result.status == "infeasible"
    assert result.reason.startswith("OOM at micro-batch 1")
    assert_nothing_left(tmp_path)


def test_a_crash_on_one_rank_names_that_rank_and_its_exception(tmp_path):
    result = measure(tmp_path, TWO, fault="crash:rank=1:step=1")
    assert result.status == "error"
    assert "rank 1: RuntimeError: injected crash on rank 1" in result.reason, result.reason
    assert "Connection closed" not in result.reason
    assert_nothing_left(tmp_path)


def test_a_killed_rank_is_named_with_its_signal(tmp_path):
    result = measure(tmp_path, TWO, fault="kill:rank=1:step=1")
    assert result.status == "error"
    assert "rank 1 was killed by SIGKILL" in result.reason, result.reason
    assert_nothing_left(tmp_path)


def test_a_hung_rank_that_ignores_sigterm_ends_at_the_job_timeout_with_its_stack(tmp_path):
    """The hang (the job's timeout ends it) and the worker that ignores SIGTERM (only SIGKILL does) in
    one job: rank 1 ignores SIGTERM and sleeps for ever."""
    result = measure(tmp_path, TWO, fault="stubborn:rank=1:step=1", timeout_s=25)
    assert result.status == "error"
    assert "timed out after" in result.reason
    # Before the kill each worker printed its stacks: the hung rank is seen sleeping in the fault.
    log = next((tmp_path / "jobs").rglob("time-mb2/output.log")).read_text()
    assert "Current thread" in log or "Thread 0x" in log
    assert "faults.py" in log
    assert_nothing_left(tmp_path)


def test_a_collective_timeout_ends_in_gloos_own_error(tmp_path):
    # Rank 1 sleeps; rank 0 waits in its next collective until the process group's 8-s timeout.
    result = measure(tmp_path, TWO, fault="hang:rank=1:step=1:pg_timeout=8", timeout_s=200)
    assert result.status == "error"
    assert "timed out after" not in result.reason, "the job's own timeout came first"
    assert "rank 0:" in result.reason and "imed out" in result.reason, result.reason
    assert_nothing_left(tmp_path)


def test_a_compile_failure_is_named_by_its_inductor_error(tmp_path):
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH)
    result = measure(tmp_path, case, fault="compile:rank=0")
    assert result.status == "error"
    assert "InductorError" in result.reason and "C++ compiler" in result.reason, result.reason
    assert_nothing_left(tmp_path)


def test_a_worker_that_exits_0_without_a_result_says_so(tmp_path):
    result = measure(tmp_path, ONE, fault="exit0:rank=0:step=1")
    assert result.status == "error"
    assert "exited with code 0 without a result" in result.reason, result.reason
    assert_nothing_left(tmp_path)


def test_torchrun_killed_outright_takes_its_workers_with_it(tmp_path):
    """SIGKILL to torchrun reaches none of its workers (each runs in a session of its own): they die
    with it because each asked the kernel to (PR_SET_PDEATHSIG)."""
    eng = engine(tmp_path, fault="hang:rank=1:step=1", timeout_s=120)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(r=eng.search([TWO], get_strategy("exhaustive"))))
    thread.start()
    deadline = time.monotonic() + 120
    while len(worker_pids(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    agents = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_torchrun_of(p, tmp_path)]
    assert agents, "torchrun not found"
    for agent in agents:
        os.kill(int(agent.name), signal.SIGKILL)
    thread.join(timeout=120)
    assert_nothing_left(tmp_path, timeout_s=10)
    result = outcome["r"][TWO.id]
    assert result.status == "error" and "signal 9" in result.reason, result.reason


def _is_torchrun_of(proc: Path, root: Path) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "torch.distributed.run" in cmd and str(root) in cmd


# --- faults of the run and its store -------------------------------------------------------------


def bench(
    tmp_path: Path, *args: str, env: dict | None = None, results: Path | None = None
) -> subprocess.Popen:
    cases = ("-m", "cpu", "--models", "tiny-vit", "--methods", "naive")
    return subprocess.Popen(
        bench_cmd(tmp_path, *cases, *args, results=results),
        cwd=REPO,
        env=bench_env("cpu", env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_workers(tmp_path: Path, case_id: str, proc: subprocess.Popen, count: int = 2) -> None:
    deadline = time.monotonic() + 240
    while len(worker_pids(tmp_path / "jobs" / case_id)) < count:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the job never started:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    time.sleep(1.0)  # into its first step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_pytest_stopped_mid_run_keeps_what_finished_and_leaves_nothing(tmp_path, sig):
    proc = bench(tmp_path, "--gpu-counts", "1,2", env={"PRETRAIN_BENCH_FAULT": "hang:rank=1:step=1"})
    wait_for_workers(tmp_path, "tiny-vit-cpux2-naive", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert_nothing_left(tmp_path)
    # The one-process case finished before the signal: stored, and reported.
    stored = [
        p.parent.name for p in (tmp_path / "results").glob("*/*.json") if not p.parent.name.startswith("_")
    ]
    assert stored == ["tiny-vit-cpux1-naive"]
    # The cut-off job recorded no outcome: it did not end by itself, and a rerun runs it again.
    assert not list((tmp_path / "jobs" / "tiny-vit-cpux2-naive").rglob("outcome.json"))
    assert f"stopped by signal {int(sig)}" in out or sig == signal.SIGINT
    (report,) = (tmp_path / "report").iterdir()
    assert "tiny-vit-cpux1-naive" in (report / "results.csv").read_text()


def test_pytest_killed_outright_leaves_no_worker(tmp_path):
    """SIGKILL to pytest runs none of its clean-up: torchrun dies with the controller thread that
    started it, and the workers with torchrun (parent-death signals all the way down)."""
    proc = bench(tmp_path, "--gpu-counts", "2", env={"PRETRAIN_BENCH_FAULT": "hang:rank=1:step=1"})
    wait_for_workers(tmp_path, "tiny-vit-cpux2-naive", proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert_nothing_left(tmp_path)


def test_corrupt_and_wrong_shaped_records_are_skipped_and_the_run_reports(tmp_path):
    folder = tmp_path / "results" / "tiny-vit-cpux1-naive"
    folder.mkdir(parents=True)
    (folder / "corrupt.json").write_text("{not json")
    (folder / "list.json").write_text("[]")
    (folder / "nocase.json").write_text(json.dumps({"status": "ok"}))
    proc = bench(tmp_path, "--gpu-counts", "1")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "corrupt record" in out and "malformed record" in out
    (report,) = (tmp_path / "report").iterdir()
    assert "tiny-vit-cpux1-naive" in (report / "results.csv").read_text()


def test_an_unwritable_store_is_refused_before_anything_is_measured(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = bench(tmp_path, "--gpu-counts", "1", results=blocker / "results")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "is not writable" in out and "nothing was measured" in out
    assert not (tmp_path / "jobs").exists()


def test_a_full_disk_after_measuring_keeps_the_result_and_says_where(tmp_path, monkeypatch):
    from harness import store as store_module

    real = store_module._write_synced
    store_root = tmp_path / "store"

    def full(path: Path, text: str) -> None:
        if store_root in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    eng = engine(tmp_path)
    monkeypatch.setattr(store_module, "_write_synced", full)
    with pytest.raises(store_module.StoreWriteError) as raised:
        eng.search([ONE], get_strategy("exhaustive"))
    message = str(raised.value)
    assert "No space left on device" in message and "kept it at" in message
    kept = raised.value.kept
    assert kept is not None and json.loads(kept.read_text())["status"] == "ok"
    assert not list((tmp_path / "store").rglob("*.tmp"))
    assert_nothing_left(tmp_path)


def test_a_second_run_on_the_same_store_is_refused_naming_the_first(tmp_path):
    first = bench(tmp_path, "--gpu-counts", "2", env={"PRETRAIN_BENCH_FAULT": "hang:rank=1:step=1"})
    wait_for_workers(tmp_path, "tiny-vit-cpux2-naive", first)
    second = bench(tmp_path / "second", "--gpu-counts", "1", results=tmp_path / "results")
    out, _ = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=90)
    assert second.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert f"pid {first.pid}" in out and "in use by another run" in out
    assert not (tmp_path / "second" / "jobs").exists()
    assert_nothing_left(tmp_path)
