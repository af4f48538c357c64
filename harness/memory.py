"""The memory model: a case's peak device memory as an affine function of its micro-batch.

peak(b) = fixed + states(method) + per_sample * b

`states` are the model states each method keeps per GPU (harness.estimate: weights, gradients and
optimizer states by sharding and offloading); `per_sample` (the activations) and `fixed` (buffers,
workspace, the allocator's slack) are fitted from two probe points of one case and hold for every
case with the same activation profile: the same model, free-lunch switch and checkpointing, since
sharding and offloading move states, not activations. The first step of a job is never a fit point:
the optimizer allocates its states at the end of it, so it alone lacks them (on Pythia-160M, H200:
micro-batch 2 then 4 fitted 1.86 GiB a sample, 4 then 8 fitted 1.26, as every later pair did).

Measured fits predict far: Pythia-160M free lunch on an H200, fitted at 4 and 8, predicts 163.2 GiB
at micro-batch 128, where the probe's out-of-memory error asked for 163.2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.cases import Case

# A prediction that overshoots the budget by more than this is taken as "does not fit" without a
# probe; one closer to the budget is probed (the fit's error on the probes measured so far: under 3%
# when fitted at micro-batches of 4 and more, 7% from smaller ones under checkpointing).
CERTAIN_MARGIN = 0.15
# What the allocator cannot use of a card's total: the CUDA context and fragmentation. A CPU job's
# budget (harness.cpu_memory) is its own count, with nothing outside it.
RESERVE_GIB = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryFit:
    """peak(b) = fixed + states + per_sample * b for the fitted case; `states_gib` its own states."""

    fixed_gib: float
    per_sample_gib: float
    states_gib: float
    points: tuple[tuple[int, float], ...]  # (micro-batch, peak GiB) the fit was made from
    source: str  # the case id that was probed
    total_gib: float  # the memory the probe's device reported (a CPU job: its budget)

    def peak(self, micro_batch: int, states_gib: float | None = None) -> float:
        """Predicted peak of a case with these activations and `states_gib` of states (default: the
        fitted case's own)."""
        states = self.states_gib if states_gib is None else states_gib
        return self.fixed_gib + states + self.per_sample_gib * micro_batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryFit:
        return cls(**data | {"points": tuple((int(b), float(m)) for b, m in data["points"])})


def fit(points: list[tuple[int, float]], *, states_gib: float, source: str, total_gib: float) -> MemoryFit:
    """Affine fit through the two largest micro-batches of `points` (steady steps only, see above)."""
    if len(points) < 2:
        raise ValueError(f"a memory fit needs two probe points, got {len(points)}")
    (b1, m1), (b2, m2) = sorted(points)[-2:]
    if b1 == b2:
        raise ValueError(f"a memory fit needs two micro-batch sizes, got {b1} twice")
    slope = max(0.0, (m2 - m1) / (b2 - b1))
    fixed = m2 - slope * b2 - states_gib
    return MemoryFit(
        fixed_gib=fixed,
        per_sample_gib=slope,
        states_gib=states_gib,
        points=tuple(sorted(points)),
        source=source,
        total_gib=total_gib,
    )


def budget_gib(total_gib: float, *, cpu: bool = False) -> float:
    return total_gib if cpu else total_gib - RESERVE_GIB


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """The largest micro-batch the model says fits, and how sure it is that the next does not."""

    micro_batch: int | None  # None: not even the smallest candidate fits
    next_size: int | None  # the next candidate (None: the largest fits: the whole per-GPU batch)
    peak_gib: float | None  # predicted at micro_batch
    next_peak_gib: float | None
    budget_gib: float

    @property
    def next_certainly_too_big(self) -> bool:
        """Whether the next size overshoots the budget by so much that no probe is needed."""
        return self.next_peak_gib is not None and self.next_peak_gib > self.budget_gib * (1 + CERTAIN_MARGIN)

    def describe(self) -> str:
        if self.micro_batch is None:
            return f"predicted: no micro-batch fits {self.budget_gib:.1f} GiB"
        text = (
            f"predicted: micro-batch {self.micro_batch} needs {self.peak_gib:.1f} GiB "
            f"of {self.budget_gib:.1f}"
        )
        if self.next_size is not None:
            text += f", {self.next_size} would need {self.next_peak_gib:.1f}"
        return text


def predict(model: MemoryFit, candidates: list[int], budget: float, states_gib: float) -> Prediction:
    fitting = [b for b in candidates if model.peak(b, states_gib) <= budget]
    best = max(fitting, default=None)
    above = [b for b in candidates if best is None or b > best]
    nxt = min(above, default=None)
    return Prediction(
        micro_batch=best,
        next_size=nxt,
        peak_gib=None if best is None else model.peak(best, states_gib),
        next_peak_gib=None if nxt is None else model.peak(nxt, states_gib),
        budget_gib=budget,
    )


def states_gib(case: Case) -> float:
    """Model states per GPU (harness.estimate) for the case's recipe precision."""
    from harness.estimate import model_state_gib
    from harness.param_counts import num_parameters
    from models import get_model

    return model_state_gib(case, num_parameters(case.model), get_model(case.model).recipe.precision)


def profile(case: Case) -> tuple[str, bool, bool]:
    """Cases with the same profile share their activations per sample: model, free lunch, checkpointing."""
    return (case.model, case.method.free_lunch, case.method.activation_checkpointing)
