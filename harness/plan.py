"""The plan: from a case, a micro-batch and an accumulation count, the exact Trainer settings.

`make_plan` is the single source of truth: the worker trains with its output and the report exports
it unchanged, so that what a user copies is what was measured.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any

from harness.cases import Case
from harness.methods import DEEPSPEED_STAGES, FSDP_STRATEGIES

# Under DeepSpeed: its fused GPU Adam, or its CPU Adam when the optimizer states are offloaded (ZeRO
# refuses other optimizers with offload), each with the keyword that switches decoupled (AdamW) decay.
DEEPSPEED_OPTIMIZERS = {
    False: ("deepspeed.ops.adam:FusedAdam", "adam_w_mode"),
    True: ("deepspeed.ops.adam:DeepSpeedCPUAdam", "adamw_mode"),
}


class BatchNotDivisibleError(ValueError):
    """The global batch cannot be split evenly over the case's GPUs."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    case: Case
    micro_batch_size: int
    grad_acc_steps: int
    attn_implementation: str | None  # what the model is built with (None: the model has no attention)
    use_kernels: bool  # Mamba's CUDA kernels (mamba-ssm, causal-conv1d)
    # Keyword arguments of transformers.TrainingArguments, JSON-ready (DeepSpeed dict and FSDP config inside).
    training_args: dict[str, Any] = field(hash=False)
    # Optimizer class ("module:Class"), its keyword arguments and the weight-decay rule (models.decay)
    # the Trainer builds its two parameter groups from, under every method, DeepSpeed included.
    optimizer: dict[str, Any] = field(hash=False)

    @property
    def deepspeed(self) -> dict[str, Any] | None:
        return self.training_args.get("deepspeed")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "case": asdict(self.case) | {"id": self.case.id},
            "micro_batch_size": self.micro_batch_size,
            "grad_acc_steps": self.grad_acc_steps,
            "attn_implementation": self.attn_implementation,
            "use_kernels": self.use_kernels,
            "training_args": self.training_args,
            "optimizer": self.optimizer,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def unsupported_reason(case: Case) -> str | None:
    """Why a case cannot run at all on its hardware type (before any measurement), or None."""
    from models import get_model

    spec = get_model(case.model)
    if case.method.activation_checkpointing and not spec.supports_gradient_checkpointing:
        return f"{spec.hf_class.split(':')[-1]} has no activation checkpointing in transformers"
    if case.gpu_type == "cpu" and case.method.uses_deepspeed:
        return "DeepSpeed needs CUDA GPUs: the cpu profile runs DDP only"
    if case.gpu_type == "cpu" and case.method.offloading:
        return "offloading to the CPU measures nothing on a CPU run"
    if missing := missing_packages(case):
        wheels = " ".join(name.replace("_", "-") for name in missing)
        return (
            f"{case.method.slug} on {case.gpu_type} needs {', '.join(missing)}, not installed here "
            f"(pip install --no-build-isolation {wheels})"
        )
    return None


def refusal(case: Case) -> str | None:
    """Why a case cannot run at all (unsupported here, or a GPU count that does not divide the
    batch), or None: what collection skips and what the engine records as infeasible before a job."""
    try:
        per_device_target(case)
    except BatchNotDivisibleError as error:
        return str(error)
    return unsupported_reason(case)


def missing_packages(case: Case) -> list[str]:
    """Packages a GPU case's method runs on that are not importable: DeepSpeed for ZeRO, and a model's
    CUDA kernels for free lunch (without them Mamba's free lunch would time the reference scan)."""
    from models import get_model

    if case.gpu_type == "cpu":
        return []
    needed = ["deepspeed"] if case.method.uses_deepspeed else []
    if case.method.free_lunch:
        needed += get_model(case.model).kernels
    return [name for name in needed if not package_available(name)]


def per_device_target(case: Case) -> int:
    """The per-GPU share of the recipe's global batch (micro-batch x accumulation must reach it)."""
    from models import get_model

    global_batch = get_model(case.model).recipe.global_batch
    if global_batch % case.num_gpus:
        raise BatchNotDivisibleError(
            f"global batch {global_batch} of {case.model} is not divisible by {case.num_gpus} GPUs"
        )
    return global_batch // case.num_gpus


def accumulation_steps(case: Case, micro_batch: int) -> int:
    """The accumulation that makes `micro_batch` reach the per-GPU share of the recipe's batch."""
    target = per_device_target(case)
    if target % micro_batch:
        raise BatchNotDivisibleError(f"micro-batch {micro_batch} does not divide the per-GPU batch {target}")
    return target // micro_batch


def candidate_micro_batches(case: Case, *, all_divisors: bool = False) -> list[int]:
    """Micro-batch sizes to probe, ascending: the powers of two (or all divisors) of the per-GPU batch."""
    target = per_device_target(case)
    divisors = [d for d in range(1, target + 1) if target % d == 0]
    if all_divisors:
        return divisors
    return [d for d in divisors if d & (d - 1) == 0]


DATALOADER_DEFAULT_PREFETCH = 2  # torch.utils.data.DataLoader's prefetch_factor with workers


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def loader_prefetch(per_device_batch: int, micro_batch_size: int, loader_workers: int) -> int:
    """Batches each loader worker keeps ready: enough for a whole optimizer step at the recipe's accumulation.

    The Trainer fetches all of a step's micro-batches when the step begins. At the DataLoader's default
    depth (2 per worker) only 2 x workers of them are ready; the rest are collated and pinned while the
    device waits, which timing at a shortened accumulation (served from the queue) does not see. ViT on
    an H100 (128 x 32, 8 workers): 9.54 s a step at the full accumulation against 8.93 s predicted; with
    a step's worth queued, 8.89 s against 8.78 s. Taken from the recipe's accumulation, not the plan's,
    so the shortened timing jobs load exactly as the plan they stand for. Costs about one step's data more in
    host memory per rank, as much as the Trainer already holds while a step runs (32 x 77 MB for that
    ViT), whatever the micro-batch.
    """
    micro_batches = -(-per_device_batch // micro_batch_size)
    return max(DATALOADER_DEFAULT_PREFETCH, -(-micro_batches // loader_workers))


def make_plan(
    case: Case,
    micro_batch_size: int,
    grad_acc_steps: int | None = None,
    *,
    max_steps: int | None = None,
    output_dir: str = "runs/train",
    seed: int = 0,
    loader_workers: int = 0,
) -> Plan:
    """The complete Trainer settings for `case` at this micro-batch.

    `grad_acc_steps` defaults to the recipe's (per-GPU target / micro-batch) and `max_steps` to the
    recipe's step count; the worker shortens both for timing and says so in its result.
    `loader_workers`: the data loader's worker processes per rank; 0, the Trainer's default, collates
    each micro-batch in the training process (for images, 77 MB per 128 at 224 px, between steps).
    """
    if loader_workers < 0:
        raise ValueError(f"loader workers must be 0 or more, got {loader_workers}")
    from hardware import get_gpu
    from models import get_model

    spec = get_model(case.model)
    recipe = spec.recipe
    method = case.method
    gpu = get_gpu(case.gpu_type)
    on_gpu = case.gpu_type != "cpu"
    target = per_device_target(case)
    if grad_acc_steps is None:
        grad_acc_steps = accumulation_steps(case, micro_batch_size)

    attn = _attention(spec, method.free_lunch, recipe.precision, on_gpu)
    use_kernels = (
        bool(spec.kernels) and method.free_lunch and on_gpu and all(map(package_available, spec.kernels))
    )
    ckpt = method.activation_checkpointing
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": max_steps if max_steps is not None else recipe.training_steps,
        "per_device_train_batch_size": micro_batch_size,
        "gradient_accumulation_steps": grad_acc_steps,
        "learning_rate": recipe.lr,
        "adam_beta1": recipe.betas[0],
        "adam_beta2": recipe.betas[1],
        "adam_epsilon": recipe.eps,
        "weight_decay": recipe.weight_decay,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "lr_scheduler_kwargs": dict(recipe.lr_scheduler_kwargs_dict),
        "warmup_steps": recipe.warmup_steps,
        "max_grad_norm": recipe.max_grad_norm,
        "bf16": recipe.precision == "bf16",
        "fp16": recipe.precision == "fp16",
        # TF32 is a free-lunch switch; the argument must stay unset where CUDA is absent.
        "tf32": (method.free_lunch and gpu.supports_tf32) if on_gpu else None,
        "torch_compile": method.free_lunch and spec.supports_compile,
        # FSDP checkpoints through its own wrapper (fsdp_config below); the Trainer's flag would
        # checkpoint inside the sharded modules and re-gather parameters twice.
        "gradient_checkpointing": ckpt and not method.uses_fsdp,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if ckpt and not method.uses_fsdp else None,
        "ddp_find_unused_parameters": False,
        "use_cpu": not on_gpu,
        "dataloader_drop_last": True,
        "dataloader_pin_memory": on_gpu,
        "remove_unused_columns": False,
        # The NaN filter reads every micro-batch's loss on the host, a device synchronization per
        # micro-batch that stalls the launch queue; training does not need it.
        "logging_nan_inf_filter": False,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": seed,
    }
    if loader_workers:
        # Set only when used, so that a plan with the Trainer's default stays the plan it always was
        # (stored results and exported settings compare equal). Persistent: the Trainer would start
        # the workers again at every pass over the dataset.
        args |= {
            "dataloader_num_workers": loader_workers,
            "dataloader_persistent_workers": True,
            "dataloader_prefetch_factor": loader_prefetch(target, micro_batch_size, loader_workers),
        }
    hyper: dict[str, Any] = {
        "lr": recipe.lr,
        "betas": list(recipe.betas),
        "eps": recipe.eps,
        "weight_decay": recipe.weight_decay,
    }
    # fused: one multi-tensor kernel per step instead of a loop over parameters.
    fused = {"fused": True} if on_gpu else {}
    no_decay = {"no_decay": recipe.no_decay}
    optimizer: dict[str, Any] = {"target": recipe.optimizer_target, "kwargs": hyper | fused, **no_decay}
    if method.uses_deepspeed:
        args["deepspeed"] = _deepspeed_config(method.sharding, method.offloading)
        # The Trainer builds DeepSpeed's optimizer too, not the DeepSpeed dict: from the dict DeepSpeed
        # would put every parameter in one group and decay biases and norms, which the Trainer exempts
        # under every other method.
        ds_optimizer, decoupled = DEEPSPEED_OPTIMIZERS[method.offloading]
        optimizer = {
            "target": ds_optimizer,
            "kwargs": hyper | {decoupled: recipe.optimizer == "adamw"},
            **no_decay,
        }
    if method.uses_fsdp:
        strategy = FSDP_STRATEGIES[method.sharding]
        # Everything in fsdp_config: transformers 5.x deprecates the "full_shard auto_wrap offload"
        # string and translates it into exactly these keys.
        args["fsdp"] = True
        args["fsdp_config"] = {
            "version": 2,
            "transformer_layer_cls_to_wrap": [spec.block_class],
            "reshard_after_forward": strategy == "full_shard",
            "cpu_offload": method.offloading,
            "activation_checkpointing": ckpt,
        }
    return Plan(
        case=case,
        micro_batch_size=micro_batch_size,
        grad_acc_steps=grad_acc_steps,
        attn_implementation=attn,
        use_kernels=use_kernels,
        training_args=args,
        optimizer=optimizer,
    )


def _attention(spec: Any, free_lunch: bool, precision: str, on_gpu: bool) -> str | None:
    if not spec.attention:
        return None
    if not free_lunch:
        return "eager"
    # FlashAttention-2 proper needs the flash-attn package and half precision; SDPA picks its own
    # FlashAttention/memory-efficient kernel otherwise.
    if (
        on_gpu
        and precision in ("bf16", "fp16")
        and "flash_attention_2" in spec.attention
        and package_available("flash_attn")
    ):
        return "flash_attention_2"
    return "sdpa"


def _deepspeed_config(sharding: str, offloading: bool) -> dict[str, Any]:
    stage = DEEPSPEED_STAGES[sharding]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offloading:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        # The plan's optimizer already is DeepSpeedCPUAdam under offload; left forced, accelerate
        # would rebuild it from torch class names and turn an AdamW recipe's decoupled decay into L2.
        **({"zero_force_ds_cpu_optimizer": False} if offloading else {}),
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "wall_clock_breakdown": False,
    }
