"""The space of training methods the paper searched (its Appendix F), and the named sets of it.

A method is the free-lunch switch (torch.compile, fused attention or Mamba kernels, TF32) plus the
memory-saving options: activation checkpointing x sharding x CPU offloading. Validity rules:
offloading needs sharding, and on one GPU sharding without offloading saves nothing (one shard is the
whole state), so it is left out. That leaves 12 options on one GPU and 22 on more.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

SHARDINGS: tuple[str, ...] = ("none", "zero1", "zero2", "zero3", "fsdp_grad_op", "fsdp_full")
DEEPSPEED_STAGES: dict[str, int] = {"zero1": 1, "zero2": 2, "zero3": 3}
FSDP_STRATEGIES: dict[str, str] = {"fsdp_grad_op": "shard_grad_op", "fsdp_full": "full_shard"}
METHOD_SETS: tuple[str, ...] = ("naive", "free-lunch", "all")


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class Method:
    free_lunch: bool
    activation_checkpointing: bool = False
    sharding: str = "none"
    offloading: bool = False

    def __post_init__(self) -> None:
        if self.sharding not in SHARDINGS:
            raise ValueError(f"unknown sharding {self.sharding!r}; choose from {', '.join(SHARDINGS)}")
        if self.offloading and self.sharding == "none":
            raise ValueError("offloading needs sharding: the offloaded states are the sharded ones")

    @property
    def uses_deepspeed(self) -> bool:
        return self.sharding in DEEPSPEED_STAGES

    @property
    def uses_fsdp(self) -> bool:
        return self.sharding in FSDP_STRATEGIES

    @property
    def slug(self) -> str:
        """A short name, unique per method: naive, free-lunch, zero1, zero2-offload-ckpt, eager-ckpt..."""
        parts = []
        if self.sharding != "none":
            parts.append(self.sharding.replace("_", "-"))
        if self.offloading:
            parts.append("offload")
        if self.activation_checkpointing:
            parts.append("ckpt")
        if not parts:
            return "free-lunch" if self.free_lunch else "naive"
        # Memory-saving options on top of free lunch are the usual case, so only the rare
        # combination without free lunch carries a prefix.
        return "-".join(parts) if self.free_lunch else "-".join(["eager", *parts])

    def is_valid_for(self, num_gpus: int) -> bool:
        return num_gpus > 1 or self.sharding == "none" or self.offloading


NAIVE = Method(free_lunch=False)
FREE_LUNCH = Method(free_lunch=True)


def memory_saving_options(num_gpus: int) -> list[Method]:
    """All valid memory-saving options, each on top of the free-lunch methods (12 on 1 GPU, 22 on more)."""
    options = []
    for ckpt, sharding, offload in itertools.product((False, True), SHARDINGS, (False, True)):
        if offload and sharding == "none":
            continue
        method = Method(free_lunch=True, activation_checkpointing=ckpt, sharding=sharding, offloading=offload)
        if method.is_valid_for(num_gpus):
            options.append(method)
    return options


def method_set(name: str, num_gpus: int) -> list[Method]:
    """The named sets: `naive`; `free-lunch`; `all` = naive plus every memory-saving option."""
    if name == "naive":
        return [NAIVE]
    if name == "free-lunch":
        return [FREE_LUNCH]
    if name == "all":
        return [NAIVE, *memory_saving_options(num_gpus)]
    raise ValueError(f"unknown method set {name!r}; choose from {', '.join(METHOD_SETS)}")
