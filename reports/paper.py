"""The paper's published figures (Table 1, Table 4, Appendix J), copied into reports/data/.

The suite stands on its own, so the figures travel with the package rather than being read from a
shared folder. The paper names its sharding options after the libraries' flags (`fsdp_shard_grad_op`,
`zero_1`); they are mapped onto this project's names (`fsdp_grad_op`, `zero1`) so that a paper
setting becomes a real `Method` and compares with ours by slug.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.methods import SHARDINGS, Method

DATA = Path(__file__).resolve().parent / "data"

# The paper's spellings (and the libraries' own) of our sharding names.
SHARDING_ALIASES: dict[str, str] = {
    "none": "none",
    "ddp": "none",
    "zero_1": "zero1",
    "zero_2": "zero2",
    "zero_3": "zero3",
    "fsdp_shard_grad_op": "fsdp_grad_op",
    "shard_grad_op": "fsdp_grad_op",
    "fsdp_full_shard": "fsdp_full",
    "full_shard": "fsdp_full",
    **{name: name for name in SHARDINGS},
}


def normalize_sharding(name: str) -> str:
    """Our sharding name for the paper's (or a library's) spelling; unknown names raise."""
    key = name.strip().lower().replace("-", "_")
    if key not in SHARDING_ALIASES:
        known = ", ".join(sorted(SHARDING_ALIASES))
        raise ValueError(f"unknown sharding {name!r} in the paper's data; known: {known}")
    return SHARDING_ALIASES[key]


@dataclass(frozen=True, kw_only=True, slots=True)
class PaperConfig:
    """One Appendix-J row: the setting the paper found fastest for a model on a GPU type and count."""

    method: Method
    micro_batch_size: int
    grad_acc_steps: int


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False in the paper's data, got {text!r}")
    return text == "True"


@cache
def training_days() -> dict[tuple[str, str, int, str], float]:
    """(model, gpu type, GPU count, "optimal" | "naive") -> days; NaN where the paper printed "—"."""
    table = {}
    with (DATA / "paper_training_days.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            days = float(row["training_days"]) if row["training_days"].strip() else math.nan
            table[(row["model"], row["gpu_type"], int(row["num_gpus"]), row["methods"])] = days
    return table


@cache
def optimal_configs() -> dict[tuple[str, str, int], PaperConfig]:
    """(model, gpu type, GPU count) -> the paper's optimal setting (Appendix J)."""
    table = {}
    with (DATA / "paper_optimal_configs.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            method = Method(
                free_lunch=_bool(row["free_lunch"]),
                activation_checkpointing=_bool(row["activation_checkpointing"]),
                sharding=normalize_sharding(row["sharding"]),
                offloading=_bool(row["offloading"]),
            )
            table[(row["model"], row["gpu_type"], int(row["num_gpus"]))] = PaperConfig(
                method=method,
                micro_batch_size=int(row["micro_batch_size"]),
                grad_acc_steps=int(row["grad_acc_steps"]),
            )
    return table


def paper_days(model: str, gpu_type: str, num_nodes: int, gpus_per_node: int, methods: str) -> float | None:
    """The paper's days for this hardware: a number, NaN where it found the case infeasible, None
    where it has no such entry (another model or GPU type, or more than one node: the paper used one)."""
    if num_nodes != 1:
        return None
    return training_days().get((model, gpu_type, gpus_per_node, methods))


def paper_config(model: str, gpu_type: str, num_nodes: int, gpus_per_node: int) -> PaperConfig | None:
    if num_nodes != 1:
        return None
    return optimal_configs().get((model, gpu_type, gpus_per_node))


@cache
def model_order() -> tuple[str, ...]:
    """The paper's row order of models (Table 1), for laying out our tables the same way."""
    return tuple(dict.fromkeys(model for model, _, _, _ in training_days()))


@cache
def gpu_order() -> tuple[str, ...]:
    return tuple(dict.fromkeys(gpu for _, gpu, _, _ in training_days()))
