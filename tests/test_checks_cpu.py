"""Checks of results on the CPU: loss parity against naive eager, validation runs, sanity gates."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from harness import faults
from harness.cases import Case
from harness.checks import PARITY_TOLERANCE, loss_parity, validate
from harness.engine import Engine, EngineOptions
from harness.methods import FREE_LUNCH, NAIVE, Method
from harness.result import Result, micro_batch_limit, sanity_problems
from harness.search import measure_case
from harness.store import ResultStore


def make_engine(store: ResultStore, options: EngineOptions, launcher=None) -> Engine:
    return Engine(
        store=store, environment={}, fingerprint=lambda case: "t", options=options, launcher=launcher
    )


def options(tmp_path) -> EngineOptions:
    return EngineOptions(
        work_dir=tmp_path / "jobs", timeout_s=300, max_micro_batch=1, max_measured_grad_acc=2
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [FREE_LUNCH, Method(free_lunch=True, activation_checkpointing=True)],
    ids=["compile-sdpa", "compile-sdpa-ckpt"],
)
def test_free_lunch_and_checkpointing_match_naive_eager_losses(tmp_path, method):
    store = ResultStore(tmp_path / "store")
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=method)
    record = loss_parity(case, engine=make_engine(store, options(tmp_path)), steps=4)
    assert record["reference_case_id"] == "tiny-vit-cpux1-naive"
    assert len(record["losses"]) == len(record["reference_losses"]) == 4
    assert all(math.isfinite(x) for x in record["losses"])
    # Identical weights and batches: the first step's forward agrees to rounding.
    assert record["losses"][0] == pytest.approx(record["reference_losses"][0], rel=1e-5)
    assert record["passed"], record
    assert record["tolerance"] == PARITY_TOLERANCE["fp32"]
    assert store.checks("parity")[0]["case_id"] == case.id


def test_parity_reuses_the_naive_reference_of_earlier_cases(tmp_path):
    case = Case(
        model="tiny-vit",
        gpu_type="cpu",
        gpus_per_node=1,
        method=Method(free_lunch=False, activation_checkpointing=True),
    )
    # Losses of an earlier run of the reference: far from this method's, so the record must fail.
    references = {("tiny-vit-cpux1-naive", 1, 2, 3): [100.0, 100.0, 100.0]}
    opts = options(tmp_path)
    record = loss_parity(
        case, engine=make_engine(ResultStore(tmp_path / "s"), opts), steps=3, references=references
    )
    assert record["reference_losses"] == [100.0, 100.0, 100.0] and not record["passed"]
    assert not list(opts.work_dir.rglob("parity-reference"))


def test_parity_of_a_case_that_cannot_run_here_says_why(tmp_path):
    case = Case(
        model="tiny-vit",
        gpu_type="cpu",
        gpus_per_node=2,
        method=Method(free_lunch=True, sharding="zero2"),
    )
    record = loss_parity(case, engine=make_engine(ResultStore(tmp_path / "s"), options(tmp_path)))
    assert not record["passed"] and "DeepSpeed" in record["skipped_reason"]


def test_parity_whose_reference_does_not_fit_says_so_and_spends_nothing_on_the_method(tmp_path, monkeypatch):
    """Mamba's reference scan does not fit micro-batch 1 on an 80 GB GPU: no comparison is possible,
    and that is a reason in the record (the test skips with it), not a traceback."""
    monkeypatch.setenv(faults.ENV, "oom:rank=0")  # every run that starts here runs out of memory
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH)
    store, opts = ResultStore(tmp_path / "s"), options(tmp_path)
    record = loss_parity(case, engine=make_engine(store, opts), steps=2)
    assert not record["passed"] and record["losses"] == []
    expected = "naive eager, the reference, does not fit here: OOM at micro-batch 1"
    assert record["skipped_reason"].startswith(expected)
    assert store.checks("parity") == [record]
    assert list(opts.work_dir.rglob("parity-reference")) and not list(opts.work_dir.rglob("parity"))


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp_full", "fsdp_grad_op"])
def test_fsdp_matches_naive_ddp_losses(tmp_path, sharding):
    """FSDP2 over gloo against naive DDP on the same seed and batches: sharding changes where the
    weights live and how gradients are reduced, not what is learned."""
    case = Case(
        model="pythia-14m",
        gpu_type="cpu",
        gpus_per_node=2,
        method=Method(free_lunch=False, sharding=sharding),
    )
    record = loss_parity(case, engine=make_engine(ResultStore(tmp_path / "s"), options(tmp_path)), steps=4)
    assert record["reference_case_id"] == "pythia-14m-cpux2-naive"
    assert record["wrapped_model"].startswith("FSDP")
    assert record["passed"], record
    assert record["losses"][0] == pytest.approx(record["reference_losses"][0], rel=1e-5)


@pytest.mark.slow
def test_validation_trains_at_the_full_accumulation_and_compares(tmp_path):
    store = ResultStore(tmp_path / "store")
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    result = measure_case(case, store=store, environment={}, fingerprint="t", options=options(tmp_path))
    assert result.status == "ok" and result.grad_acc_steps == 8 and result.measured_grad_acc_steps == 2
    record = validate(result, engine=make_engine(store, options(tmp_path)), steps=20)
    assert record["steps"] == 20 and record["grad_acc_steps"] == 8 and record["machine"] == "cpu x1"
    assert record["measured_step_s"] > 0
    expected = 100 * (record["predicted_step_s"] - record["measured_step_s"]) / record["measured_step_s"]
    assert record["error_pct"] == pytest.approx(expected)
    # The error itself is a reported figure (validation.csv), not asserted: a shared CPU is noisy.
    assert store.checks("validation")[0]["case_id"] == case.id


def ok_result(**timing) -> Result:
    case = Case(model="pythia-14m", gpu_type="cpu", method=NAIVE)
    base = {"step_samples_s": [1.0] * 5, "losses": [2.0] * 7}
    return Result(case=case, status="ok", timing=base | timing, mfu=0.4)


def test_sanity_gates():
    assert sanity_problems(ok_result()) == []
    assert "exceeds the hardware peak" in sanity_problems(replace(ok_result(), mfu=1.2))[0]
    assert "not finite" in sanity_problems(ok_result(losses=[2.0, float("nan")]))[0]
    assert "at least 5" in sanity_problems(ok_result(step_samples_s=[1.0] * 4))[0]
    assert "finite positive" in sanity_problems(ok_result(step_samples_s=[1.0] * 4 + [0.0]))[0]


def test_what_bounded_the_micro_batch_is_read_from_the_result():
    fit = [{"event": "fit", "micro_batch": 1, "implied_by": 2}, {"event": "fit", "micro_batch": 2}]
    oom = {"event": "oom", "micro_batch": 4, "rank": 0}
    probed = replace(ok_result(), micro_batch_size=2, grad_acc_steps=4, probe=fit)
    assert micro_batch_limit(replace(probed, probe=[*fit, oom])) == "memory"
    assert micro_batch_limit(probed) == "cap"  # stopped on a fit below the per-GPU batch
    # The probe's step fitted at 4 but the timed run did not, and stepped down: memory again.
    stepped = replace(probed, probe=[*fit, {"event": "fit", "micro_batch": 4}], reason="OOM at micro-batch 4")
    assert micro_batch_limit(stepped) == "memory"
    assert micro_batch_limit(replace(probed, grad_acc_steps=1)) == "batch"
    assert micro_batch_limit(replace(probed, probe=[])) == "not probed"
    assert (
        micro_batch_limit(Result(case=probed.case, status="infeasible", reason="OOM at micro-batch 1")) == ""
    )


# --- validation in parts (the jobs faked: what is combined, and when) ---------------------------


class FakeJobs:
    """Stands in for the launcher: each validation job 'measures' the next window time on the next boot."""

    def __init__(self, monkeypatch, windows: list[float], boots: list[str]):
        from harness.env import code_version
        from harness.launch import JobOutcome, LocalLauncher

        self.calls: list[int] = []
        self.timeouts: list[float] = []

        def run(launcher, job, job_dir, *, reuse=()):
            assert job.mode == "validate" and job.plan["fake"] == "plan"
            self.calls.append(job.timed_steps)
            self.timeouts.append(job.timeout_s)
            result = {
                "window_step_s": windows[len(self.calls) - 1],
                "environment": {"boot_id": boots[len(self.calls) - 1], "code_version": code_version()},
            }
            return JobOutcome(
                returncode=0,
                timed_out=False,
                elapsed_s=1.0,
                result=result,
                events=[],
                output_tail="",
                job_dir=job_dir,
            )

        monkeypatch.setattr(LocalLauncher, "run", run)


def predicted(boot: str | None = "boot-a", created: float = 1.0) -> Result:
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    worker = {} if boot is None else {"boot_id": boot}
    return Result(
        case=case,
        status="ok",
        micro_batch_size=2,
        grad_acc_steps=4,
        step_time_s=1.0,
        fingerprint="fp",
        plan={"fake": "plan", "training_args": {}},
        environment={"worker": worker},
        created=created,
    )


def test_a_validation_in_parts_goes_on_where_it_stopped(tmp_path, monkeypatch):
    store, opts = ResultStore(tmp_path / "s"), options(tmp_path)
    jobs = FakeJobs(monkeypatch, windows=[1.0, 2.0, 4.0], boots=["boot-a"] * 3)
    result = predicted()
    first = validate(result, engine=make_engine(store, opts), steps=5, chunk=2)
    assert first == {"case_id": result.case.id, "steps": 5, "steps_done": 2, "parts": 1, "complete": False}
    assert store.checks("validation") == []
    assert validate(result, engine=make_engine(store, opts), steps=5, chunk=2)["steps_done"] == 4
    record = validate(result, engine=make_engine(store, opts), steps=5, chunk=2)
    assert jobs.calls == [2, 2, 1]
    # Total time over total steps: (2 x 1.0 + 2 x 2.0 + 1 x 4.0) / 5.
    assert record["measured_step_s"] == pytest.approx(2.0) and record["steps"] == 5
    assert record["complete"] and record["same_instance"] is True and len(record["part_ids"]) == 3
    # The parts are used up: a new validation of the same prediction measures afresh.
    jobs.calls.clear()
    FakeJobs(monkeypatch, windows=[3.0], boots=["boot-a"])
    again = validate(result, engine=make_engine(store, opts), steps=5)
    assert again["measured_step_s"] == pytest.approx(3.0)


def test_a_validation_job_gets_its_predicted_training_time_beyond_the_job_timeout(tmp_path, monkeypatch):
    # A 30-s step validated over 10 steps trains for 6.5 minutes after 3 warm-up steps: a job timeout
    # meant for setup and hangs must not kill it.
    opts = replace(options(tmp_path), timeout_s=100.0)
    jobs = FakeJobs(monkeypatch, windows=[30.0], boots=["boot-a"])
    validate(
        replace(predicted(), step_time_s=30.0),
        engine=make_engine(ResultStore(tmp_path / "s"), opts),
        steps=10,
    )
    assert jobs.timeouts == [pytest.approx(100.0 + 1.5 * 13 * 30.0)]


def test_parts_of_another_prediction_or_code_version_are_not_combined(tmp_path, monkeypatch):
    store, opts = ResultStore(tmp_path / "s"), options(tmp_path)
    FakeJobs(monkeypatch, windows=[1.0, 1.0], boots=["boot-a"] * 2)
    validate(predicted(created=1.0), engine=make_engine(store, opts), steps=4, chunk=2)
    stale = dict(
        store.check_history("validation-part")[0], part_id="old", code_version="0+other", created=2.0
    )
    store.append_check("validation-part", stale)
    jobs = FakeJobs(monkeypatch, windows=[5.0], boots=["boot-a"])
    progress = validate(predicted(created=9.0), engine=make_engine(store, opts), steps=4, chunk=2)
    assert (
        jobs.calls == [2] and progress["steps_done"] == 2
    )  # neither the other result's part nor the stale one


def test_enough_stored_steps_run_nothing(tmp_path, monkeypatch):
    store, opts = ResultStore(tmp_path / "s"), options(tmp_path)
    FakeJobs(monkeypatch, windows=[1.0], boots=["boot-a"])
    validate(predicted(), engine=make_engine(store, opts), steps=4, chunk=2)
    jobs = FakeJobs(monkeypatch, windows=[], boots=[])
    record = validate(predicted(), engine=make_engine(store, opts), steps=2)
    assert jobs.calls == [] and record["steps"] == 2 and record["complete"]


@pytest.mark.parametrize(
    ("predicted_on", "boots", "same"),
    [
        ("boot-a", ["boot-a", "boot-a"], True),
        ("boot-a", ["boot-b", "boot-b"], False),
        (None, ["boot-a", "boot-a"], None),
        (None, ["boot-a", "boot-b"], False),
    ],
)
def test_same_instance_needs_every_part_on_the_predicting_boot(
    tmp_path, monkeypatch, predicted_on, boots, same
):
    store, opts = ResultStore(tmp_path / "s"), options(tmp_path)
    FakeJobs(monkeypatch, windows=[1.0, 1.0], boots=boots)
    validate(predicted(predicted_on), engine=make_engine(store, opts), steps=2, chunk=1)
    record = validate(predicted(predicted_on), engine=make_engine(store, opts), steps=2, chunk=1)
    assert record["same_instance"] is same
