"""The two data types of the registry: a replication `Recipe` and a `ModelSpec`.

Both are frozen, slotted and hashable (tuples, never dicts or lists), so that they can key caches and
travel between processes as plain data. Nothing here imports torch or transformers at module level:
`import models` must stay cheap for pytest collection; the heavy imports happen inside the methods.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models import batches, flops

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedModel

FAMILIES: tuple[str, ...] = ("pythia", "roberta", "mamba", "convnext", "vit")
IMAGE_FAMILIES: frozenset[str] = frozenset({"convnext", "vit"})
PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "fp32")
OPTIMIZERS: dict[str, str] = {"adam": "torch.optim:Adam", "adamw": "torch.optim:AdamW"}
SCHEDULES: tuple[str, ...] = ("cosine_with_min_lr", "linear", "cosine")
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")

ConfigPairs = tuple[tuple[str, Any], ...]


def resolve(target: str) -> Any:
    """A lazy `"module:attr"` target, imported only when a model is actually built."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _plain(value: Any) -> Any:
    # Configs are stored as tuples to stay hashable; transformers serialises configs to JSON, where
    # a list is the natural form (and what a config loaded from disk holds).
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """How the original code trained a model: batch, length, precision, optimizer and schedule.

    `optimizer`: "adamw" is torch.optim.AdamW, decoupled weight decay, which every original code ran
    (GPT-NeoX's and fairseq's "Adam" are AdamW-mode implementations); "adam" is torch.optim.Adam, L2
    decay added to the gradient. `no_decay` names the rule of models.decay for which parameters the
    original code exempted from decay.
    `lr_scheduler_type` and `lr_scheduler_kwargs` use the Trainer's names; `max_grad_norm` 0.0 means
    no clipping (the Trainer's convention).
    """

    global_batch: int
    training_steps: int
    precision: str
    optimizer: str
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    lr_scheduler_type: str
    lr_scheduler_kwargs: tuple[tuple[str, float], ...] = ()
    warmup_steps: int
    max_grad_norm: float
    no_decay: str = "bias-norm"

    def __post_init__(self) -> None:
        from models.decay import RULES

        if self.no_decay not in RULES:
            raise ValueError(f"unknown weight-decay rule {self.no_decay!r}; choose from {', '.join(RULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.lr_scheduler_type!r}; choose from {', '.join(SCHEDULES)}"
            )
        if not 0 <= self.warmup_steps < self.training_steps:
            raise ValueError(f"warmup {self.warmup_steps} must lie in [0, {self.training_steps})")
        if self.global_batch < 1:
            raise ValueError(f"global batch must be positive, got {self.global_batch}")

    @property
    def lr_scheduler_kwargs_dict(self) -> dict[str, float]:
        """The schedule's extra arguments, as `TrainingArguments(lr_scheduler_kwargs=...)` takes them."""
        return dict(self.lr_scheduler_kwargs)

    @property
    def optimizer_target(self) -> str:
        """The torch optimizer class as a lazy `"module:attr"` target."""
        return OPTIMIZERS[self.optimizer]

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """One model: its architecture (explicit config kwargs, no hub), recipe, inputs and FLOPs.

    `block_class` names the repeated block, for FSDP auto-wrap and activation checkpointing.
    `attention` lists the `attn_implementation` values the HF class supports; () where it has no
    attention. `kernels` lists the optional CUDA packages the HF class picks up when installed.
    """

    name: str
    family: str
    hf_class: str
    config_class: str
    config: ConfigPairs
    recipe: Recipe
    block_class: str
    seq_len: int | None = None
    image_size: int | None = None
    supports_compile: bool = True
    supports_gradient_checkpointing: bool = True
    attention: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose from {', '.join(FAMILIES)}")
        is_image = self.family in IMAGE_FAMILIES
        if is_image != (self.image_size is not None) or is_image == (self.seq_len is not None):
            raise ValueError(f"{self.name}: an image model needs image_size, a text model seq_len, not both")
        unknown = set(self.attention) - set(ATTENTION_IMPLEMENTATIONS)
        if unknown:
            raise ValueError(f"{self.name}: unknown attention implementations {sorted(unknown)}")
        keys = [key for key, _ in self.config]
        if len(keys) != len(set(keys)):
            raise ValueError(f"{self.name}: repeated config keys")
        # The image size lives in both places for image models; they must not disagree.
        if is_image and self.config_kwargs.get("image_size", self.image_size) != self.image_size:
            raise ValueError(f"{self.name}: config image_size differs from the spec's {self.image_size}")

    @property
    def config_kwargs(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in self.config}

    @property
    def sample_unit(self) -> str:
        return "images" if self.family in IMAGE_FAMILIES else "tokens"

    @property
    def sample_size(self) -> int:
        """Sequence length for text models, image side for image models."""
        size = self.seq_len if self.seq_len is not None else self.image_size
        if size is None:
            raise ValueError(f"{self.name}: neither seq_len nor image_size is set")
        return size

    @property
    def tokens_per_sample(self) -> int:
        """Tokens in one sample for text models; an image counts as one sample-unit."""
        return self.seq_len if self.seq_len is not None else 1

    def build_config(self, *, attn_implementation: str | None = None) -> PreTrainedConfig:
        """The transformers config, from the explicit kwargs only (no hub access)."""
        if attn_implementation is not None and attn_implementation not in self.attention:
            supported = ", ".join(self.attention) or "none (the model has no attention)"
            raise ValueError(
                f"{self.name} does not support attn_implementation={attn_implementation!r}; "
                f"supported: {supported}"
            )
        kwargs = self.config_kwargs
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        return resolve(self.config_class)(**kwargs)

    def build_model(self, *, attn_implementation: str | None = None) -> PreTrainedModel:
        """A randomly initialised fp32 model on the current default device.

        `_from_config` rather than the constructor: under an active DeepSpeed ZeRO-3 config it wraps
        construction in `deepspeed.zero.Init`, so that parameters are partitioned as they are created.
        """
        import torch

        config = self.build_config(attn_implementation=attn_implementation)
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        return resolve(self.hf_class)._from_config(config, dtype=torch.float32, **extra)

    def make_batch(
        self, batch_size: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Random inputs with the labels the HF model computes its loss from (see models.batches)."""
        return batches.make_batch(self, batch_size, seed=seed, device=device)

    def flops_per_sample(self) -> float:
        """Training FLOPs (forward + backward, no recomputation) for one sample (see models.flops)."""
        return flops.training_flops_per_sample(self)

    def num_parameters(self) -> int:
        return _count_parameters(self)


@functools.cache
def _count_parameters(spec: ModelSpec) -> int:
    # Module-level cache: the spec is frozen and slotted, so it cannot memoise on itself. The meta
    # device allocates nothing, so even pythia-6.9b costs only the construction time.
    import torch

    with torch.device("meta"):
        model = spec.build_model()
    return sum(p.numel() for p in model.parameters())
