"""Recognising an out-of-memory error, and the memory figures that explain it."""

from __future__ import annotations

import re
from typing import Any

import torch

GIB = 1024**3
_REQUEST = re.compile(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB)")
_UNITS = {"GiB": 1.0, "MiB": 1 / 1024, "KiB": 1 / 1024**2}


def is_oom(error: BaseException) -> bool:
    """True if `error` or anything in its cause chain is a device out-of-memory error.

    Compilation and DeepSpeed wrap the original error, so the chain is walked; any other error is
    left to propagate as the crash it is.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.OutOfMemoryError):
            return True
        if isinstance(current, RuntimeError) and "out of memory" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def memory_now() -> dict[str, float]:
    """Peak allocated/reserved since the last reset, and the card's total (GiB); zeros on the CPU."""
    if not torch.cuda.is_available():
        return {"peak_allocated_gib": 0.0, "peak_reserved_gib": 0.0, "total_gib": 0.0}
    torch.cuda.synchronize()
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "total_gib": torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB,
    }


def describe(error: BaseException, memory: dict[str, float] | None = None) -> dict[str, Any]:
    """Figures for the verdict: what was in use (`memory`, else the card's now), what the failed
    allocation asked for, the total."""
    figures: dict[str, Any] = dict(memory if memory is not None else memory_now())
    match = _REQUEST.search(str(error))
    requested = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    figures["requested_gib"] = requested
    figures["needed_gib"] = figures["peak_allocated_gib"] + requested
    figures["message"] = str(error)[:400]
    return figures


def reason(micro_batch: int, figures: dict[str, Any]) -> str:
    if figures.get("total_gib"):
        return (
            f"OOM at micro-batch {micro_batch}: {figures['needed_gib']:.1f} GiB needed, "
            f"{figures['total_gib']:.1f} GiB total"
        )
    return f"OOM at micro-batch {micro_batch}: {figures.get('message', 'out of memory')}"
