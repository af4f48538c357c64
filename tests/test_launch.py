"""The launcher's command lines and failure summaries (no jobs run here)."""

from __future__ import annotations

from pathlib import Path

from harness.launch import JobOutcome, last_error, torchrun_command


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


def test_last_error_prefers_a_ranks_exception_over_the_peers_sigterm():
    output = "\n".join(
        [
            '[rank1]:   File "builder.py", line 710, in <genexpr>',
            "[rank1]: ValueError: invalid literal for int() with base 10: '0a'",
            "W1122 Sending process 4131 closing signal SIGTERM",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "  traceback : Signal 15 (SIGTERM) received by PID 4131",
        ]
    )
    assert last_error(output) == "ValueError: invalid literal for int() with base 10: '0a'"
    assert (
        last_error("  traceback : Signal 9 (SIGKILL) received by PID 7")
        == "Signal 9 (SIGKILL) received by PID 7"
    )
    assert last_error("all fine") == ""


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

    job = {"mode": "time", "plan": {"training_args": {"output_dir": "a/trainer", "betas": (0.9, 0.95)}}}
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "job.json").write_text(
        json.dumps(job | {"plan": {"training_args": {"output_dir": "b/trainer", "betas": [0.9, 0.95]}}})
    )
    (earlier / "result.json").write_text(json.dumps({"step_time_s": 1.0}))
    (earlier / "output.log").write_text("")
    (earlier / OUTCOME_FILE).write_text(json.dumps({"returncode": 0, "timed_out": False, "elapsed_s": 3.0}))
    done = finished_outcome(job, earlier)
    assert done is not None and done.ok and done.result == {"step_time_s": 1.0}
    assert finished_outcome(job | {"mode": "probe"}, earlier) is None  # another job
    (earlier / OUTCOME_FILE).write_text(json.dumps({"returncode": -9, "timed_out": True, "elapsed_s": 9.0}))
    assert finished_outcome(job, earlier) is None  # a timeout says nothing: run it again
    # No outcome recorded, a result written while this controller runs: from a job orphaned by a
    # controller killed outright, which may have trained beside this one's jobs. Run it again.
    (earlier / OUTCOME_FILE).unlink()
    assert finished_outcome(job, earlier) is None
    # The launcher stopped after rank 0 wrote the result, before this controller started: it stands.
    before = CONTROLLER_STARTED - 60
    os.utime(earlier / "result.json", (before, before))
    stopped = finished_outcome(job, earlier)
    assert stopped is not None and stopped.ok and stopped.result == {"step_time_s": 1.0}
    (earlier / "result.json").unlink()
    assert finished_outcome(job, earlier) is None  # stopped before any result: run it again
