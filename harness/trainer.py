"""The worker's Trainer: the stock `transformers.Trainer` built from a job's plan, a synthetic dataset,
the callbacks that measure, and the read-back of what really ran.

`MeasuredTrainer` changes nothing in how the Trainer trains: it marks where each micro-batch begins
(for the step recorder), injects test faults, counts CPU memory, feeds the probe its batches, and
builds its weight-decay groups by the recipe's rule instead of the Trainer's default one.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from harness import compat, faults, oom
from harness.cpu_memory import BUDGET_ENV, CpuMemory
from harness.job import Job
from harness.timing import StepRecorder

POOL_SIZE = 64  # distinct random samples cycled by the dataset: real data, no per-step generation cost


def write_event(path: Path, event: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(event | {"time": time.time()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


class SyntheticDataset(Dataset):
    """`length` samples drawn from a pool of random ones (the same pool on every rank)."""

    def __init__(self, spec: Any, length: int, seed: int):
        self.pool = spec.make_batch(POOL_SIZE, seed=seed)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index % POOL_SIZE
        return {k: v[i] for k, v in self.pool.items()}


class MeasuredTrainer(Trainer):
    """The stock Trainer; see the module docstring for the little it adds."""

    def __init__(
        self,
        *args: Any,
        recorder: StepRecorder | None,
        ramp: list[int] | None,
        no_decay: str | None,
        cpu_memory: CpuMemory | None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.ramp = ramp
        self.no_decay = no_decay
        self.cpu_memory = cpu_memory
        self.fault = faults.parse(os.environ.get(faults.ENV))
        self.loader_workers: int | None = None
        self.decay_groups: dict[str, Any] = {}

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        if self.no_decay is None:
            names = super().get_decay_parameter_names(model)
        else:
            from models.decay import no_decay_names

            exempt = no_decay_names(model, self.no_decay)
            names = [n for n, _ in model.named_parameters() if n not in exempt]
        every = [n for n, _ in model.named_parameters()]
        # Recorded for the result: the groups the optimizer was built with.
        self.decay_groups = {
            "rule": self.no_decay or "transformers default",
            "decay": len(names),
            "no_decay": sorted(set(every) - set(names)),
        }
        return names

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.recorder is not None:
            self.recorder.micro_batch_begins()
        first = next(iter(inputs.values()))
        faults.maybe_inject(
            self.fault, rank=self.args.process_index, micro_batch=len(first), step=self.state.global_step
        )
        if self.cpu_memory is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:
            self.cpu_memory.count_states(self.model, self.optimizer)
            with self.cpu_memory.micro_batch():
                loss = super().training_step(model, inputs, num_items_in_batch)
        if self.recorder is not None:
            self.recorder.last_loss = loss.detach()
        return loss

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.ramp is not None and len(set(self.ramp)) > 1:
            # The probe's batch size changes between steps: compile for a symbolic batch dimension at
            # once instead of a static graph for the first size and a recompilation at the second
            # (about a minute per compiled model on a GPU). Marked here, on the tensors the model
            # receives (the move to the device makes new ones); `maybe_`: a model that needs a fixed
            # size still runs.
            for tensor in inputs.values():
                if isinstance(tensor, torch.Tensor):
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return inputs

    def get_train_dataloader(self) -> DataLoader:
        if self.ramp is None:
            loader = super().get_train_dataloader()
            # Read back for the result: the worker processes that really fed the timed steps.
            self.loader_workers = loader.num_workers
            return loader
        # The probe feeds each rank its own batches of growing size, one optimizer step per size.
        rank = self.args.process_index
        batches, start = [], rank * sum(self.ramp)
        for size in self.ramp:
            batches.append(list(range(start, start + size)))
            start += size
        dataset = self.train_dataset
        assert isinstance(dataset, SyntheticDataset), "the probe feeds the synthetic dataset"
        return DataLoader(dataset, batch_sampler=batches, pin_memory=self.args.dataloader_pin_memory)


def memory_figures(trainer: MeasuredTrainer) -> dict[str, float]:
    """Peak memory since the last reset and the total: the card's, or the CPU meter's."""
    if trainer.cpu_memory is not None:
        return trainer.cpu_memory.figures()
    return oom.memory_now()


def reset_peak(trainer: MeasuredTrainer) -> None:
    if trainer.cpu_memory is not None:
        trainer.cpu_memory.reset_peak()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class ProbeCallback(TrainerCallback):
    """Measures each probe step's peak memory from a clean allocator, agreed over ranks."""

    def __init__(self, ramp: list[int], events: Path):
        self.ramp, self.events = ramp, events
        self.current: int | None = None
        self.trainer: MeasuredTrainer | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        assert self.trainer is not None
        self.current = self.ramp[state.global_step]
        # Written before the step, so a job killed mid-try still says which micro-batch it was on.
        write_event(self.events, {"event": "try", "micro_batch": self.current})
        reset_peak(self.trainer)

    def on_step_end(self, args, state, control, **kwargs):
        assert self.trainer is not None
        figures = memory_figures(self.trainer)
        # The job's verdict is the largest rank's: that is the one that runs out first.
        for key in ("peak_allocated_gib", "peak_reserved_gib"):
            figures[key] = max_over_ranks(figures[key])
        # The graphs compiled so far: a probe whose sizes share one dynamic graph keeps this at 1
        # (0 uncompiled); a rise names the size that recompiled (the reason is in output.log).
        fit = {"event": "fit", "micro_batch": self.current, **figures}
        write_event(self.events, fit | {"compiled_graphs": compiled_graphs()})


def build_trainer(job: Job, *, recorder: StepRecorder | None, ramp: list[int] | None, extra_callbacks=()):
    from models import get_model

    plan = job.plan
    spec = get_model(plan["case"]["model"])
    if plan["training_args"].get("deepspeed"):
        compat.plain_cuda_arch_list()
    if job.compiled:
        compat.never_fall_back_to_eager()
    injected = faults.training_overrides(faults.parse(os.environ.get(faults.ENV)), cpu=job.device == "cpu")
    # TrainingArguments first: it sets up the process group and DeepSpeed's ZeRO-3 partitioned init.
    args = TrainingArguments(**(plan["training_args"] | injected))
    torch.manual_seed(args.seed)
    if plan["use_kernels"] is False and spec.kernels:
        compat.disable_mamba_kernels(spec.kernels)
    device = args.device
    deepspeed = plan["training_args"].get("deepspeed")
    if deepspeed and deepspeed["zero_optimization"]["stage"] == 3:
        model = spec.build_model(attn_implementation=plan["attn_implementation"])
    else:
        with torch.device(device):  # initialise on the device: seconds, not minutes, for billions of weights
            model = spec.build_model(attn_implementation=plan["attn_implementation"])
    world = args.world_size
    steps = args.max_steps
    length = (
        sum(ramp) * world
        if ramp
        else args.per_device_train_batch_size * args.gradient_accumulation_steps * world * (steps + 1)
    )
    dataset = SyntheticDataset(spec, length, seed=args.seed)
    optimizer = plan["optimizer"]
    opt_kwargs = {}
    if optimizer is not None:
        module, name = optimizer["target"].split(":")
        opt_kwargs["optimizer_cls_and_kwargs"] = (
            getattr(importlib.import_module(module), name),
            dict(optimizer["kwargs"]),
        )
    callbacks = [c for c in (recorder, *extra_callbacks) if c is not None]
    trainer = MeasuredTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=callbacks,
        recorder=recorder,
        ramp=ramp,
        no_decay=(optimizer or {}).get("no_decay"),
        # Counted on the CPU where memory matters: in the probe, and under a budget (tests).
        cpu_memory=CpuMemory() if device.type == "cpu" and (ramp or os.environ.get(BUDGET_ENV)) else None,
        **opt_kwargs,
    )
    for callback in extra_callbacks:
        if isinstance(callback, ProbeCallback):
            callback.trainer = trainer
    # CPU jobs only: GPU jobs never read the Trainer's FSDP internals (their accelerate enables FSDP).
    if device.type == "cpu" and args.fsdp_plugin_args is not None:
        compat.fsdp_on_cpu(trainer)
    return trainer


def execution_path(trainer: MeasuredTrainer) -> dict[str, Any]:
    """Which code paths really ran: attention implementation, compile, the distributed wrapper."""
    config = getattr(trainer.model, "config", None)
    return {
        "attention": getattr(config, "_attn_implementation", None),
        "compiled": bool(trainer.args.torch_compile),
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped_model": type(trainer.model_wrapped).__name__,
        "fsdp": bool(trainer.is_fsdp_enabled),
        "deepspeed": bool(trainer.is_deepspeed_enabled),
        # FSDP2 shards in place: its modules become FSDP* classes.
        "sharded_modules": sorted(
            {type(m).__name__ for m in trainer.model_wrapped.modules() if type(m).__name__.startswith("FSDP")}
        ),
        "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "mamba_kernels": compat.mamba_kernel_path(),
        "loader_workers": trainer.loader_workers,
        "compile": compile_figures(),
    }


def optimizer_settings(trainer: MeasuredTrainer) -> dict[str, Any]:
    """What the optimizer really holds, read back after training (under DeepSpeed too)."""
    opt = trainer.optimizer
    assert opt is not None, "read after training: the Trainer has built its optimizer"
    inner = getattr(opt, "optimizer", opt)  # AcceleratedOptimizer / DeepSpeed wrappers hold the real one
    inner = getattr(inner, "optimizer", inner)
    groups = [
        {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in g.items()
            if k in ("lr", "initial_lr", "betas", "eps", "weight_decay")
        }
        | {"parameters": len(g["params"])}
        for g in inner.param_groups
    ]
    # DeepSpeed's Adams carry the switch as an attribute; torch's Adam/AdamW in their defaults.
    decoupled = getattr(inner, "adam_w_mode", None)
    if decoupled is None:
        decoupled = inner.defaults.get("decoupled_weight_decay", isinstance(inner, torch.optim.AdamW))
    return {
        "class": type(inner).__name__,
        "module": type(inner).__module__,
        "decoupled_weight_decay": bool(decoupled),
        "param_groups": groups,
        "decay_groups": trainer.decay_groups,
    }


def what_ran(trainer: MeasuredTrainer) -> dict[str, Any]:
    """The optimizer read back after training and the code paths that ran: every training job's record."""
    return {"optimizer": optimizer_settings(trainer), **execution_path(trainer)}


def max_over_ranks(value: float) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = current_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def compiled_graphs() -> int:
    """Graphs torch.compile built in this process (recompilations included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_figures() -> dict[str, Any]:
    """Time this process spent compiling, and how often the compile caches served it."""
    from torch._dynamo.utils import counters

    spent: dict[str, float] = {}
    try:
        from torch._dynamo.utils import calculate_time_spent

        spent = calculate_time_spent()
    except ImportError:  # older torch: no breakdown, the first step's overhead stands in
        pass
    return {
        "graphs": compiled_graphs(),
        "compile_s": spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0),
        "fx_cache_hits": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
        "fx_cache_misses": int(counters["inductor"].get("fxgraph_cache_miss", 0)),
        "autograd_cache_hits": int(counters["aot_autograd"].get("autograd_cache_hit", 0)),
    }


def current_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
