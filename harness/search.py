"""Search strategies: which jobs to run for a set of cases, and in what order.

`SearchStrategy` is the interface the engine delegates to; a new way to search is one new class.
`Exhaustive` measures every case on its own: probe its micro-batches (a ramp of powers of two until
one runs out of memory), then time the largest that fits, stepping down if the timed run does not
fit. The fast strategy (harness.fast_search) predicts, prunes and times only what can win. The steps
both share are here: the checks before any job, the ramp probe and the timing that steps down.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness.cases import Case
from harness.engine import Engine, oom_reason
from harness.launch import JobOutcome
from harness.plan import accumulation_steps, candidate_micro_batches, refusal
from harness.result import Result


class SearchStrategy:
    name = "strategy"

    def search(self, cases: list[Case], engine: Engine, *, known: dict[str, Result]) -> dict[str, Result]:
        """The result of each of `cases` (none stored yet); `known`: stored results of the others."""
        raise NotImplementedError

    def reusable(self, stored: Result) -> bool:
        """Whether a stored result of this environment stands for this strategy: neither an error nor a
        pruned case nor a brief timing (the fast search's) stands for a full measurement."""
        return stored.status in ("ok", "infeasible") and stored.search.get("rung") != "brief"


class Exhaustive(SearchStrategy):
    name = "exhaustive"

    def search(self, cases: list[Case], engine: Engine, *, known: dict[str, Result]) -> dict[str, Result]:
        results = {}
        for i, case in enumerate(cases):
            results[case.id] = engine.settle(measure_one(engine, case, jobs_left=2 * (len(cases) - i)))
        return results


def precheck(engine: Engine, case: Case) -> tuple[Result | None, list[int]]:
    """An infeasible result for a case that cannot run at all, else its candidate micro-batches."""
    if (refused := refusal(case)) is not None:
        return replace(engine.base_result(case), status="infeasible", reason=refused), []
    candidates = candidate_micro_batches(case, all_divisors=engine.options.probe_divisors)
    cap = engine.options.max_micro_batch
    if cap is not None:
        candidates = [c for c in candidates if c <= cap] or candidates[:1]
    return None, candidates


def measure_one(engine: Engine, case: Case, *, jobs_left: int | None = None) -> Result:
    """Probe, then time the largest micro-batch that fits (the exhaustive measurement of one case)."""
    refused, candidates = precheck(engine, case)
    if refused is not None:
        return refused
    base = engine.base_result(case)
    if engine.probes_on(case):
        engine.phase(case, "probe", jobs_left)
        probe, fits, events = ramp_probe(engine, case, candidates)
        base = replace(base, probe=events)
        if not probe.ok and not probe.oom_events():
            return probe_failed(base, probe)
        if not fits:
            return replace(base, status="infeasible", reason=oom_reason(probe))
    else:
        fits = candidates
    return time_largest(engine, case, fits, base, jobs_left=None if jobs_left is None else jobs_left - 1)


def ramp_probe(
    engine: Engine, case: Case, candidates: list[int], name: str = "probe"
) -> tuple[JobOutcome, list[int], list[dict[str, Any]]]:
    """The probe job(s): the outcome that decides, the micro-batches that fit, the fit/OOM events.

    Micro-batch 1 is tried only when 2 does not fit: whatever fits at 2 fits at 1, and a compiled
    model starting at 1 pays for a second compilation (sizes 0 and 1 always get a graph of their own).
    """
    implied = len(candidates) > 1 and candidates[0] == 1
    ramp = candidates[1:] if implied else candidates

    def run(sizes: list[int], job_name: str) -> tuple[JobOutcome, list[int], list[dict[str, Any]]]:
        outcome = engine.run(case, engine.probe_job(case, sizes), job_name)
        return outcome, fitting(outcome, case.num_gpus, sizes), outcome.probe_events()

    probe, fits, events = run(ramp, name)
    if not implied or not (fits or probe.oom_events()):
        return probe, fits, events
    if fits:
        return probe, [1, *fits], [{"event": "fit", "micro_batch": 1, "implied_by": fits[0]}, *events]
    single, fits, more = run([1], f"{name}-mb1")
    return single, fits, events + more


def probe_failed(base: Result, outcome: JobOutcome) -> Result:
    """The error result of a probe that ended without a verdict (a crash, a hang), with its reason."""
    return replace(base, reason=f"probe failed: {outcome.failure()}", log_tail=outcome.output_tail)


def fitting(probe: JobOutcome, world: int, candidates: list[int]) -> list[int]:
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


def time_largest(
    engine: Engine,
    case: Case,
    fits: list[int],
    base: Result,
    *,
    timed_steps: int | None = None,
    max_grad_acc: int | None = None,
    jobs_left: int | None = None,
) -> Result:
    """Time the largest of `fits`; a timed run that runs out of memory (compiled graphs differ in size
    from the probe's) steps down to the next smaller size."""
    timing_ooms: list[str] = []
    for micro_batch in reversed(fits):
        grad_acc = accumulation_steps(case, micro_batch)
        job = engine.timing_job(
            case, micro_batch, grad_acc, timed_steps=timed_steps, max_grad_acc=max_grad_acc
        )
        measured = job.plan["grad_acc_steps"]
        engine.phase(case, f"time mb={micro_batch} gas={measured}/{grad_acc}", jobs_left)
        brief = "" if max_grad_acc is None else f"-gas{job.plan['grad_acc_steps']}"
        outcome = engine.run(case, job, f"time-mb{micro_batch}{brief}")
        if outcome.ok:
            return engine.finish(
                base, engine.plan(case, micro_batch, grad_acc), outcome.result or {}, timing_ooms
            )
        if not outcome.oom_events():
            return replace(
                base,
                micro_batch_size=micro_batch,
                reason=f"timing failed: {outcome.failure()}",
                log_tail=outcome.output_tail,
            )
        timing_ooms.append(oom_reason(outcome))
    return replace(base, status="infeasible", reason="; ".join(timing_ooms))


def measure_case(
    case: Case,
    *,
    store: Any,
    environment: dict[str, Any],
    fingerprint: str,
    options: Any,
    strategy: str = "exhaustive",
    launcher: Any = None,
) -> Result:
    """One case through a search of its own (its stored result if it has one): for scripts and tests."""
    engine = Engine(
        store=store,
        environment=environment,
        fingerprint=lambda _: fingerprint,
        options=options,
        launcher=launcher,
    )
    return engine.search([case], get_strategy(strategy))[case.id]


def get_strategy(name: str, **kwargs: Any) -> SearchStrategy:
    import importlib

    from harness.strategies import STRATEGIES
    from models.names import lookup

    module, attr = lookup(STRATEGIES, name, "search strategy").split(":")
    return getattr(importlib.import_module(module), attr)(**kwargs)
