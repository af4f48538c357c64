"""Which parameters each original training code exempted from weight decay.

The Trainer's default exempts biases and LayerNorm parameters (found by type and by name), which is
GPT-NeoX's rule but not everyone's. Each recipe names its rule; the worker's Trainer builds its two
parameter groups from it under every method (DDP, FSDP, DeepSpeed), and the result records them.

- `bias-norm`: GPT-NeoX (Pythia): FusedAdam in AdamW mode; `get_params_for_weight_decay_optimization`
  puts every parameter of a LayerNorm/RMSNorm/ScaleNorm and every bias in the no-decay group
  (megatron/model/utils.py). Embeddings and the untied output layer decay.
- `none`: fairseq's Adam (RoBERTa) is decoupled (AdamW) and is given every parameter, biases and
  LayerNorms included (fairseq/trainer.py passes all trainable parameters; nothing is exempt). ViT's
  pre-training code was not published; its recipe names Adam with decay 0.03, which flax's Adam of
  the time applied, decoupled and scaled by the learning rate, to every parameter it was given.
- `bias-1d`: ConvNeXt (timm's optimizer factory): no decay for any 1-D parameter or bias, which
  covers the norms and the layer-scale vectors (optim_factory.py `len(param.shape) == 1`).
- `bias-norm-ssm`: Mamba: AdamW; mamba-ssm marks the SSM's `A_log` and `D` `_no_weight_decay`, and
  the GPT-3-style grouping it was trained with exempts biases and norms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

RULES: dict[str, str] = {
    "bias-norm": "no decay on biases and normalisation parameters (GPT-NeoX)",
    "none": "every parameter decays (fairseq's Adam, flax's Adam)",
    "bias-1d": "no decay on biases and 1-D parameters: norms, layer scale (timm)",
    "bias-norm-ssm": "no decay on biases, normalisation parameters and the SSM's A_log and D (mamba-ssm)",
}
SSM_NO_DECAY = ("A_log", "D")


def _is_norm(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def no_decay_names(model: nn.Module, rule: str) -> set[str]:
    """Names (as `model.named_parameters()` gives them) of the parameters `rule` exempts from decay."""
    if rule not in RULES:
        raise ValueError(f"unknown weight-decay rule {rule!r}; choose from {', '.join(RULES)}")
    if rule == "none":
        return set()
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            reasons = (
                name == "bias" or name.endswith("_bias"),
                rule in ("bias-norm", "bias-norm-ssm") and _is_norm(module),
                rule == "bias-1d" and param.ndim == 1,
                rule == "bias-norm-ssm" and name in SSM_NO_DECAY,
            )
            if any(reasons):
                exempt.add(full)
    return exempt
