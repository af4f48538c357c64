"""Training FLOPs per sample, by an explicit formula per family.

Conventions, the same as `torch.utils.flop_counter.FlopCounterMode` so that the two can be compared:
- Only matrix multiplications and convolutions count, at 2*m*n*k (a multiply and an add) for an
  (m x k) @ (k x n) product; norms, activations, softmax, the loss and embedding lookups do not.
- Training = 3 x forward: the backward pass of a product computes the gradient of its input and of its
  weight, each as large as the forward product (Kaplan et al. 2020, sec. 2.1; PaLM, appendix B).
  No activation recomputation is counted: these are model FLOPs, the numerator of MFU.
  (The counter itself sees 2 x forward for the very first conv of an image model, whose input needs
  no gradient; that layer is under 1% of any model here. Its conv backward formula also ignores
  `groups` in the weight gradient, counting a depthwise conv's backward C times over; the tests
  compare against the counter with that one formula corrected.)
- Attention is counted in full, 2*s*s*d for Q @ K^T and 2*s*s*d for P @ V per layer, even for causal
  models: the counter's SDPA formula (`sdpa_flop_count`) counts the full square whatever the mask,
  and so does eager attention, which materialises it. Its backward counts 2 x forward (4 products).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.spec import ModelSpec

TRAINING_MULTIPLIER = 3  # forward + backward (input and weight gradients)


def training_flops_per_sample(spec: ModelSpec) -> float:
    formula = FORWARD_FORMULAS.get(spec.family)
    if formula is None:
        raise ValueError(f"no FLOPs formula for family {spec.family!r}")
    return float(TRAINING_MULTIPLIER * formula(spec.config_kwargs, spec.sample_size))


def transformer_layer_forward(tokens: int, hidden: int, intermediate: int) -> int:
    """One pre/post-LN transformer layer on `tokens` tokens (PaLM appendix B, Chinchilla table A4).

    Q, K, V and output projections 4 * 2*t*d*d; MLP up and down 2 * 2*t*d*f; attention scores and
    weighted values 2 * 2*t*t*d (the heads split d, so the sum over heads is the same).
    """
    projections = 2 * tokens * hidden * 4 * hidden
    mlp = 2 * 2 * tokens * hidden * intermediate
    attention = 2 * 2 * tokens * tokens * hidden
    return projections + mlp + attention


def pythia_forward(config: Mapping[str, Any], seq_len: int) -> int:
    """GPT-NeoX: the layers, then the untied LM head on every position (2*s*d*V).

    The rotary tables come from a (d_rot/2 x 1) @ (1 x s) product: negligible and not counted.
    """
    hidden = config["hidden_size"]
    layer = transformer_layer_forward(seq_len, hidden, config["intermediate_size"])
    layers = config["num_hidden_layers"] * layer
    return layers + 2 * seq_len * hidden * config["vocab_size"]


def roberta_forward(config: Mapping[str, Any], seq_len: int) -> int:
    """RoBERTa for masked LM: the layers, then the LM head on every position (HF does not gather the
    masked positions first): a d x d dense layer and the d x V decoder. No pooler in RobertaForMaskedLM."""
    hidden = config["hidden_size"]
    layer = transformer_layer_forward(seq_len, hidden, config["intermediate_size"])
    layers = config["num_hidden_layers"] * layer
    head = 2 * seq_len * hidden * hidden + 2 * seq_len * hidden * config["vocab_size"]
    return layers + head


def vit_forward(config: Mapping[str, Any], image_size: int) -> int:
    """ViT: patch embedding (a p x p stride-p conv = one (3*p*p) x d product per patch), the layers on
    patches + [CLS] tokens (197 at 224 px / patch 16), and the classifier on [CLS] only."""
    hidden, patch = config["hidden_size"], config["patch_size"]
    patches = (image_size // patch) ** 2
    embedding = 2 * patches * hidden * config.get("num_channels", 3) * patch * patch
    tokens = patches + 1
    layer = transformer_layer_forward(tokens, hidden, config["intermediate_size"])
    layers = config["num_hidden_layers"] * layer
    return embedding + layers + 2 * hidden * config["num_labels"]


def convnext_forward(config: Mapping[str, Any], image_size: int) -> int:
    """ConvNeXt (Liu et al. 2022, fig. 4; HF ConvNextLayer): a 4x4 stride-4 stem conv; per block a 7x7
    depthwise conv (49 MACs per output element) and an inverted-bottleneck MLP d -> 4d -> d; a 2x2
    stride-2 downsampling conv before stages 2-4; global pooling and the classifier."""
    widths, depths = config["hidden_sizes"], config["depths"]
    stem_patch = config.get("patch_size", 4)
    channels = config.get("num_channels", 3)
    side = image_size // stem_patch
    total = 2 * side * side * widths[0] * channels * stem_patch * stem_patch
    for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        if stage > 0:
            side //= 2
            total += 2 * side * side * width * widths[stage - 1] * 2 * 2
        depthwise = 2 * side * side * width * 7 * 7
        mlp = 2 * 2 * side * side * width * 4 * width
        total += depth * (depthwise + mlp)
    return total + 2 * widths[-1] * config["num_labels"]


def mamba_forward(config: Mapping[str, Any], seq_len: int) -> int:
    """Mamba (Gu & Dao 2023, fig. 3; HF MambaMixer), per token and layer, with E = expand * d:
    in_proj d -> 2E; depthwise causal conv1d, K taps per channel; x_proj E -> (R + 2N) for dt, B, C;
    dt_proj R -> E; out_proj E -> d. The selective scan counts only its one product, the read-out
    y = C . h (2*E*N): the recurrence h = exp(dt*A) h + dt*B*x is elementwise (about 7*E*N more in
    mamba_ssm's own estimate, `9 * B * L * D * N` in its benchmarks), which the counter skips as it
    skips every elementwise op. Then the tied LM head on every position."""
    hidden, state = config["hidden_size"], config["state_size"]
    inner = config["expand"] * hidden
    rank = config["time_step_rank"]
    per_token = (
        2 * hidden * 2 * inner  # in_proj
        + 2 * inner * config["conv_kernel"]  # depthwise conv1d
        + 2 * inner * (rank + 2 * state)  # x_proj
        + 2 * rank * inner  # dt_proj
        + 2 * inner * state  # scan read-out C . h
        + 2 * inner * hidden  # out_proj
    )
    return seq_len * (config["num_hidden_layers"] * per_token + 2 * hidden * config["vocab_size"])


FORWARD_FORMULAS: dict[str, Callable[[Mapping[str, Any], int], int]] = {
    "pythia": pythia_forward,
    "roberta": roberta_forward,
    "mamba": mamba_forward,
    "convnext": convnext_forward,
    "vit": vit_forward,
}
