"""Dominance rules: which cases of a model on a node cannot be the fastest, and why, with figures.

Every rule compares a case with another of the same model, node and checkpointing setting whose
largest micro-batch (predicted by the memory model, or measured) is at least as large, and that does
less of the same work per step at that micro-batch:
- `offload`: offloading moves optimizer states (and, fully sharded, weights) to the host and steps
  the optimizer there; it pays only by fitting a larger micro-batch than any unoffloaded method of
  any engine, so it is pruned where an unoffloaded method (with the same free-lunch and
  checkpointing setting) reaches its micro-batch.
- `sharding`: within one engine (DeepSpeed: ZeRO-1 < 2 < 3; FSDP: shard-grad-op < full-shard; plain
  DDP), a heavier sharding communicates more per step at the same micro-batch; it is pruned where a
  lighter one of the same engine reaches its micro-batch.
- `checkpointing`: recomputing the forward pass pays only by raising the largest micro-batch past
  the one the same method reaches without it; it is pruned where it does not.
The sharding rule does not compare engines with each other: their implementations differ in more
than the volume they communicate (ZeRO-1 was measured faster than DDP at the same micro-batch on
2 x H200). Every rule compares cases with the same free-lunch setting.
A pruned case becomes a result of its own kind, never a measured or infeasible one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.cases import Case

# Weight of each sharding within its engine: a larger one communicates more per step.
ENGINE = {"none": "ddp", "zero1": "deepspeed", "zero2": "deepspeed", "zero3": "deepspeed"}
ENGINE |= {"fsdp_grad_op": "fsdp", "fsdp_full": "fsdp"}
WEIGHT = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp_grad_op": 1, "fsdp_full": 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class Pruned:
    rule: str
    by: str  # the case id that dominates
    reason: str


def _label(case: Case) -> str:
    return case.method.slug


def _same(case: Case, other: Case, *fields: str) -> bool:
    return all(getattr(case.method, f) == getattr(other.method, f) for f in fields)


def _pruned(rule: str, case: Case, other: Case, fits: dict[str, int], without: str, why: str) -> Pruned:
    """'<other> fits micro-batch N<without>, <case> M; <why>'."""
    sizes = f"{_label(other)} fits micro-batch {fits[other.id]}{without}, {_label(case)} {fits[case.id]}"
    return Pruned(rule=rule, by=other.id, reason=f"{sizes}; {why}")


def _offload(case: Case, other: Case, fits: dict[str, int]) -> Pruned | None:
    if not case.method.offloading or other.method.offloading:
        return None
    if not _same(case, other, "activation_checkpointing", "free_lunch"):
        return None
    why = "offloading adds host traffic and a CPU optimizer step and cannot be faster"
    return _pruned("offload", case, other, fits, " without offloading", why)


def _sharding(case: Case, other: Case, fits: dict[str, int]) -> Pruned | None:
    m, o = case.method, other.method
    if ENGINE[m.sharding] != ENGINE[o.sharding] or WEIGHT[o.sharding] >= WEIGHT[m.sharding]:
        return None
    if not _same(case, other, "offloading", "activation_checkpointing", "free_lunch"):
        return None
    why = f"{_label(case)} shards more and communicates more per step: it cannot be faster"
    return _pruned("sharding", case, other, fits, "", why)


def _checkpointing(case: Case, other: Case, fits: dict[str, int]) -> Pruned | None:
    if not case.method.activation_checkpointing or other.method.activation_checkpointing:
        return None
    if not _same(case, other, "sharding", "offloading", "free_lunch"):
        return None
    why = "recomputing the forward pass cannot be faster"
    return _pruned("checkpointing", case, other, fits, " without checkpointing", why)


RULES: dict[str, Callable[[Case, Case, dict[str, int]], Pruned | None]] = {
    "checkpointing": _checkpointing,
    "offload": _offload,
    "sharding": _sharding,
}


def prune(cases: list[Case], fits: dict[str, int]) -> dict[str, Pruned]:
    """The cases (of one model and node) that a rule prunes, given each case's largest micro-batch.

    Cases without a known micro-batch are neither pruned nor used to prune. Cases are taken lightest
    first, each compared with every lighter one, pruned or not: the rules chain (ZeRO-2 with
    checkpointing is pruned by ZeRO-2, which ZeRO-1 prunes), and every chain ends at a survivor.
    """
    known = sorted((c for c in cases if c.id in fits), key=cost_order)
    pruned: dict[str, Pruned] = {}
    for i, case in enumerate(known):
        for other in known[:i]:
            if fits[other.id] < fits[case.id]:
                continue
            found = next((w for rule in RULES.values() if (w := rule(case, other, fits)) is not None), None)
            if found is not None:
                pruned[case.id] = found
                break
    return pruned


def cost_order(case: Case) -> tuple[int, int, int, str]:
    """Lightest first: no checkpointing, no offloading, the least sharding."""
    m = case.method
    return (int(m.activation_checkpointing), int(m.offloading), WEIGHT[m.sharding], case.id)
