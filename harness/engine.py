"""The engine, top-down: plan a case -> probe its largest micro-batch -> time it -> one Result.

Both phases are real distributed jobs (harness.launch) running the real Trainer (harness.worker).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import oom
from harness.cases import Case
from harness.launch import JobOutcome, run_job
from harness.plan import (
    BatchNotDivisibleError,
    Plan,
    candidate_micro_batches,
    make_plan,
    per_device_target,
    unsupported_reason,
)
from harness.result import Result, sanity_problems
from harness.store import ResultStore

Progress = Callable[[str, str], None]  # (case id, phase)


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineOptions:
    timed_steps: int = 5
    warmup_steps: int | None = None  # default: 3 when compiling (recompiles settle), else 2
    # Micro-batches run per timed step; a larger accumulation is extrapolated from them (the
    # accumulation check and the validation mode prove the extrapolation).
    max_measured_grad_acc: int = 4
    full_accumulation: bool = False  # time at the recipe's accumulation: no extrapolation
    probe_divisors: bool = False  # probe every divisor of the per-GPU batch, not only powers of two
    max_micro_batch: int | None = None  # cap the probe (a memory budget below the card's, or CPU runs)
    loader_workers: int = 0  # data-loader processes per rank in the timed jobs (the Trainer's default: 0)
    # "auto" probes on GPUs only: a CPU job has no device memory to exhaust, so the largest candidate
    # is taken without a probe job; "always" probes anyway (the fault-injection tests do).
    probe: str = "auto"
    timeout_s: float = 1800.0
    work_dir: Path = Path("runs") / "jobs"
    force: bool = False  # rerun even if the store holds a result for this case and environment
    # Take the verdict of a probe/timing job that finished in an earlier attempt that stored nothing
    # (an interrupted run). Off when the earlier attempt stored an error: its jobs made that error.
    reuse_finished_jobs: bool = True
    progress: Progress | None = field(default=None, compare=False)
    env: dict[str, str] = field(default_factory=dict, hash=False)  # extra job environment (faults in tests)


def measure_case(
    case: Case,
    *,
    store: ResultStore,
    environment: dict[str, Any],
    fingerprint: str,
    options: EngineOptions = EngineOptions(),
) -> Result:
    """The stored result if this case was measured in this environment, else a new measurement.

    A stored error (a crash, a hang, a sanity gate) is measured again: it says nothing about the case.
    """
    done = None if options.force else store.latest(case.id, fingerprint)
    if done is not None and done.status != "error" and _same_loader(done, options):
        return done
    if done is not None:
        options = replace(options, reuse_finished_jobs=False)
    result = _measure(case, environment=environment, fingerprint=fingerprint, options=options)
    store.append(result)
    return result


def _same_loader(result: Result, options: EngineOptions) -> bool:
    """Whether a stored result was timed with the data loader these options ask for (a result without
    a plan, infeasible before any timing, stands for any)."""
    if not result.plan:
        return True
    return result.plan["training_args"].get("dataloader_num_workers", 0) == options.loader_workers


def _plan(case: Case, micro_batch: int, grad_acc: int, options: EngineOptions) -> Plan:
    """The case's plan with what these options change in it: every job and result plans through here."""
    return make_plan(case, micro_batch, grad_acc, loader_workers=options.loader_workers)


def _measure(case: Case, *, environment: dict[str, Any], fingerprint: str, options: EngineOptions) -> Result:
    base = Result(case=case, status="error", environment=environment, fingerprint=fingerprint)
    if (unsupported := unsupported_reason(case)) is not None:
        return replace(base, status="infeasible", reason=unsupported)
    try:
        target = per_device_target(case)
    except BatchNotDivisibleError as error:
        return replace(base, status="infeasible", reason=str(error))
    job_root = options.work_dir / case.id / time.strftime("%Y%m%dT%H%M%S")
    candidates = candidate_micro_batches(case, all_divisors=options.probe_divisors)
    if options.max_micro_batch is not None:
        candidates = [c for c in candidates if c <= options.max_micro_batch] or candidates[:1]

    if options.probe == "always" or (options.probe == "auto" and case.gpu_type != "cpu"):
        _report(options, case, "probe")
        probe, fits, events = _probe(case, candidates, fingerprint, options, job_root)
        base = replace(base, probe=events)
        ooms = probe.oom_events()
        if not probe.ok and not ooms:
            return replace(base, reason=f"probe failed: {probe.failure()}", log_tail=probe.output_tail)
        if not fits:
            first = ooms[0]
            return replace(base, status="infeasible", reason=oom.reason(first["micro_batch"], first))
    else:
        fits = candidates

    timing_ooms: list[str] = []
    for micro_batch in reversed(fits):
        grad_acc = target // micro_batch
        measured = grad_acc if options.full_accumulation else min(grad_acc, options.max_measured_grad_acc)
        _report(options, case, f"time mb={micro_batch} gas={measured}/{grad_acc}")
        outcome = _run(
            case,
            "time",
            {"target_grad_acc_steps": grad_acc, "fingerprint": fingerprint},
            micro_batch,
            measured,
            options,
            job_root / f"time-mb{micro_batch}",
        )
        if outcome.ok:
            plan = _plan(case, micro_batch, grad_acc, options)
            return _finish(base, plan, outcome.result or {}, timing_ooms)
        if not outcome.oom_events():
            return replace(
                base,
                micro_batch_size=micro_batch,
                reason=f"timing failed: {outcome.failure()}",
                log_tail=outcome.output_tail,
            )
        # The probe's step fitted but the timed run did not (compiled graphs differ in size):
        # step down to the next smaller micro-batch.
        timing_ooms.append(oom.reason(micro_batch, outcome.oom_events()[0]))
    return replace(base, status="infeasible", reason="; ".join(timing_ooms))


def _warmup(options: EngineOptions, plan_args: dict[str, Any]) -> int:
    if options.warmup_steps is not None:
        return options.warmup_steps
    return 3 if plan_args.get("torch_compile") else 2


def _run(
    case: Case,
    mode: str,
    extra: dict[str, Any],
    micro_batch: int,
    grad_acc: int,
    options: EngineOptions,
    job_dir: Path,
) -> JobOutcome:
    plan = _plan(case, micro_batch, grad_acc, options).to_dict()
    warmup = _warmup(options, plan["training_args"])
    steps = warmup + options.timed_steps if mode == "time" else len(extra.get("micro_batches", [1]))
    # The same job of an earlier, interrupted attempt at this case, newest first: if it finished, its
    # outcome stands (the job carries the environment fingerprint, so only this environment's count).
    earlier = (
        sorted(job_dir.parent.parent.glob(f"*/{job_dir.name}"), reverse=True)
        if options.reuse_finished_jobs and not options.force
        else []
    )
    return run_plan(
        case,
        mode,
        micro_batch,
        grad_acc,
        steps,
        options,
        job_dir,
        plan=plan,
        warmup_steps=warmup,
        reuse=[d for d in earlier if d != job_dir],
        **extra,
    )


def run_plan(
    case: Case,
    mode: str,
    micro_batch: int,
    grad_acc: int,
    steps: int,
    options: EngineOptions,
    job_dir: Path,
    *,
    training_overrides: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
    reuse: list[Path] | tuple[Path, ...] = (),
    **extra: Any,
) -> JobOutcome:
    """One worker job (`mode`) training `case` with its plan at this micro-batch and accumulation.

    `plan`: the plan to train (one made already, or a result's recorded one) instead of planning anew;
    its steps and folder are replaced. `training_overrides` replaces TrainingArguments fields (the
    loss-parity runs' schedule).
    """
    if plan is None:
        plan = _plan(case, micro_batch, grad_acc, options).to_dict()
    plan = json.loads(json.dumps(plan))  # a copy: the caller's plan (a stored result's) stays as it is
    assert plan["micro_batch_size"] == micro_batch and plan["grad_acc_steps"] == grad_acc
    plan["training_args"] |= {"max_steps": steps, "output_dir": str(job_dir / "trainer")}
    plan["training_args"] |= training_overrides or {}
    job = {
        "mode": mode,
        "plan": plan,
        "device": "cpu" if case.gpu_type == "cpu" else "cuda",
        **extra,
    }
    return run_job(
        job,
        nproc=case.gpus_per_node,
        num_nodes=case.num_nodes,
        job_dir=job_dir,
        timeout_s=options.timeout_s,
        env=options.env,
        reuse=reuse,
    )


def _probe(
    case: Case, candidates: list[int], fingerprint: str, options: EngineOptions, job_root: Path
) -> tuple[JobOutcome, list[int], list[dict[str, Any]]]:
    """The probe job(s): the outcome that decides, the micro-batches that fit, the fit/OOM events.

    Micro-batch 1 is tried only when 2 does not fit: whatever fits at 2 fits at 1, and a compiled
    model starting at 1 pays for a second compilation (sizes 0 and 1 always get a graph of their own).
    """
    implied = len(candidates) > 1 and candidates[0] == 1
    ramp = candidates[1:] if implied else candidates

    def run(sizes: list[int], name: str) -> tuple[JobOutcome, list[int], list[dict[str, Any]]]:
        extra = {"micro_batches": sizes, "fingerprint": fingerprint}
        outcome = _run(case, "probe", extra, sizes[-1], 1, options, job_root / name)
        events = [e for e in outcome.events if e.get("event") in ("fit", "oom")]
        return outcome, _fitting(outcome, case.num_gpus, sizes), events

    probe, fits, events = run(ramp, "probe")
    if not implied or not (fits or probe.oom_events()):
        return probe, fits, events
    if fits:
        return probe, [1, *fits], [{"event": "fit", "micro_batch": 1, "implied_by": fits[0]}, *events]
    single, fits, more = run([1], "probe-mb1")
    return single, fits, events + more


def _fitting(probe: JobOutcome, world: int, candidates: list[int]) -> list[int]:
    """Micro-batches whose probe step completed on every rank, below the first that ran out of memory."""
    counts: dict[int, int] = {}
    for event in probe.events:
        if event.get("event") == "fit":
            counts[event["micro_batch"]] = counts.get(event["micro_batch"], 0) + 1
    fits = []
    for size in candidates:
        if counts.get(size, 0) < world:
            break
        fits.append(size)
    return fits


def _finish(base: Result, plan: Plan, timing: dict[str, Any], timing_ooms: list[str]) -> Result:
    """The result of a timing job that trained `plan`: the plan is what the report exports."""
    from hardware import get_gpu
    from models import get_model

    case, micro_batch, grad_acc = plan.case, plan.micro_batch_size, plan.grad_acc_steps
    spec = get_model(case.model)
    recipe = spec.recipe
    step = timing["step_time_s"]
    samples_per_s = recipe.global_batch / step
    flops_per_gpu = spec.flops_per_sample() * samples_per_s / case.num_gpus
    peak = get_gpu(case.gpu_type).peak(recipe.precision, tf32=bool(plan.training_args.get("tf32")))
    result = replace(
        base,
        status="ok",
        reason="; ".join(timing_ooms),
        micro_batch_size=micro_batch,
        grad_acc_steps=grad_acc,
        measured_grad_acc_steps=timing["measured_grad_acc_steps"],
        step_time_s=step,
        step_time_spread_s=timing["step_time_spread_s"],
        training_days=recipe.training_steps * step / 86400.0,
        samples_per_s=samples_per_s,
        tokens_per_s=samples_per_s * spec.tokens_per_sample,
        tflops_per_gpu=flops_per_gpu / 1e12,
        mfu=flops_per_gpu / peak if peak else None,
        peak_memory_gib=timing["peak_memory_gib"],
        compile_s=timing["first_step_overhead_s"] if timing.get("compiled") else None,
        attention=timing.get("attention"),
        kernels=timing.get("mamba_kernels") if spec.kernels else None,  # what ran, not what was asked
        timing={k: v for k, v in timing.items() if k not in ("optimizer", "environment")},
        optimizer=timing.get("optimizer", {}),
        plan=plan.to_dict(),
        environment=base.environment | {"worker": timing.get("environment", {})},
    )
    problems = sanity_problems(result)
    if problems:
        return replace(result, status="error", reason="sanity gate: " + "; ".join(problems))
    return result


def _report(options: EngineOptions, case: Case, phase: str) -> None:
    if options.progress is not None:
        options.progress(case.id, phase)
