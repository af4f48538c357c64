"""The result of one case: feasible or not with the reason, and every measured figure."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.cases import Case
from harness.methods import Method

# ok: measured; infeasible: cannot run here (measured out of memory, or refused before any job, with
# the reason); pruned: a dominance rule of the fast search says it cannot be the fastest (its rule and
# figures in `reason`); error: a crash, a hang or the sanity gate.
STATUSES = ("ok", "infeasible", "pruned", "error")


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    case: Case
    status: str  # one of STATUSES
    reason: str = ""
    rule: str = ""  # the pruning rule of a pruned result (harness.prune)
    micro_batch_size: int | None = None
    grad_acc_steps: int | None = None
    measured_grad_acc_steps: int | None = None
    step_time_s: float | None = None  # median over timed steps, extrapolated to grad_acc_steps
    step_time_spread_s: float | None = None  # inter-quartile range of the same samples
    training_days: float | None = None
    tokens_per_s: float | None = None  # or samples/s for image models (see sample_unit)
    samples_per_s: float | None = None
    tflops_per_gpu: float | None = None  # model FLOPs (no recomputation) per GPU per second / 1e12
    mfu: float | None = None  # against the registry's dense peak for the recipe's precision
    peak_memory_gib: float | None = None
    compile_s: float | None = None
    attention: str | None = None
    kernels: bool | None = None
    timing: dict[str, Any] = field(default_factory=dict, hash=False)  # samples and components
    probe: list[dict[str, Any]] = field(default_factory=list, hash=False)
    optimizer: dict[str, Any] = field(default_factory=dict, hash=False)
    plan: dict[str, Any] = field(default_factory=dict, hash=False)
    environment: dict[str, Any] = field(default_factory=dict, hash=False)
    fingerprint: str = ""
    timing_warning: str = ""  # set when the timed steps' spread is too wide (see timing_warning())
    log_tail: str = ""  # the end of a failed job's output (the reason holds its one-line summary)
    # How the search settled it: strategy, timing rung (brief / full), the memory prediction, what
    # bounded the micro-batch.
    search: dict[str, Any] = field(default_factory=dict, hash=False)
    created: float = field(default_factory=time.time)

    @property
    def feasible(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["case"] = asdict(self.case) | {"id": self.case.id}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        raw = dict(data["case"])
        raw.pop("id", None)
        case = Case(**{**raw, "method": Method(**raw["method"])})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known and k != "case"}, case=case)


# Timed steps a result needs: a median and a spread (the engine's default, the option's lower bound
# and the sanity gate all read this).
MIN_TIMED_STEPS = 5


def sanity_problems(result: Result) -> list[str]:
    """Reasons a measured result must not be reported (the caller turns them into an error)."""
    problems = []
    samples = result.timing.get("step_samples_s", [])
    if len(samples) < MIN_TIMED_STEPS:
        problems.append(f"only {len(samples)} timed steps (at least {MIN_TIMED_STEPS} needed)")
    if any(not (math.isfinite(s) and s > 0) for s in samples):
        problems.append("a timed step is not a finite positive time")
    losses = [x for x in result.timing.get("losses", [])]
    if any(not math.isfinite(x) for x in losses):
        problems.append("the training loss is not finite")
    if result.mfu is not None and result.mfu > 1.0:
        problems.append(f"MFU {result.mfu:.2f} exceeds the hardware peak: the timing is wrong")
    gross = GROSS_RATIO.get(result.case.gpu_type == "cpu")
    if gross is not None and samples and all(math.isfinite(s) and s > 0 for s in samples):
        ratio = max(samples) / min(samples)
        if ratio > gross:
            problems.append(
                f"timed steps range from {min(samples):.4g} to {max(samples):.4g} s ({ratio:.1f}x, more than "
                f"{gross:g}x): something else ran on the device or host during the timing"
            )
    return problems


# A timing whose inter-quartile range exceeds this fraction of its median is flagged as unstable, in
# the result and the report (measured GPU timings: 0.6% to 4.8%). On a GPU, a timing whose slowest
# timed step took more than GROSS_RATIO times its fastest fails the sanity gate: nothing in a steady
# training step varies that much. The CPU profile (keyed True) is only flagged: it shares a small host
# with everything else by design (CI runs it beside other tests, where a 30-ms step was seen to take
# 1.7 s), and its figures prove the pipeline, not a machine's speed.
UNSTABLE_SPREAD = 0.10
GROSS_RATIO: dict[bool, float] = {False: 2.0}


def timing_warning(samples: list[float]) -> str:
    """A flag for a timing whose spread is too wide to trust its median to a few percent, or ""."""
    if len(samples) < 2:
        return ""
    quartiles = statistics.quantiles(samples, n=4)
    median = statistics.median(samples)
    spread = (quartiles[2] - quartiles[0]) / median if median > 0 else math.inf
    if spread <= UNSTABLE_SPREAD:
        return ""
    return (
        f"unstable timing: the inter-quartile range is {100 * spread:.0f}% of the median "
        f"(bound {100 * UNSTABLE_SPREAD:.0f}%); steps ranged {min(samples):.4g}-{max(samples):.4g} s"
    )


# What bounded a feasible result's micro-batch (see micro_batch_limit).
LIMIT_MEMORY = "memory"  # the next size ran out of memory, in the probe or in the timed run
LIMIT_BATCH = "batch"  # the whole per-GPU batch is one micro-batch: nothing larger exists
LIMIT_CAP = "cap"  # the probe stopped below both without running out: a --max-micro-batch cap
LIMIT_NOT_PROBED = "not probed"  # no probe ran (CPU cases): the largest candidate was taken
# The memory model put the next size so far over the card that no probe was needed (the timed run
# proved that this one fits).
LIMIT_PREDICTED = "memory (predicted)"


def micro_batch_limit(result: Result) -> str:
    """What bounded this result's micro-batch; "" for a result without one.

    Read from what the result holds (its accumulation, its probe events, the reason a timed run stepped
    down), so it holds for results stored before any cap was recorded: a probe that ends on a fit below
    the per-GPU batch stopped because it was told to.
    """
    if not result.feasible or result.micro_batch_size is None:
        return ""
    searched = result.search.get("limit")
    if searched and not result.reason and searched != LIMIT_BATCH:
        return searched
    if result.grad_acc_steps == 1:
        return LIMIT_BATCH
    if result.reason:  # a feasible result's reason: the timed run's out-of-memory step-down
        return LIMIT_MEMORY
    if not result.probe:
        return LIMIT_NOT_PROBED
    if any(event.get("event") == "oom" for event in result.probe):
        return LIMIT_MEMORY
    return LIMIT_CAP
