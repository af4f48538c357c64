"""The engine: a search over cases, each measured by jobs that a launcher runs, each job the real Trainer.

`Engine.search(cases, strategy)` takes what the results store already holds for this environment
(an interrupted search resumes), hands the rest to a `SearchStrategy` (harness.search), stores each
result as the strategy settles it, and records the search itself (wall time, jobs, compile time).
The strategies use the engine's primitives: plan a case, run a job of it through the launcher (a job
that finished in an earlier attempt is not run again), probe micro-batches, time one, and make the
result of a timing.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import oom
from harness.cases import Case
from harness.job import Job
from harness.launch import JobOutcome, Launcher, LocalLauncher
from harness.plan import Plan, make_plan
from harness.result import MIN_TIMED_STEPS, Result, sanity_problems, timing_warning
from harness.store import ResultStore

Progress = Callable[[str, str], None]  # (case id, message)


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineOptions:
    timed_steps: int = MIN_TIMED_STEPS
    warmup_steps: int | None = None  # default: 3 when compiling (recompiles settle), else 2
    # Micro-batches run per timed step; a larger accumulation is extrapolated from them (the
    # accumulation check and the validation mode prove the extrapolation).
    max_measured_grad_acc: int = 4
    full_accumulation: bool = False  # time at the recipe's accumulation: no extrapolation
    probe_divisors: bool = False  # probe every divisor of the per-GPU batch, not only powers of two
    max_micro_batch: int | None = None  # cap the probe (a memory budget below the card's, or CPU runs)
    loader_workers: int = 0  # data-loader processes per rank in the timed jobs (the Trainer's default: 0)
    # "auto" probes on GPUs, and on the CPU under a memory budget (tests); "always" probes anyway.
    probe: str = "auto"
    timeout_s: float = 1800.0
    work_dir: Path = Path("runs") / "jobs"
    force: bool = False  # rerun even if the store holds a result for this case and environment
    # Take the verdict of a job that finished in an earlier attempt that stored nothing (an
    # interrupted run). Off for a case whose earlier attempt stored an error: its jobs made it.
    reuse_finished_jobs: bool = True
    progress: Progress | None = field(default=None, compare=False)
    env: dict[str, str] = field(default_factory=dict, hash=False)  # extra job environment (faults in tests)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"the job timeout must be positive, got {self.timeout_s}")
        if self.timed_steps < MIN_TIMED_STEPS:
            raise ValueError(f"at least {MIN_TIMED_STEPS} timed steps are needed, got {self.timed_steps}")
        if self.max_micro_batch is not None and self.max_micro_batch < 1:
            raise ValueError(f"the micro-batch cap must be at least 1, got {self.max_micro_batch}")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRecord:
    """One job of a search, for the search's record and its time-left estimate."""

    case_id: str
    name: str
    mode: str
    elapsed_s: float
    reused: bool
    compile_s: float
    ok: bool


class Engine:
    def __init__(
        self,
        *,
        store: ResultStore,
        environment: dict[str, Any],
        fingerprint: Callable[[Case], str],
        options: EngineOptions = EngineOptions(),
        launcher: Launcher | None = None,
    ):
        self.store = store
        self.environment = environment
        self.fingerprint = fingerprint
        self.options = options
        self.launcher = launcher or LocalLauncher()
        self.jobs: list[JobRecord] = []
        self._attempts: dict[str, Path] = {}
        self._fresh: set[str] = set()  # cases whose stored error forbids reusing their jobs

    # --- the search ---------------------------------------------------------------------------
    def search(self, cases: list[Case], strategy: Any, *, since: float | None = None) -> dict[str, Result]:
        """Every case's result: stored ones as they are, the rest from `strategy`. A result stored
        `since` then stands whatever its status (this run made it: under xdist another worker)."""
        started = time.monotonic()
        jobs_before = len(self.jobs)
        results: dict[str, Result] = {}
        todo = []
        for case in cases:
            done = self.store.latest(case.id, self.fingerprint(case))
            ours = done is not None and since is not None and done.created >= since
            if done is not None and self.options.force and not ours:
                done = None
            if done is not None and (ours or strategy.reusable(done) and self._same_loader(done)):
                results[case.id] = done
            else:
                if done is not None and done.status == "error":
                    self._fresh.add(case.id)
                todo.append(case)
        if todo:
            results |= strategy.search(todo, self, known=dict(results))
        self._record_search(
            cases, strategy, results, started, self.jobs[jobs_before:], reused=len(cases) - len(todo)
        )
        return results

    def settle(self, result: Result) -> Result:
        """Store a result the strategy has settled (the store is what a resumed search reads)."""
        self.store.append(result)
        return result

    def _record_search(self, cases, strategy, results, started, jobs, reused) -> None:
        if not cases or not jobs:
            return  # nothing ran: a resumed search that found everything stored
        statuses = [r.status for r in results.values()]
        record = {
            "case_id": "+".join(sorted({c.group_id for c in cases})),
            "strategy": strategy.name,
            "cases": len(cases),
            "measured": statuses.count("ok"),
            "pruned": statuses.count("pruned"),
            "infeasible": statuses.count("infeasible"),
            "errors": statuses.count("error"),
            "from_store": reused,
            "wall_s": time.monotonic() - started,
            "jobs": len(jobs),
            "jobs_reused": sum(j.reused for j in jobs),
            "job_s": sum(j.elapsed_s for j in jobs if not j.reused),
            "compile_s": sum(j.compile_s for j in jobs),
            "job_list": [
                {
                    "case_id": j.case_id,
                    "name": j.name,
                    "mode": j.mode,
                    "elapsed_s": j.elapsed_s,
                    "reused": j.reused,
                }
                for j in jobs
            ],
            "launcher": self.launcher.name,
            "parallel": self.launcher.parallel,
            "gpu_name": self.environment.get("gpu_name"),
        }
        self.store.append_check("search", record)

    # --- primitives for strategies -----------------------------------------------------------
    def plan(self, case: Case, micro_batch: int, grad_acc: int) -> Plan:
        """The case's plan with what these options change in it: every job and result plans here."""
        return make_plan(case, micro_batch, grad_acc, loader_workers=self.options.loader_workers)

    def base_result(self, case: Case) -> Result:
        return Result(
            case=case, status="error", environment=self.environment, fingerprint=self.fingerprint(case)
        )

    def warmup(self, plan: Plan) -> int:
        if self.options.warmup_steps is not None:
            return self.options.warmup_steps
        return 3 if plan.training_args.get("torch_compile") else 2

    def job(self, case: Case, mode: str, micro_batch: int, grad_acc: int, steps: int, **fields: Any) -> Job:
        return self.job_from_plan(
            case, mode, self.plan(case, micro_batch, grad_acc).to_dict(), steps, **fields
        )

    def job_from_plan(
        self,
        case: Case,
        mode: str,
        plan: dict[str, Any],
        steps: int,
        *,
        training_overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job:
        """A job training `plan` (a result's recorded one, or one made now) for `steps` optimizer steps;
        `training_overrides` replaces TrainingArguments fields (the loss-parity runs' schedule)."""
        plan = json.loads(json.dumps(plan))  # a copy: the caller's plan (a stored result's) stays as it is
        plan["training_args"] |= {"max_steps": steps, **(training_overrides or {})}
        return Job(
            mode=mode,
            plan=plan,
            nproc=case.gpus_per_node,
            num_nodes=case.num_nodes,
            device="cpu" if case.gpu_type == "cpu" else "cuda",
            fingerprint=self.fingerprint(case),
            timeout_s=fields.pop("timeout_s", self.options.timeout_s),
            env=tuple(sorted(self.options.env.items())),
            **fields,
        )

    def attempt_dir(self, case: Case) -> Path:
        """This search's folder for the case's jobs (one per attempt, named by its start)."""
        if case.id not in self._attempts:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            self._attempts[case.id] = self.options.work_dir.absolute() / case.id / stamp
        return self._attempts[case.id]

    def run(self, case: Case, job: Job, name: str) -> JobOutcome:
        return self.run_all([(case, job, name)])[0]

    def run_all(self, items: list[tuple[Case, Job, str]]) -> list[JobOutcome]:
        """Run jobs (side by side where the launcher may); a job that finished in an earlier attempt
        at its case, in this environment, is taken from there instead of running again."""
        prepared = []
        for case, job, name in items:
            job_dir = self.attempt_dir(case) / name
            reuse: list[Path] = []
            if self.options.reuse_finished_jobs and not self.options.force and case.id not in self._fresh:
                earlier = sorted(job_dir.parent.parent.glob(f"*/{name}"), reverse=True)
                reuse = [d for d in earlier if d != job_dir]
            prepared.append((job, job_dir, reuse))
        outcomes = self.launcher.run_all(prepared)
        for (case, job, name), outcome in zip(items, outcomes, strict=True):
            compile_s = ((outcome.result or {}).get("compile") or {}).get("compile_s", 0.0)
            self.jobs.append(
                JobRecord(
                    case_id=case.id,
                    name=name,
                    mode=job.mode,
                    # A reused job whose launcher was stopped recorded no time (NaN).
                    elapsed_s=0.0 if math.isnan(outcome.elapsed_s) else outcome.elapsed_s,
                    reused=outcome.reused,
                    compile_s=0.0 if outcome.reused else compile_s,
                    ok=outcome.ok,
                )
            )
        return outcomes

    def probe_job(self, case: Case, sizes: list[int]) -> Job:
        return self.job(case, "probe", sizes[-1], 1, len(sizes), micro_batches=tuple(sizes))

    def timing_job(
        self,
        case: Case,
        micro_batch: int,
        grad_acc: int,
        *,
        timed_steps: int | None = None,
        max_grad_acc: int | None = None,
    ) -> Job:
        """A timing job at this micro-batch, measuring min(accumulation, the cap) micro-batches a step
        (`max_grad_acc`: a cap of its own, below the options', for a brief timing)."""
        cap = min(self.options.max_measured_grad_acc, max_grad_acc or self.options.max_measured_grad_acc)
        measured = grad_acc if self.options.full_accumulation else min(grad_acc, cap)
        plan = self.plan(case, micro_batch, measured)
        warmup = self.warmup(plan)
        steps = warmup + (timed_steps or self.options.timed_steps)
        return self.job(
            case, "time", micro_batch, measured, steps, warmup_steps=warmup, target_grad_acc_steps=grad_acc
        )

    def probes_on(self, case: Case) -> bool:
        """Whether this case's micro-batch is found by probing: on GPUs, and on the CPU when a memory
        budget is set (tests); a CPU job otherwise has no memory to run out of and takes the largest."""
        if self.options.probe == "always":
            return True
        if self.options.probe == "never":
            return False
        from harness.cpu_memory import BUDGET_ENV

        return case.gpu_type != "cpu" or BUDGET_ENV in self.options.env

    def finish(self, base: Result, plan: Plan, timing: dict[str, Any], timing_ooms: list[str]) -> Result:
        """The result of a timing job that trained `plan` (the plan is what the report exports)."""
        return finish(base, plan, timing, timing_ooms)

    def phase(self, case: Case, message: str, jobs_left: int | None = None) -> None:
        """Live progress: the case, what it is doing, and the time the search has left."""
        if self.options.progress is None:
            return
        eta = ""
        ran = [j.elapsed_s for j in self.jobs if not j.reused and j.elapsed_s > 0]
        if jobs_left and ran:
            eta = f"; about {jobs_left * statistics.fmean(ran) / 60:.1f} min left for {jobs_left} job(s)"
        self.options.progress(case.id, f"{message}{eta}")

    def _same_loader(self, result: Result) -> bool:
        """Whether a stored result was timed with the data loader these options ask for (a result
        without a plan, infeasible or pruned before any timing, stands for any)."""
        if not result.plan:
            return True
        return result.plan["training_args"].get("dataloader_num_workers", 0) == self.options.loader_workers


def finish(base: Result, plan: Plan, timing: dict[str, Any], timing_ooms: list[str]) -> Result:
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
        timing_warning=timing_warning(timing.get("step_samples_s", [])),
    )
    problems = sanity_problems(result)
    if problems:
        return replace(result, status="error", reason="sanity gate: " + "; ".join(problems))
    return result


def oom_reason(outcome: JobOutcome) -> str:
    first = outcome.oom_events()[0]
    return oom.reason(first["micro_batch"], first)
