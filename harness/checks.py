"""Checks of a result: its prediction against a real run, and its loss against naive eager training.

Validation trains with the exported plan at the recipe's full accumulation for `steps` optimizer
steps after warm-up and compares the steady step time (one synchronization at each end of the
window) with the engine's extrapolated prediction. Loss parity trains the case's method and the naive
eager reference (same model, hardware, seed, batches, micro-batch and accumulation) for a few steps
and compares the losses step by step.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import replace
from typing import Any

from harness import oom
from harness.cases import Case
from harness.engine import Engine
from harness.env import code_version
from harness.methods import NAIVE
from harness.plan import unsupported_reason
from harness.result import Result
from harness.store import ResultStore

# Largest relative loss difference from naive eager accepted per precision, over a few steps. The
# first step's loss agrees to ~1e-6 in fp32 (only kernel choice and summation order differ), but Adam
# divides each gradient by its own running magnitude, so a rounding-level difference in a near-zero
# gradient coordinate becomes a full-size step: the losses drift apart to ~1e-3 within five fp32
# steps (measured on tiny-vit, compile + SDPA vs eager). TF32 matmuls carry 10-bit mantissas; bf16
# (8-bit) and fp16 (11-bit, loss-scaled) autocast compound over layers. A real bug (a dropped layer,
# wrong masking) moves the loss by far more than these.
PARITY_TOLERANCE = {"fp32": 5e-3, "tf32": 1e-2, "fp16": 2e-2, "bf16": 3e-2}
VALIDATION_WARMUP = 3
# A validation job trains for (warm-up + steps) x the predicted step on top of the setup and compile
# time the job timeout covers; the margin keeps a prediction that is off by half from being killed.
VALIDATION_TIME_MARGIN = 1.5
# Parity runs train at the recipe's peak learning rate from the first step: under the recipe's warmup
# the first steps' learning rate is ~1e-6 of the peak (Pythia: 6e-4 over 1,430 steps), the weights
# barely move, and the comparison would check the forward pass only, not the optimizer path that
# sharding and offloading change.
PARITY_SCHEDULE = {"lr_scheduler_type": "constant", "lr_scheduler_kwargs": {}, "warmup_steps": 0}


def machine(case: Case, gpu_name: str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3 x1': the card's name as the run reported it, else the case's GPU type."""
    if case.gpu_type == "cpu":
        return f"cpu x{case.num_gpus}"
    return f"{gpu_name or case.gpu_type} x{case.num_gpus}"


def validate(
    result: Result,
    *,
    engine: Engine,
    steps: int = 20,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Train at the full accumulation with the result's plan and compare the step time with its prediction.

    A validation runs in parts of at most `chunk` timed steps (all of them when None), each its own
    job with its own warm-up, so that a long validation fits a command or allocation time limit. Each
    part is stored as it ends (`_validation-part/`); the next call for the same prediction runs the
    steps still missing, and once they add up to `steps` the validation record is written from the
    parts' total time over their total steps. Without every step yet it returns the progress record
    (`complete: False`).
    """
    case = result.case
    assert result.micro_batch_size and result.grad_acc_steps and result.step_time_s, (
        "validate a feasible result"
    )
    store = engine.store
    prediction = f"{case.id}@{result.fingerprint}@{result.created}"
    parts = pending_parts(store, prediction)
    done = sum(part["steps"] for part in parts)
    if done < steps:
        parts.append(_validation_part(result, prediction, min(steps - done, chunk or steps), engine))
        done += parts[-1]["steps"]
    progress = {"case_id": case.id, "steps": steps, "steps_done": done, "parts": len(parts)}
    if done < steps:
        return progress | {"complete": False}
    measured = sum(part["window_s"] for part in parts) / done
    record = {
        "case_id": case.id,
        "predicted_step_s": result.step_time_s,
        "measured_step_s": measured,
        "error_pct": 100.0 * (result.step_time_s - measured) / measured,
        "steps": done,
        "warmup_steps": VALIDATION_WARMUP,
        "machine": parts[-1]["machine"],
        "micro_batch_size": result.micro_batch_size,
        "grad_acc_steps": result.grad_acc_steps,
        # The prediction may come from an earlier version of this code (--checks-only).
        "predicted_by": result.environment.get("code_version"),
        "same_instance": same_instance(result, parts),
        "cpu": parts[-1]["cpu"],
        # What trained: the optimizer read back and the wrapper, as the last part ran them.
        "optimizer": parts[-1].get("optimizer"),
        "wrapped_model": parts[-1].get("wrapped_model"),
        "prediction": prediction,
        "part_ids": [part["part_id"] for part in parts],
        "complete": True,
    }
    store.append_check("validation", record)
    return record


def same_instance(result: Result, parts: list[dict[str, Any]]) -> bool | None:
    """Whether every part trained on the machine instance (boot) that made the prediction: False as
    soon as the parts themselves ran on different boots, None when the prediction predates the
    record of the instance."""
    boots = {part.get("boot_id") for part in parts}
    if len(boots) > 1:
        return False
    predicted_on = result.environment.get("worker", {}).get("boot_id")
    return None if predicted_on is None else boots == {predicted_on}


def pending_parts(store: ResultStore, prediction: str) -> list[dict[str, Any]]:
    """The stored parts of a validation of `prediction` that no validation record has used yet, run
    by this version of the code (a part from another version measured something else)."""
    used = {
        part_id
        for record in store.check_history("validation")
        if record.get("prediction") == prediction
        for part_id in record.get("part_ids", [])
    }
    return [
        part
        for part in store.check_history("validation-part")
        if part.get("prediction") == prediction
        and part["part_id"] not in used
        and part.get("code_version") == code_version()
    ]


def _validation_part(result: Result, prediction: str, steps: int, engine: Engine) -> dict[str, Any]:
    """One validation job: warm-up, then `steps` timed optimizer steps at the full accumulation."""
    case = result.case
    part_id = uuid.uuid4().hex
    # Named to the part too: two parts started within one second keep their own folders.
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{part_id[:8]}"
    job_dir = engine.options.work_dir.absolute() / case.id / stamp / "validate"
    training_s = VALIDATION_TIME_MARGIN * (VALIDATION_WARMUP + steps) * (result.step_time_s or 0.0)
    job = engine.job_from_plan(
        case,
        "validate",
        # The exported setting that was timed, not what this version of the code would plan now.
        result.plan,
        VALIDATION_WARMUP + steps,
        warmup_steps=VALIDATION_WARMUP,
        timed_steps=steps,
        timeout_s=engine.options.timeout_s + training_s,
    )
    outcome = engine.launcher.run(job, job_dir)
    if not outcome.ok or outcome.result is None:
        raise RuntimeError(f"validation of {case.id} failed: {outcome.failure()}\n{outcome.output_tail}")
    environment = outcome.result.get("environment", {})
    part = {
        "case_id": case.id,
        "prediction": prediction,
        "part_id": part_id,
        "code_version": environment.get("code_version"),
        "steps": steps,
        "window_s": outcome.result["window_step_s"] * steps,
        "machine": machine(case, environment.get("gpu_name")),
        "boot_id": environment.get("boot_id"),
        "cpu": environment.get("cpu"),
        "job_dir": str(job_dir),
        "optimizer": outcome.result.get("optimizer"),
        "wrapped_model": outcome.result.get("wrapped_model"),
    }
    engine.store.append_check("validation-part", part)
    return part


def parity_tolerance(case: Case) -> tuple[str, float]:
    from hardware import get_gpu
    from models import get_model

    precision = get_model(case.model).recipe.precision
    if (
        precision == "fp32"
        and case.method.free_lunch
        and case.gpu_type != "cpu"
        and get_gpu(case.gpu_type).supports_tf32
    ):
        precision = "tf32"
    return precision, PARITY_TOLERANCE[precision]


def loss_parity(
    case: Case,
    *,
    engine: Engine,
    steps: int = 5,
    micro_batch: int = 1,
    grad_acc: int = 2,
    references: dict[tuple, list[float]] | None = None,
) -> dict[str, Any]:
    """Losses of `case` and of naive eager on identical batches, step by step, within the tolerance.

    `references` keeps naive eager's losses between calls: every method of a model on one machine is
    compared with the same reference run, which is then trained once.
    """
    store = engine.store
    reference = replace(case, method=NAIVE)
    precision, tolerance = parity_tolerance(case)
    record: dict[str, Any] = {
        "case_id": case.id,
        "reference_case_id": reference.id,
        "method": case.method.slug,
        "precision": precision,
        "steps": steps,
        "tolerance": tolerance,
        "machine": machine(case),
        "schedule": "constant peak learning rate",
    }
    if (why := unsupported_reason(case)) is not None:
        return _parity_skipped(record, why, store)
    root = engine.options.work_dir.absolute() / case.id / time.strftime("%Y%m%dT%H%M%S")
    references = {} if references is None else references
    key = (reference.id, micro_batch, grad_acc, steps)
    losses = {reference.id: references[key]} if key in references else {}
    # The reference first: naive eager needs the most memory, so a model it cannot train here fails
    # before the method's run is spent.
    for which in (reference, case):
        if which.id in losses:
            continue
        job_dir = root / ("parity" if which is case else "parity-reference")
        job = engine.job(which, "train", micro_batch, grad_acc, steps, training_overrides=PARITY_SCHEDULE)
        outcome = engine.launcher.run(job, job_dir)
        if events := outcome.oom_events():
            # Not a parity failure: there is nothing to compare on this GPU (e.g. Mamba's reference scan
            # at full size), and the record says so instead of a traceback.
            role = "the method" if which is case else "naive eager, the reference,"
            why = f"{role} does not fit here: {oom.reason(micro_batch, events[0])} ({job_dir})"
            return _parity_skipped(record, why, store)
        if not outcome.ok or outcome.result is None:
            raise RuntimeError(
                f"loss parity run of {which.id} failed: {outcome.failure()}\n{outcome.output_tail}"
            )
        losses[which.id] = outcome.result["losses"]
        if which is case:
            record["machine"] = machine(case, outcome.result.get("environment", {}).get("gpu_name"))
            record["optimizer"] = outcome.result.get("optimizer")
            record["wrapped_model"] = outcome.result.get("wrapped_model")
    references[key] = losses[reference.id]
    ours, theirs = losses[case.id], losses[reference.id]
    diffs = [abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True)]
    record |= {
        "losses": ours,
        "reference_losses": theirs,
        "max_rel_diff": max(diffs),
        "median_rel_diff": statistics.median(diffs),
        "passed": max(diffs) <= tolerance,
    }
    store.append_check("parity", record)
    return record


def _parity_skipped(record: dict[str, Any], why: str, store: ResultStore) -> dict[str, Any]:
    """The parity record of a comparison that could not run here, stored with its reason."""
    record |= {"losses": [], "reference_losses": [], "passed": False, "skipped_reason": why}
    store.append_check("parity", record)
    return record
