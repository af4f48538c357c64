"""The environment fingerprint: what a result was measured with, and the key results are stored by.

The code version is a hash of the measuring code itself (harness/ and models/), so that a change to
what is measured invalidates stored results while edits elsewhere (reports, docs) do not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "accelerate", "deepspeed")
# The fields that make two results comparable; the rest of the environment is descriptive.
KEY_FIELDS = ("gpu_name", "gpu_count", "driver", "cuda", "torch", "transformers", "deepspeed", "code_version")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def code_version() -> str:
    digest = hashlib.sha256()
    for package in ("harness", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return f"{package_version('pretrain-bench') or '0+local'}-{digest.hexdigest()[:12]}"


def controller_environment(node: Any) -> dict[str, Any]:
    """The fingerprint as the controller sees it: no CUDA context, the node from NVML/nvidia-smi."""
    import torch  # the version strings only; importing torch creates no CUDA context

    return {
        "gpu_name": node.gpu_name or "cpu",
        "gpu_count": node.count,
        "driver": node.driver_version,
        "cuda": torch.version.cuda,
        **{name: package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "code_version": code_version(),
    }


def runtime_environment() -> dict[str, Any]:
    """The fingerprint as a worker sees it (it already holds a CUDA context)."""
    import torch

    env: dict[str, Any] = {
        "gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cuda": torch.version.cuda,
        **{name: package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "code_version": code_version(),
        "hostname": platform.node(),
        **host_identity(),
    }
    return env


def host_identity() -> dict[str, Any]:
    """The machine instance and its CPU. Two machines of one kind can differ in host speed, and a
    host-bound case (FSDP's per-layer hooks on a small model) runs at the host's pace: a prediction
    and its validation are comparable only on the same instance (same boot id)."""
    boot_id = Path("/proc/sys/kernel/random/boot_id")
    cpu = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
    return {
        "boot_id": boot_id.read_text().strip() if boot_id.exists() else None,
        "cpu": cpu or platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }


def key_fields(case: Any) -> tuple[str, ...]:
    """The KEY_FIELDS that decide whether two results of `case` are comparable: DeepSpeed's version
    only where DeepSpeed runs, so installing it keeps every other case's results (resume, checks)."""
    return tuple(k for k in KEY_FIELDS if k != "deepspeed" or case.method.uses_deepspeed)


def fingerprint_key(env: dict[str, Any], case: Any) -> str:
    text = "|".join(f"{k}={env.get(k)}" for k in key_fields(case))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
