"""The GPU registry: usable memory, dense peak FLOP/s per precision (each with its datasheet), price.

Peaks are dense (no 2:4 sparsity) tensor-core rates with FP32 accumulation, the rate mixed-precision
training runs at; "fp32" is the plain CUDA-core rate and "tf32" the tensor-core rate for FP32 matmuls
when TF32 is allowed. A precision the card cannot run on tensor cores (bf16 and tf32 on a V100) has no
peak, so no MFU is computed against a rate that does not exist.

`memory_gib` is the usable memory: the total CUDA reports to PyTorch (the figure in its OOM message,
"GPU 0 has a total capacity of 79.11 GiB"), a little less than nvidia-smi's `memory.total` because
the driver keeps some for itself. Where the comment says "estimated", no such report was at hand.

Prices are the paper's quotes of 21 September 2024 (Khandelwal et al., arXiv 2410.23261) where it
gave one; other types have no price until a dated public source is added (see `hardware.overrides`
for adding one locally).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.names import lookup

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")

PAPER_PRICE_DATE = datetime.date(2024, 9, 21)
PAPER_PRICE_SOURCE = "Khandelwal et al. 2024, '$100K or 100 Days' (arXiv 2410.23261), quotes of 21 Sep 2024"

# Machine without GPUs by GPU count, from the same paper.
MACHINE_BASE_COST: dict[int, float] = {1: 1_000.0, 2: 1_500.0, 4: 7_500.0, 8: 10_500.0}


@dataclass(frozen=True, kw_only=True, slots=True)
class Peak:
    """One peak rate in FLOP/s and the document it comes from."""

    flops: float
    source: str

    def __post_init__(self) -> None:
        if not self.flops > 0:
            raise ValueError(f"a peak must be a positive FLOP/s rate, got {self.flops!r}")
        if not self.source.strip():
            raise ValueError("a peak needs its source (the datasheet or whitepaper it comes from)")


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuType:
    """One GPU type. `match` holds lowercase pieces of the device name as NVML reports it; a piece
    matches on word boundaries (so "h200" does not match "gh200", "l40" not "l40s"), `exclude`
    vetoes a match ("rtx 3090" but not "rtx 3090 ti"), and min/max memory (MiB) split types whose
    names alone cannot (an A100 40 GB from an A100 80 GB)."""

    name: str
    description: str
    memory_gib: float
    # A dict is not hashable; leaving it out of the hash keeps GpuType usable as a dict key.
    peak_flops: Mapping[str, Peak] = field(hash=False)
    supports_tf32: bool
    supports_bf16: bool
    price_usd: float | None
    price_date: datetime.date | None
    price_source: str | None
    match: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    min_memory_mib: int | None = None
    max_memory_mib: int | None = None

    def __post_init__(self) -> None:
        where = f"GPU type {self.name!r}"
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"{where}: a name is lowercase [a-z0-9-] (it goes into case ids and markers)")
        if not self.memory_gib > 0:
            raise ValueError(f"{where}: memory_gib must be positive, got {self.memory_gib!r}")
        unknown = set(self.peak_flops) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"{where}: unknown precision(s) {sorted(unknown)}; use {', '.join(PRECISIONS)}")
        if "tf32" in self.peak_flops and not self.supports_tf32:
            raise ValueError(f"{where}: a tf32 peak on a type that does not support TF32")
        if "bf16" in self.peak_flops and not self.supports_bf16:
            raise ValueError(f"{where}: a bf16 peak on a type that does not support bf16")
        if self.price_usd is not None and (
            self.price_usd <= 0 or not self.price_date or not self.price_source
        ):
            raise ValueError(
                f"{where}: a price must be positive and come with its price_date and price_source"
            )
        for piece in (*self.match, *self.exclude):
            if piece != piece.lower() or not piece.strip():
                raise ValueError(
                    f"{where}: match/exclude pieces are non-empty lowercase strings, got {piece!r}"
                )

    def peak(self, precision: str, tf32: bool = False) -> float | None:
        """Dense peak FLOP/s for a training precision; fp32 with TF32 allowed runs at the tf32 rate."""
        lookup(dict.fromkeys(PRECISIONS), precision, "precision")
        if precision == "fp32" and tf32 and self.supports_tf32:
            precision = "tf32"
        rate = self.peak_flops.get(precision)
        return rate.flops if rate else None

    def matches(self, device_name: str, memory_mib: int | None = None) -> bool:
        """Whether NVML's device name (and its memory, MiB) is this type; see the class docstring."""
        name = " ".join(device_name.lower().split())
        if not any(_has_word(name, piece) for piece in self.match):
            return False
        if any(_has_word(name, piece) for piece in self.exclude):
            return False
        if self.min_memory_mib is None and self.max_memory_mib is None:
            return True
        memory = memory_mib if memory_mib is not None else _memory_in_name(name)
        if memory is None:
            return False  # the type needs the memory to be told apart, and none is known
        low = self.min_memory_mib if self.min_memory_mib is not None else 0
        high = self.max_memory_mib if self.max_memory_mib is not None else float("inf")
        return low <= memory <= high


def _has_word(name: str, piece: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(piece)}(?![a-z0-9])", name) is not None


def _memory_in_name(name: str) -> int | None:
    """'nvidia a100-sxm4-40gb' -> 40960 MiB: the board's nominal size, enough to pick a variant."""
    found = re.search(r"(?<![0-9])([0-9]+)gb(?![a-z0-9])", name)
    return int(found.group(1)) * 1024 if found else None


def _peaks(fp32: float, tf32: float | None, bf16: float | None, fp16: float, source: str) -> dict[str, Peak]:
    """Peaks in TFLOP/s as the datasheets print them, all from one document."""
    rates = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16}
    return {p: Peak(flops=tf * 1e12, source=source) for p, tf in rates.items() if tf is not None}


def _host_memory_gib() -> float:
    # POSIX only, as is the rest of the launcher (torchrun, NCCL); Linux and macOS both have these.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


_H100_WHITEPAPER = "NVIDIA H100 Tensor Core GPU Architecture whitepaper (GH100), {} column, dense"
_GA102_WHITEPAPER = "NVIDIA Ampere GA102 GPU Architecture whitepaper v2.0, {}, dense, FP32 accumulate"
_A100_DATASHEET = "NVIDIA A100 Tensor Core GPU datasheet (FP32 19.5, TF32 156, BF16/FP16 312 dense)"

_PAPER_PRICE: dict[str, Any] = {"price_date": PAPER_PRICE_DATE, "price_source": PAPER_PRICE_SOURCE}
_NO_PRICE: dict = {"price_usd": None, "price_date": None, "price_source": None}

# Most specific first: match_gpu takes the first type that matches.
GPUS: dict[str, GpuType] = {
    gpu.name: gpu
    for gpu in (
        GpuType(
            name="h200",
            description="NVIDIA H200 SXM 141GB",
            memory_gib=139.80,  # CUDA total, measured (driver 580.159.04); nvidia-smi: 143771 MiB
            # The H200 datasheet prints 67 / 989* / 1,979* (* with sparsity); it is the H100 SXM5's
            # GH100 at the same clocks, so the exact dense figures are the H100 whitepaper's.
            peak_flops=_peaks(
                66.9,
                494.7,
                989.4,
                989.4,
                _H100_WHITEPAPER.format("H100 SXM5") + "; H200 datasheet: same compute as H100 SXM",
            ),
            supports_tf32=True,
            supports_bf16=True,
            **_NO_PRICE,
            match=("h200",),
            exclude=("nvl",),  # the H200 NVL runs at lower clocks (60 TF FP32): no guessed match
        ),
        GpuType(
            name="h100-pcie",
            description="NVIDIA H100 PCIe 80GB",
            memory_gib=79.11,  # estimated: same 81559 MiB memory.total as the SXM part
            peak_flops=_peaks(51.2, 378.0, 756.0, 756.0, _H100_WHITEPAPER.format("H100 PCIe")),
            supports_tf32=True,
            supports_bf16=True,
            **_NO_PRICE,
            match=("h100 pcie",),
        ),
        GpuType(
            name="h100",
            description="NVIDIA H100 SXM 80GB",
            # CUDA total: 79.18 GiB measured (driver 580.159.04), 79.11 in older OOM reports: the lower.
            memory_gib=79.11,  # nvidia-smi: 81559 MiB
            peak_flops=_peaks(66.9, 494.7, 989.4, 989.4, _H100_WHITEPAPER.format("H100 SXM5")),
            supports_tf32=True,
            supports_bf16=True,
            price_usd=30_000.0,
            **_PAPER_PRICE,
            match=("h100 80gb hbm3",),  # the SXM5 board; "H100 NVL" and "H100 PCIe" are other parts
        ),
        GpuType(
            name="a100-40gb",
            description="NVIDIA A100 40GB (SXM4 or PCIe)",
            memory_gib=39.59,  # CUDA total in PyTorch OOM reports; nvidia-smi: 40960 MiB
            peak_flops=_peaks(19.5, 156.0, 312.0, 312.0, _A100_DATASHEET),
            supports_tf32=True,
            supports_bf16=True,
            **_NO_PRICE,
            match=("a100",),
            max_memory_mib=48 * 1024,
        ),
        GpuType(
            name="a100",
            description="NVIDIA A100 80GB (SXM4 or PCIe)",
            memory_gib=79.15,  # PyTorch OOM reports show 79.15-79.35 by board and driver; the lower
            peak_flops=_peaks(19.5, 156.0, 312.0, 312.0, _A100_DATASHEET),
            supports_tf32=True,
            supports_bf16=True,
            price_usd=19_000.0,
            **_PAPER_PRICE,
            match=("a100",),
            min_memory_mib=48 * 1024,
        ),
        GpuType(
            name="l40",
            description="NVIDIA L40 48GB",
            memory_gib=44.35,  # estimated: same 48 GB GDDR6 with ECC as the A40 (46068 MiB)
            peak_flops=_peaks(
                90.5,
                90.5,
                181.05,
                181.05,
                "NVIDIA L40 GPU datasheet (FP32 90.5, TF32 90.5, BF16/FP16 181.05 dense)",
            ),
            supports_tf32=True,
            supports_bf16=True,
            **_NO_PRICE,
            match=("l40",),  # word boundary: not the L40S, a faster part
        ),
        GpuType(
            name="a40",
            description="NVIDIA A40 48GB",
            memory_gib=44.35,  # CUDA total in PyTorch OOM reports (44.35-44.56); nvidia-smi: 46068 MiB
            peak_flops=_peaks(
                37.4,
                74.8,
                149.7,
                149.7,
                "NVIDIA A40 datasheet and " + _GA102_WHITEPAPER.format("NVIDIA A40 table"),
            ),
            supports_tf32=True,
            supports_bf16=True,
            **_NO_PRICE,
            match=("a40",),
        ),
        GpuType(
            name="a6000",
            description="NVIDIA RTX A6000 48GB",
            memory_gib=47.54,  # CUDA total in PyTorch OOM reports; nvidia-smi: 49140 MiB
            peak_flops=_peaks(38.7, 77.4, 154.8, 154.8, _GA102_WHITEPAPER.format("Appendix C, RTX A6000")),
            supports_tf32=True,
            supports_bf16=True,
            price_usd=4_800.0,
            **_PAPER_PRICE,
            match=("rtx a6000",),
        ),
        GpuType(
            name="rtx3090",
            description="NVIDIA GeForce RTX 3090 24GB",
            memory_gib=23.69,  # CUDA total in PyTorch OOM reports; nvidia-smi: 24576 MiB
            # GeForce cards run FP32-accumulate tensor math at half the FP16-accumulate rate (142 TF).
            peak_flops=_peaks(
                35.6, 35.6, 71.0, 71.0, _GA102_WHITEPAPER.format("Appendix A, GeForce RTX 3090")
            ),
            supports_tf32=True,
            supports_bf16=True,
            price_usd=1_300.0,
            **_PAPER_PRICE,
            match=("rtx 3090",),
            exclude=("ti",),  # the 3090 Ti is faster
        ),
        GpuType(
            name="v100",
            description="NVIDIA Tesla V100 SXM2 32GB",
            memory_gib=31.75,  # CUDA total in PyTorch OOM reports; nvidia-smi: 32510 MiB
            # Volta tensor cores take FP16 only: no bf16, no tf32.
            peak_flops=_peaks(
                15.7,
                None,
                None,
                125.0,
                "NVIDIA Tesla V100 datasheet, SXM2 (FP32 15.7, tensor FP16/FP32-accumulate 125)",
            ),
            supports_tf32=False,
            supports_bf16=False,
            **_NO_PRICE,
            match=("v100-sxm2",),  # the PCIe board (112 TF) and V100S are other parts
            min_memory_mib=24 * 1024,  # the 16 GB board would not fit the same cases
        ),
        GpuType(
            name="cpu",
            description="no GPU: the host CPU with tiny models",
            memory_gib=_host_memory_gib(),
            peak_flops={},
            supports_tf32=False,
            supports_bf16=False,
            **_NO_PRICE,
            match=(),  # never matched from a device name; detect_node picks it when there is no GPU
        ),
    )
}


def get_gpu(name: str, registry: Mapping[str, GpuType] | None = None) -> GpuType:
    """A type by name, from the active registry (built-ins plus the user's file) unless one is given."""
    return lookup(registry if registry is not None else active_registry(), name, "GPU type")


def match_gpu(
    device_name: str, memory_mib: int | None = None, registry: Mapping[str, GpuType] | None = None
) -> GpuType | None:
    """The first type (most specific first) that the NVML device name is; None when unknown, never a guess."""
    for gpu in (registry if registry is not None else active_registry()).values():
        if gpu.matches(device_name, memory_mib):
            return gpu
    return None


def machine_base_cost(num_gpus: int) -> float:
    """The machine without its GPUs, by GPU count (the paper's tiers: 1, 2, 4, 8 GPUs). Other counts
    take the next larger tier (3 GPUs need a 4-GPU chassis); there is no tier above 8."""
    if num_gpus < 1:
        raise ValueError(f"a machine cost needs at least one GPU, got {num_gpus}")
    for tier in sorted(MACHINE_BASE_COST):
        if num_gpus <= tier:
            return MACHINE_BASE_COST[tier]
    raise ValueError(f"no machine cost for {num_gpus} GPUs in one node: the paper's tiers stop at 8")


def marker_name(gpu_type: GpuType | str) -> str:
    """The pytest marker of a type: its name with '-' as '_' (a100-40gb -> a100_40gb)."""
    name = gpu_type.name if isinstance(gpu_type, GpuType) else gpu_type
    return name.replace("-", "_")


def active_registry() -> dict[str, GpuType]:
    """The built-ins plus the file in $PRETRAIN_BENCH_HARDWARE (read once per path and process)."""
    from hardware import overrides  # overrides builds on this module

    return overrides.active_registry()
