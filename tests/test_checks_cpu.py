"""Checks of results on the CPU: loss parity against naive eager, validation runs, sanity gates."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from harness.cases import Case
from harness.checks import PARITY_TOLERANCE, loss_parity, validate
from harness.engine import EngineOptions, measure_case
from harness.methods import FREE_LUNCH, NAIVE, Method
from harness.result import Result, sanity_problems
from harness.store import ResultStore


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
    record = loss_parity(case, store=store, options=options(tmp_path), steps=4)
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
        case, store=ResultStore(tmp_path / "s"), options=opts, steps=3, references=references
    )
    assert record["reference_losses"] == [100.0, 100.0, 100.0] and not record["passed"]
    assert not list(opts.work_dir.rglob("parity-reference"))


def test_parity_of_a_case_that_cannot_run_here_says_why(tmp_path):
    case = Case(
        model="tiny-vit",
        gpu_type="cpu",
        gpus_per_node=2,
        method=Method(free_lunch=True, sharding="fsdp_full"),
    )
    record = loss_parity(case, store=ResultStore(tmp_path / "s"), options=options(tmp_path))
    assert not record["passed"] and "FSDP" in record["skipped_reason"]


@pytest.mark.slow
def test_validation_trains_at_the_full_accumulation_and_compares(tmp_path):
    store = ResultStore(tmp_path / "store")
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    result = measure_case(case, store=store, environment={}, fingerprint="t", options=options(tmp_path))
    assert result.status == "ok" and result.grad_acc_steps == 8 and result.measured_grad_acc_steps == 2
    record = validate(result, store=store, options=options(tmp_path), steps=20)
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
