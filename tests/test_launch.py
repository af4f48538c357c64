"""The launcher's command lines, failure summaries and job reuse (no jobs run here)."""

from __future__ import annotations

from pathlib import Path

from harness.failure import first_failure, last_exception
from harness.job import Job
from harness.launch import JobOutcome, torchrun_command


def test_one_node_uses_a_local_rendezvous_on_a_free_port():
    a = torchrun_command(2, Path("/tmp/job.json"))
    assert "--nproc-per-node=2" in a and "--nnodes=1" in a and "--max-restarts=0" in a
    assert a[-3:] == ["-m", "harness.worker", "/tmp/job.json"]
    endpoint = [x for x in a if x.startswith("--rdzv-endpoint=")][0]
    assert endpoint.startswith("--rdzv-endpoint=127.0.0.1:")


def test_several_nodes_meet_at_the_allocation_master(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "node001")
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cmd = torchrun_command(8, Path("job.json"), num_nodes=2)
    assert "--nnodes=2" in cmd and "--nproc-per-node=8" in cmd
    assert "--rdzv-endpoint=node001:29555" in cmd and "--rdzv-id=4242" in cmd and "--rdzv-backend=c10d" in cmd


def test_last_exception_prefers_a_ranks_exception_over_the_peers_sigterm():
    output = "\n".join(
        [
            '[rank1]:   File "builder.py", line 710, in <genexpr>',
            "[rank1]: ValueError: invalid literal for int() with base 10: '0a'",
            "W1122 Sending process 4131 closing signal SIGTERM",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "  traceback : Signal 15 (SIGTERM) received by PID 4131",
        ]
    )
    assert last_exception(output) == "ValueError: invalid literal for int() with base 10: '0a'"
    assert (
        last_exception("  traceback : Signal 9 (SIGKILL) received by PID 7")
        == "Signal 9 (SIGKILL) received by PID 7"
    )
    assert last_exception("all fine") == ""


def test_a_timed_out_probe_names_the_micro_batch_it_was_trying():
    events = [
        {"event": "try", "micro_batch": 32, "rank": 0},
        {"event": "fit", "micro_batch": 32, "rank": 0},
        {"event": "try", "micro_batch": 64, "rank": 0},
    ]
    outcome = JobOutcome(
        returncode=-9,
        timed_out=True,
        elapsed_s=301.0,
        result=None,
        events=events,
        output_tail="",
        job_dir=Path("jobs/x/probe"),
    )
    assert outcome.unfinished_try() == 64
    assert outcome.failure().startswith(
        "job timed out after 301 s and was killed while trying micro-batch 64"
    )
    finished = JobOutcome(
        returncode=75,
        timed_out=False,
        elapsed_s=5.0,
        result=None,
        events=[*events, {"event": "oom", "micro_batch": 64, "rank": 0}],
        output_tail="",
        job_dir=Path("jobs/x/probe"),
    )
    assert finished.unfinished_try() is None


def test_a_job_compares_equal_to_its_job_json_from_another_folder(tmp_path):
    import json
    import os

    from harness.launch import CONTROLLER_STARTED, OUTCOME_FILE, finished_outcome

    def job(folder: str, mode: str = "time") -> Job:
        plan = {
            "case": {"id": "x"},
            "training_args": {"output_dir": f"{folder}/trainer", "betas": (0.9, 0.95)},
        }
        return Job(mode=mode, plan=plan, nproc=1, device="cpu", timeout_s=60.0)

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    # Written from another folder, with another timeout: still the same job.
    (earlier / "job.json").write_text(json.dumps(job("b").to_dict() | {"timeout_s": 999.0}))
    (earlier / "result.json").write_text(json.dumps({"step_time_s": 1.0}))
    (earlier / "output.log").write_text("")
    (earlier / OUTCOME_FILE).write_text(json.dumps({"returncode": 0, "timed_out": False, "elapsed_s": 3.0}))
    done = finished_outcome(job("a"), earlier)
    assert done is not None and done.ok and done.reused and done.result == {"step_time_s": 1.0}
    assert finished_outcome(job("a", mode="train"), earlier) is None  # another job
    (earlier / OUTCOME_FILE).write_text(json.dumps({"returncode": -9, "timed_out": True, "elapsed_s": 9.0}))
    assert finished_outcome(job("a"), earlier) is None  # a timeout says nothing: run it again
    # No outcome recorded, a result written while this controller runs: from a job orphaned by a
    # controller killed outright, which may have trained beside this one's jobs. Run it again.
    (earlier / OUTCOME_FILE).unlink()
    assert finished_outcome(job("a"), earlier) is None
    # The launcher stopped after rank 0 wrote the result, before this controller started: it stands.
    before = CONTROLLER_STARTED - 60
    os.utime(earlier / "result.json", (before, before))
    stopped = finished_outcome(job("a"), earlier)
    assert stopped is not None and stopped.ok and stopped.result == {"step_time_s": 1.0}
    (earlier / "result.json").unlink()
    assert finished_outcome(job("a"), earlier) is None  # stopped before any result: run it again


def test_the_first_failing_rank_is_named_by_its_own_error_not_its_peers():
    events = [
        {
            "event": "error",
            "rank": 0,
            "time": 5.0,
            "type": "RuntimeError",
            "message": "Connection closed by peer",
        },
        {"event": "error", "rank": 1, "time": 4.0, "type": "ValueError", "message": "bad value"},
    ]
    assert first_failure(events, "") == "rank 1: ValueError: bad value"
    # A peer's own error counts even when it came later than a connection error.
    events[1]["time"] = 6.0
    assert first_failure(events, "") == "rank 1: ValueError: bad value"


def test_a_rank_killed_by_a_signal_is_named_from_torchruns_summary():
    events = [
        {
            "event": "error",
            "rank": 0,
            "time": 5.0,
            "type": "RuntimeError",
            "message": "[gloo] Connection closed by peer [127.0.0.1]:1234",
        }
    ]
    log = "\n".join(
        [
            "Failures:",
            "[1]:",
            "  time      : 2026-11-30_10:00:00",
            "  rank      : 0 (local_rank: 0)",
            "  exitcode  : 1 (pid: 11)",
            "Root Cause (first observed failure):",
            "[0]:",
            "  rank      : 1 (local_rank: 1)",
            "  exitcode  : -9 (pid: 12)",
        ]
    )
    assert first_failure(events, log).startswith("rank 1 was killed by SIGKILL")
    # Nothing recorded: a compile error's exception far above the tail still counts.
    long_log = "InductorError: InvalidCxxCompiler: No working C++ compiler\n" + "  frame\n" * 5000
    assert first_failure([], long_log).startswith("InductorError: InvalidCxxCompiler")


def test_a_job_that_exits_0_without_a_result_says_so(tmp_path):
    outcome = JobOutcome(
        returncode=0, timed_out=False, elapsed_s=1.0, result=None, events=[], output_tail="", job_dir=tmp_path
    )
    assert outcome.failure().startswith(
        "job exited with code 0 without a result (rank 0 wrote no result.json)"
    )


def test_a_job_reads_back_as_it_was_written(tmp_path):
    from harness.job import read_job

    job = Job(
        mode="probe",
        plan={"case": {"id": "x"}, "training_args": {"output_dir": "o"}},
        nproc=2,
        device="cpu",
        micro_batches=(2, 4),
        env=(("A", "1"),),
    )
    assert read_job(job.write(tmp_path)) == job
