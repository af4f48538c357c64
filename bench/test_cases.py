"""One test per benchmark case: measure through the engine, record, judge."""

from __future__ import annotations

import math

import pytest

from harness.cases import Case


def test_case(case: Case, engine, record_property, benchmark) -> None:
    from reports.history import record_samples

    result = engine.measure(case)
    record_property("pretrain_bench_result", result.to_dict())
    if result.status == "infeasible":
        pytest.skip(f"infeasible: {result.reason}")
    if result.status == "error":
        pytest.fail(f"{case.id}: {result.reason}", pytrace=False)
    samples = result.timing["step_samples_s"]
    assert len(samples) >= 5
    assert all(math.isfinite(s) and s > 0 for s in samples)
    assert result.mfu is None or 0 < result.mfu <= 1.0, f"MFU {result.mfu} is outside (0, 1]"
    record_samples(
        benchmark,
        samples,
        {
            "case_id": case.id,
            "micro_batch_size": result.micro_batch_size,
            "grad_acc_steps": result.grad_acc_steps,
            "training_days": result.training_days,
            "mfu": result.mfu,
        },
    )
