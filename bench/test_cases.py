"""One test per benchmark case: measure through the engine, record, judge; optionally check it."""

from __future__ import annotations

import math

import pytest

from harness.cases import Case
from harness.result import MIN_TIMED_STEPS, Result


def test_case(case: Case, engine, record_property, benchmark, request) -> None:
    from reports.history import record_samples

    config = request.config
    if config.getoption("checks_only"):
        _check(case, engine, record_property, config)
        return
    result = engine.measure(case)
    record_property("pretrain_bench_result", result.to_dict())
    if result.status == "infeasible":
        pytest.skip(f"infeasible: {result.reason}")
    if result.status == "pruned":
        pytest.skip(result.reason)  # "pruned (<rule>): <figures>": reported, neither measured nor infeasible
    if result.status == "error":
        pytest.fail(f"{case.id}: {result.reason}", pytrace=False)
    samples = result.timing["step_samples_s"]
    assert len(samples) >= MIN_TIMED_STEPS
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
    _check(case, engine, record_property, config, result)


def _check(case: Case, engine, record_property, config: pytest.Config, result: Result | None = None) -> None:
    """--validate and --parity: of the result just measured, or (--checks-only) of the stored one."""
    not_validated = not_compared = None
    if config.getoption("validate"):
        result = result or engine.stored(case)
        if result is None:
            not_validated = f"no stored result of {case.id} on this machine to validate"
        else:
            # The prediction error is reported (validation.csv), not asserted: a performance figure.
            validation = engine.validate(
                result, config.getoption("validation_steps"), config.getoption("validation_chunk")
            )
            if validation["complete"]:
                record_property("pretrain_bench_validation", validation)
            else:  # the parts stay stored; the report shows a validation once it is whole
                not_validated = (
                    f"validation of {case.id} in parts: {validation['steps_done']} of "
                    f"{validation['steps']} steps done; run again to go on"
                )
    if config.getoption("parity") and not case.method.free_lunch:
        not_compared = (
            f"loss parity compares a free-lunch method with naive eager; {case.id} has no free lunch"
        )
    elif config.getoption("parity"):
        parity = engine.parity(case, config.getoption("parity_steps"))
        record_property("pretrain_bench_parity", parity)
        if "skipped_reason" in parity:
            not_compared = f"loss parity of {case.id} not compared: {parity['skipped_reason']}"
        else:
            assert parity["passed"], (
                f"losses differ from naive eager by {parity['max_rel_diff']:.2e} "
                f"(tolerance {parity['tolerance']:.0e} for {parity['precision']})"
            )
    if skips := [why for why in (not_validated, not_compared) if why is not None]:
        pytest.skip("; ".join(skips))
