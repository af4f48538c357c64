"""Workarounds for particular versions of the libraries the worker trains through, in one place.

Each says what it works around and how to tell when it can go.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Any


def fsdp_on_cpu(trainer: Any) -> None:
    """Turn on, for a CPU job, the FSDP plugin the Trainer built and handed to accelerate.

    accelerate enables FSDP only for accelerator devices (MULTI_CPU is not in its list) and would
    train plain DDP under the FSDP name. Set here, after the Trainer is built and before anything is
    prepared, the Trainer wraps and trains the model through accelerate's own FSDP2 path over gloo,
    as it does over NCCL, so the CPU tests exercise the FSDP plan, timing and parity for real.
    Remove when accelerate enables FSDP on MULTI_CPU (the assertion below then fails).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    assert getattr(state, "fsdp_plugin", None) is None, "accelerate enabled FSDP itself: remove this"
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def plain_cuda_arch_list() -> None:
    """DeepSpeed's just-in-time op builder parses TORCH_CUDA_ARCH_LIST as numbers and fails on an
    architecture suffix such as "9.0a"; build its ops for the plain architecture instead."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if value:
        os.environ["TORCH_CUDA_ARCH_LIST"] = re.sub(r"(\d+\.\d+)[a-z]+", r"\1", value)


def disable_mamba_kernels(packages: tuple[str, ...]) -> None:
    """Naive Mamba runs the reference PyTorch scan even where the CUDA kernels are installed.

    transformers binds mamba-ssm / causal-conv1d when modeling_mamba is first imported (5.17 and
    later), so the packages are made unimportable before the model module loads.
    """
    for package in packages:
        sys.modules[package] = None  # type: ignore[assignment]  # import now raises ImportError


def mamba_kernel_path() -> bool | None:
    """True if the Mamba model really bound the CUDA kernels, False for the PyTorch path, None if no Mamba."""
    module = sys.modules.get("transformers.models.mamba.modeling_mamba")
    if module is None:
        return None
    fn = getattr(module, "mamba_inner_fn", None)
    # transformers 5.x keeps the module-level name for a wrapper (named after its PyTorch reference)
    # that calls the function it bound at import, mamba-ssm's or the reference, from its closure.
    if inspect.isfunction(fn):
        fn = inspect.getclosurevars(fn).nonlocals.get("implementation", fn)
    return bool(fn is not None and (getattr(fn, "__module__", "") or "").startswith("mamba_ssm"))


def never_fall_back_to_eager() -> None:
    """torch.compile recompiles a function at most `recompile_limit` (8) times; past that it warns
    once and runs every new shape *eagerly*, which a benchmark would then time as compiled. Make
    hitting the limit an error instead (torch 2.6+ has the switch; older ones keep their default)."""
    import torch._dynamo

    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        torch._dynamo.config.fail_on_recompile_limit_hit = True
