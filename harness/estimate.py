"""A lower bound on per-GPU memory from model states alone, to skip hopeless cases before launching.

The Trainer's autocast (DDP, FSDP) keeps, per parameter: fp32 weights (4 bytes), fp32 gradients (4)
and two fp32 Adam moments (8). DeepSpeed with an fp16/bf16 recipe keeps half-precision weights and
gradients (2 + 2) and, with the optimizer, an fp32 master copy and the moments (12): ZeRO paper,
Rajbhandari et al. 2020, sec. 3.1. Sharding divides the sharded parts by the GPU count; offloading
moves optimizer states (and, fully sharded, the parameters) to the host. Activations are not counted,
so the bound only ever rules out cases that cannot fit whatever the micro-batch.
"""

from __future__ import annotations

from harness.cases import Case

GIB = 1024**3
# (weights, gradients, optimizer states) bytes per parameter
STATE_BYTES = (4, 4, 8)
DEEPSPEED_HALF_STATE_BYTES = (2, 2, 12)
# Which of (weights, gradients, optimizer) each sharding splits across GPUs.
SHARDED = {
    "none": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
    "fsdp_grad_op": (False, True, True),
    "fsdp_full": (True, True, True),
}


def model_state_gib(case: Case, num_parameters: int, precision: str = "fp32") -> float:
    method = case.method
    n = case.num_gpus
    half = method.uses_deepspeed and precision in ("fp16", "bf16")
    weights, grads, optim = (
        b * num_parameters for b in (DEEPSPEED_HALF_STATE_BYTES if half else STATE_BYTES)
    )
    split_w, split_g, split_o = SHARDED[method.sharding]
    if method.offloading:
        optim = 0
        if method.sharding in ("zero3", "fsdp_full"):
            weights = 0
    total = (
        (weights / n if split_w else weights)
        + (grads / n if split_g else grads)
        + (optim / n if split_o else optim)
    )
    return total / GIB


def predicted_infeasible(case: Case) -> str | None:
    """The reason a case cannot fit (states alone exceed the card), or None if it may fit."""
    from hardware import get_gpu
    from harness.param_counts import num_parameters

    gpu = get_gpu(case.gpu_type)
    if case.gpu_type == "cpu" or not gpu.memory_gib:
        return None
    from models import get_model

    need = model_state_gib(case, num_parameters(case.model), get_model(case.model).recipe.precision)
    if need > gpu.memory_gib:
        return (
            f"predicted: model states need {need:.1f} GiB per GPU before activations, "
            f"{gpu.memory_gib:.1f} GiB available on {gpu.name}"
        )
    return None
