"""Results as rows, and grouped per model and hardware (the unit every table and plot is made of).

A group is one model on one hardware option (GPU type x nodes x GPUs per node); its best result is
the feasible one with the fewest training days. Everything downstream reads `Group`s, so that
"best", "naive" and "free lunch" mean the same thing in every table.
"""

from __future__ import annotations

import datetime
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from harness.methods import FREE_LUNCH, NAIVE, Method, memory_saving_options
from harness.result import Result, micro_batch_limit
from reports import paper

# The Result fields copied into results.csv as they are.
MEASURED_FIELDS: tuple[str, ...] = (
    "micro_batch_size",
    "grad_acc_steps",
    "measured_grad_acc_steps",
    "step_time_s",
    "step_time_spread_s",
    "training_days",
    "tokens_per_s",
    "samples_per_s",
    "tflops_per_gpu",
    "mfu",
    "peak_memory_gib",
    "compile_s",
    "attention",
    "kernels",
)

# The environment fields of results.csv, from the worker's view where it has one.
ENVIRONMENT_KEYS: tuple[str, ...] = (
    "gpu_name",
    "gpu_count",
    "driver",
    "cuda",
    "torch",
    "transformers",
    "accelerate",
    "deepspeed",
    "python",
    "code_version",
)

# results.csv: the brief's columns first, then everything else a reader may want to filter on.
RESULT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "model",
    "gpu_type",
    "gpu_name",
    "num_nodes",
    "gpus_per_node",
    "num_gpus",
    "method",
    "free_lunch",
    "activation_checkpointing",
    "sharding",
    "offloading",
    "status",
    "origin",  # measured, measured briefly, pruned (rule), infeasible (measured / before any job), error
    "feasible",
    "reason",
    *MEASURED_FIELDS,
    "timing_warning",
    "micro_batch_limit",  # what bounded the micro-batch: memory, batch, cap or not probed
    *ENVIRONMENT_KEYS[1:],  # gpu_name stands with the hardware columns above
    "fingerprint",
    "created",
)

# Naive, free lunch, then the memory-saving options in the paper's order (ckpt off before on,
# sharding from none to full). On 2+ GPUs the list is complete; eager combinations sort after it.
CANONICAL_METHODS: tuple[Method, ...] = (NAIVE, *memory_saving_options(2))


def method_rank(method: Method) -> tuple[int, Method]:
    try:
        return (CANONICAL_METHODS.index(method), method)
    except ValueError:  # an eager memory-saving combination: not in the paper's space, but valid
        return (len(CANONICAL_METHODS), method)


def is_memory_saving(method: Method) -> bool:
    """Memory-saving options as the paper compares them: on top of free lunch, saving something."""
    return method.free_lunch and (method.activation_checkpointing or method.sharding != "none")


def environment_value(result: Result, key: str) -> Any:
    """The worker's view where it reported one (it saw the GPU through CUDA), else the controller's."""
    worker = result.environment.get("worker") or {}
    value = worker.get(key)
    return value if value is not None else result.environment.get(key)


def days(result: Result) -> float:
    """A result's training days; infinitely many where it has none (sorts last, never "best")."""
    return result.training_days if result.training_days is not None else math.inf


def origin(result: Result) -> str:
    """How a result was settled: measured (fully or briefly), pruned by a rule, infeasible, error."""
    if result.status == "ok":
        return "measured briefly" if result.search.get("rung") == "brief" else "measured"
    if result.status == "pruned":
        return f"pruned ({result.rule})"
    if result.status == "infeasible":
        measured = bool(result.probe) or result.reason.startswith("OOM")
        return "infeasible (measured)" if measured else "infeasible (before any job)"
    return result.status


def result_row(result: Result) -> dict[str, Any]:
    case, method = result.case, result.case.method
    row: dict[str, Any] = {
        "case_id": case.id,
        "model": case.model,
        "gpu_type": case.gpu_type,
        "num_nodes": case.num_nodes,
        "gpus_per_node": case.gpus_per_node,
        "num_gpus": case.num_gpus,
        "method": method.slug,
        "free_lunch": method.free_lunch,
        "activation_checkpointing": method.activation_checkpointing,
        "sharding": method.sharding,
        "offloading": method.offloading,
        "status": result.status,
        "origin": origin(result),
        "feasible": result.feasible,
        "timing_warning": result.timing_warning,
        "reason": result.reason,
        "micro_batch_limit": micro_batch_limit(result),
        "fingerprint": result.fingerprint,
        "created": datetime.datetime.fromtimestamp(result.created, datetime.UTC).isoformat(
            timespec="seconds"
        ),
    }
    for name in MEASURED_FIELDS:
        row[name] = getattr(result, name)
    for key in ENVIRONMENT_KEYS:
        row[key] = environment_value(result, key)
    return {column: row.get(column) for column in RESULT_COLUMNS}


def _order(values: tuple[str, ...], name: str) -> tuple[int, str]:
    return (values.index(name), "") if name in values else (len(values), name)


def model_key(model: str) -> tuple[int, str]:
    return _order(paper.model_order(), model)


def gpu_key(gpu_type: str) -> tuple[int, str]:
    return _order(paper.gpu_order(), gpu_type)


def sort_key(result: Result) -> tuple:
    case = result.case
    return (
        model_key(case.model),
        gpu_key(case.gpu_type),
        case.num_nodes,
        case.gpus_per_node,
        method_rank(case.method),
    )


def hardware_label(gpu_type: str, num_nodes: int, gpus_per_node: int) -> str:
    """`h100 x4` on one node, `h100 2x4` on two nodes of four."""
    return f"{gpu_type} x{gpus_per_node}" if num_nodes == 1 else f"{gpu_type} {num_nodes}x{gpus_per_node}"


def dedupe(results: list[Result]) -> list[Result]:
    """One result per case, the last given winning (callers put the rows that should win last)."""
    return sorted({r.case.id: r for r in results}.values(), key=sort_key)


@dataclass(frozen=True, kw_only=True, slots=True)
class Group:
    model: str
    gpu_type: str
    num_nodes: int
    gpus_per_node: int
    results: tuple[Result, ...] = field(hash=False)  # in canonical method order

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def label(self) -> str:
        return hardware_label(self.gpu_type, self.num_nodes, self.gpus_per_node)

    @property
    def feasible(self) -> tuple[Result, ...]:
        return tuple(r for r in self.results if r.feasible and r.training_days is not None)

    @property
    def best(self) -> Result | None:
        # min() keeps the first of equals, i.e. the simplest method in canonical order.
        return min(self.feasible, key=days, default=None)

    @property
    def status(self) -> str:
        """ok (something ran), infeasible (every measured option is), or error (nothing usable)."""
        if self.best is not None:
            return "ok"
        return "infeasible" if any(r.status == "infeasible" for r in self.results) else "error"

    def method(self, method: Method) -> Result | None:
        return next((r for r in self.results if r.case.method == method), None)

    @property
    def naive(self) -> Result | None:
        return self.method(NAIVE)

    @property
    def free_lunch(self) -> Result | None:
        return self.method(FREE_LUNCH)

    @property
    def memory_saving(self) -> tuple[Result, ...]:
        return tuple(r for r in self.results if is_memory_saving(r.case.method))

    def paper_days(self, methods: str = "optimal") -> float | None:
        return paper.paper_days(self.model, self.gpu_type, self.num_nodes, self.gpus_per_node, methods)

    @property
    def paper_config(self) -> paper.PaperConfig | None:
        return paper.paper_config(self.model, self.gpu_type, self.num_nodes, self.gpus_per_node)


def groups(results: list[Result]) -> list[Group]:
    """Results grouped per model and hardware option, in table order (paper's models and GPUs first)."""
    found: dict[tuple[str, str, int, int], list[Result]] = {}
    for result in dedupe(results):
        case = result.case
        found.setdefault((case.model, case.gpu_type, case.num_nodes, case.gpus_per_node), []).append(result)
    return [
        Group(model=m, gpu_type=g, num_nodes=n, gpus_per_node=p, results=tuple(rs))
        for (m, g, n, p), rs in found.items()
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemorySavingStats:
    """Among the feasible memory-saving options of a group: best, median and worst days, and each as a
    speedup over free lunch alone (free-lunch days / option days; above 1 is faster)."""

    free_lunch_days: float | None
    tried: int
    feasible: int
    best: Result | None
    worst: Result | None
    median_days: float | None

    def speedup(self, option_days: float | None) -> float | None:
        if option_days is None or self.free_lunch_days is None or option_days <= 0:
            return None
        return self.free_lunch_days / option_days


def memory_saving_stats(group: Group) -> MemorySavingStats:
    options = group.memory_saving
    feasible = [r for r in options if r.feasible and r.training_days is not None]
    free_lunch = group.free_lunch
    fl_days = free_lunch.training_days if free_lunch is not None and free_lunch.feasible else None
    return MemorySavingStats(
        free_lunch_days=fl_days,
        tried=len(options),
        feasible=len(feasible),
        best=min(feasible, key=days, default=None),
        worst=max(feasible, key=days, default=None),
        median_days=statistics.median(map(days, feasible)) if feasible else None,
    )


def naive_speedup(group: Group) -> float | None:
    """Naive days / best days, where both exist."""
    naive, best = group.naive, group.best
    if naive is None or not naive.feasible or naive.training_days is None or best is None:
        return None
    return naive.training_days / days(best)
