"""Device-memory figures for CPU jobs, where no allocator keeps them.

A CPU job's "device memory" is counted as a GPU's grows with the micro-batch: the model states
(parameters, gradients, optimizer states, counted from their tensors) plus the activations autograd
saves for the backward pass of the micro-batch in flight (counted as they are packed, each storage
once, parameters left out). Like a card's peak it is affine in the micro-batch, so the memory model
and the probe work on the CPU profile too. With a budget (PRETRAIN_BENCH_CPU_MEMORY_MIB, for tests)
a micro-batch that would exceed it raises the out-of-memory error a card would, at the allocation
that crosses it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

BUDGET_ENV = "PRETRAIN_BENCH_CPU_MEMORY_MIB"
GIB = 1024**3
MIB = 1024**2


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds of a DTensor (FSDP2's parameters); the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """(key, bytes) of the memory behind a tensor, each storage once; FSDP frees (resizes to nothing)
    the storage of gathered parameters, whose pointer can then no longer be read: such a tensor counts
    by its own size."""
    tensor = _local(tensor)
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except RuntimeError:
        return id(tensor), tensor.numel() * tensor.element_size()


class CpuMemory:
    def __init__(self, budget_mib: float | None = None):
        if budget_mib is None and os.environ.get(BUDGET_ENV):
            budget_mib = float(os.environ[BUDGET_ENV])
        self.budget = None if budget_mib is None else budget_mib * MIB
        self.states = 0
        self.activations = 0
        self.peak = 0
        self._seen: set[int] = set()
        self._parameters: set[int] = set()

    def count_states(self, model: torch.nn.Module, optimizer: Any | None) -> None:
        tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
        if optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            tensors += [v for state in inner.state.values() for v in state.values() if torch.is_tensor(v)]
        self._parameters = {_storage(p)[0] for p in model.parameters()}
        self.states = sum(dict(_storage(t) for t in tensors).values())

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key, size = _storage(tensor)
        if key not in self._seen and key not in self._parameters:
            self._seen.add(key)
            self.activations += size
            total = self.states + self.activations
            if self.budget is not None and total > self.budget:
                raise torch.OutOfMemoryError(
                    f"CPU memory budget exceeded. Tried to allocate {size / MIB:.2f} MiB "
                    f"({total / MIB:.1f} MiB in use, budget {self.budget / MIB:.1f} MiB)"
                )
            self.peak = max(self.peak, total)
        return tensor

    @contextlib.contextmanager
    def micro_batch(self) -> Iterator[None]:
        """Count the activations saved while the block runs (one micro-batch's forward and backward)."""
        self.activations = 0
        self._seen = set()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield
        self.activations = 0
        self._seen = set()

    def reset_peak(self) -> None:
        self.peak = self.states

    def figures(self) -> dict[str, float]:
        """As oom.memory_now() reports a card: peak allocated and reserved, and the total (the budget)."""
        peak = max(self.peak, self.states) / GIB
        return {
            "peak_allocated_gib": peak,
            "peak_reserved_gib": peak,
            "total_gib": (self.budget or 0.0) / GIB,
        }
