"""Hardware cost and cost per experiment, as the paper reckons them (its Sec. 4.4 and Fig. 7).

hardware cost = GPU price x GPUs + the machine without GPUs (by GPU count), per node;
cost per experiment = hardware cost x training days / (5 x 365): the machine's price spread over a
five-year life, charged for the days one replication occupies it.
The formulas are small pure functions; `cost_rows` applies them to the best setting of each group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reports.rows import Group, days

LIFETIME_YEARS = 5
LIFETIME_DAYS = LIFETIME_YEARS * 365

COST_COLUMNS: tuple[str, ...] = (
    "model",
    "hardware",
    "gpu_type",
    "num_nodes",
    "gpus_per_node",
    "num_gpus",
    "method",
    "case_id",
    "training_days",
    "gpu_price_usd",
    "machine_base_usd",
    "hardware_cost_usd",
    "cost_per_experiment_usd",
    "price_date",
    "price_source",
    "note",
)


def hardware_cost(gpu_price: float, num_gpus: int, machine_base: float, num_nodes: int = 1) -> float:
    """GPUs plus the machine(s) that hold them: 4 x H100 = 4 * 30,000 + 7,500 = 127,500."""
    if gpu_price < 0 or machine_base < 0 or num_gpus < 1 or num_nodes < 1:
        raise ValueError("prices must be non-negative and counts positive")
    return num_nodes * (gpu_price * num_gpus + machine_base)


def cost_per_experiment(hardware_usd: float, days: float, lifetime_days: float = LIFETIME_DAYS) -> float:
    """The share of the hardware's life one run uses: cost x days / lifetime."""
    if hardware_usd < 0 or days < 0 or lifetime_days <= 0:
        raise ValueError("cost and days must be non-negative and the lifetime positive")
    return hardware_usd * days / lifetime_days


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    gpu_usd: float | None
    machine_base_usd: float | None
    date: str
    source: str
    note: str


def price_of(gpu_type: str, gpus_per_node: int) -> Price:
    """The registry's GPU price and machine base cost; a note instead of a number where either is missing."""
    from hardware import get_gpu, machine_base_cost

    gpu = get_gpu(gpu_type)
    note = ""
    try:
        base: float | None = machine_base_cost(gpus_per_node)
    except ValueError as error:  # more GPUs per node than the paper's largest machine
        base, note = None, str(error)
    if gpu.price_usd is None:
        note = f"no price for {gpu_type} in the hardware registry (add one with its date and source)"
    return Price(
        gpu_usd=gpu.price_usd,
        machine_base_usd=base,
        date=gpu.price_date.isoformat() if gpu.price_date else "",
        source=gpu.price_source or "",
        note=note,
    )


def cost_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per model and hardware option with a feasible best setting."""
    rows = []
    for group in groups:
        best = group.best
        if best is None:
            continue
        price = price_of(group.gpu_type, group.gpus_per_node)
        hardware_usd = per_run = None
        if price.gpu_usd is not None and price.machine_base_usd is not None:
            hardware_usd = hardware_cost(
                price.gpu_usd, group.gpus_per_node, price.machine_base_usd, group.num_nodes
            )
            per_run = cost_per_experiment(hardware_usd, days(best))
        rows.append(
            {
                "model": group.model,
                "hardware": group.label,
                "gpu_type": group.gpu_type,
                "num_nodes": group.num_nodes,
                "gpus_per_node": group.gpus_per_node,
                "num_gpus": group.num_gpus,
                "method": best.case.method.slug,
                "case_id": best.case.id,
                "training_days": best.training_days,
                "gpu_price_usd": price.gpu_usd,
                "machine_base_usd": price.machine_base_usd,
                "hardware_cost_usd": hardware_usd,
                "cost_per_experiment_usd": per_run,
                "price_date": price.date,
                "price_source": price.source,
                "note": price.note,
            }
        )
    return rows
