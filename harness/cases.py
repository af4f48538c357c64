"""A benchmark case: one model on one hardware shape with one method. Cases are plain data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.methods import Method

ID_PATTERN = re.compile(r"^[a-z0-9.-]+$")


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class Case:
    model: str
    gpu_type: str
    num_nodes: int = 1
    gpus_per_node: int = 1
    method: Method

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(
                f"a case needs at least one node and one GPU, got {self.num_nodes} x {self.gpus_per_node}"
            )
        if not self.method.is_valid_for(self.num_gpus):
            raise ValueError(f"method {self.method.slug} is not valid on {self.num_gpus} GPU(s)")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def id(self) -> str:
        return case_id(self)

    @property
    def group_id(self) -> str:
        """One model on one hardware shape: the unit a search works on (`pythia-1b-h100x4`)."""
        nodes = f"-{self.num_nodes}nodes" if self.num_nodes > 1 else ""
        return f"{self.model}-{self.gpu_type}x{self.gpus_per_node}{nodes}".lower()


def case_id(case: Case) -> str:
    """`pythia-1b-h100x4-zero1-ckpt`; `-2nodes` follows the GPU count on more than one node."""
    nodes = f"-{case.num_nodes}nodes" if case.num_nodes > 1 else ""
    ident = f"{case.model}-{case.gpu_type}x{case.gpus_per_node}{nodes}-{case.method.slug}".lower()
    if not ID_PATTERN.match(ident):
        raise ValueError(f"case id {ident!r} has characters outside [a-z0-9.-]")
    return ident
