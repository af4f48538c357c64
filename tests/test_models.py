"""The model registry: names, recipes and architectures against the paper, tiny models training on
CPU, synthetic batches, and the FLOPs formulas against torch's FLOP counter."""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from models import FAMILIES, MODELS, PAPER_MODELS, TINY_MODELS, ModelSpec, Recipe, get_model

ROOT = Path(__file__).resolve().parents[1]
PYTHIA_SIZES = ("pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b")
FLOPS_TOLERANCE = 0.05  # the formulas land within 1% today; 5% still catches a missing term

# The replication recipes of the reference notes (the paper's code), written out independently of
# the registry: (global batch, steps, precision, optimizer, lr, betas, eps, weight decay, warmup,
# grad clip, schedule, schedule kwargs).
PYTHIA = (1024, 143_000)
PYTHIA_OPT = ("adamw",)
PYTHIA_REST = ((0.9, 0.95), 1e-8, 0.01, 1430, 1.0, "cosine_with_min_lr", {"min_lr_rate": 0.1})
EXPECTED_RECIPES = {
    "pythia-160m": (*PYTHIA, "fp16", *PYTHIA_OPT, 6e-4, *PYTHIA_REST),
    "pythia-410m": (*PYTHIA, "fp16", *PYTHIA_OPT, 3e-4, *PYTHIA_REST),
    "pythia-1b": (*PYTHIA, "bf16", *PYTHIA_OPT, 3e-4, *PYTHIA_REST),
    "pythia-1.4b": (*PYTHIA, "fp16", *PYTHIA_OPT, 2e-4, *PYTHIA_REST),
    "pythia-2.8b": (*PYTHIA, "fp16", *PYTHIA_OPT, 1.6e-4, *PYTHIA_REST),
    "pythia-6.9b": (*PYTHIA, "fp16", *PYTHIA_OPT, 1.2e-4, *PYTHIA_REST),
    "roberta": (8192, 500_000, "fp16", "adamw", 4e-4, (0.9, 0.98), 1e-6, 0.01, 30_000, 0.0, "linear", {}),
    "mamba": (
        128,
        572_204,
        "bf16",
        "adamw",
        8e-4,
        (0.9, 0.95),
        1e-8,
        0.1,
        57_220,
        1.0,
        "cosine_with_min_lr",
        {"min_lr": 1e-5},
    ),
    "convnext": (4096, 311_940, "fp32", "adamw", 4e-3, (0.9, 0.999), 1e-8, 0.05, 17_330, 0.0, "cosine", {}),
    "vit": (4096, 311_948, "fp32", "adamw", 1e-3, (0.9, 0.999), 1e-8, 0.03, 10_000, 1.0, "linear", {}),
}

# (layers, hidden, heads, vocab or classes, sequence or image size) from the reference notes.
EXPECTED_ARCHITECTURES = {
    "pythia-14m": (6, 128, 4, 50304, 128),
    "pythia-160m": (12, 768, 12, 50304, 2048),
    "pythia-410m": (24, 1024, 16, 50304, 2048),
    "pythia-1b": (16, 2048, 8, 50304, 2048),
    "pythia-1.4b": (24, 2048, 16, 50304, 2048),
    "pythia-2.8b": (32, 2560, 32, 50304, 2048),
    "pythia-6.9b": (32, 4096, 32, 50432, 2048),
    "roberta": (24, 1024, 16, 50265, 512),
    "mamba": (64, 2560, None, 50280, 4096),
    "vit": (24, 1024, 16, 21841, 224),
}

# Public parameter counts of the HF checkpoints (model cards / `num_parameters()` of the real models).
PUBLIC_PARAMETER_COUNTS = {
    "pythia-14m": 14_067_712,
    "pythia-160m": 162_322_944,
    "pythia-1b": 1_011_781_632,
    "pythia-6.9b": 6_857_302_016,
    "mamba": 2_768_345_600,
}


def test_registry_holds_every_paper_model_pythia_size_and_a_tiny_model_per_family():
    with open(ROOT / "reports" / "data" / "paper_training_days.csv", newline="") as f:
        paper_names = {row["model"] for row in csv.DictReader(f)}
    assert paper_names <= set(PAPER_MODELS)
    assert set(PYTHIA_SIZES) <= set(PAPER_MODELS)
    assert "pythia-14m" in TINY_MODELS
    assert {MODELS[name].family for name in TINY_MODELS} == set(FAMILIES)
    assert set(PAPER_MODELS) | set(TINY_MODELS) == set(MODELS)
    assert not set(PAPER_MODELS) & set(TINY_MODELS)
    assert list(MODELS) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPES))
def test_recipe_matches_the_paper(name):
    (batch, steps, precision, optimizer, lr, betas, eps, decay, warmup, clip, schedule, schedule_kwargs) = (
        EXPECTED_RECIPES[name]
    )
    recipe = get_model(name).recipe
    assert (recipe.global_batch, recipe.training_steps, recipe.precision) == (batch, steps, precision)
    assert (recipe.optimizer, recipe.lr, recipe.betas, recipe.eps) == (optimizer, lr, betas, eps)
    assert (recipe.weight_decay, recipe.warmup_steps, recipe.max_grad_norm) == (decay, warmup, clip)
    assert recipe.lr_scheduler_type == schedule
    assert recipe.lr_scheduler_kwargs_dict == schedule_kwargs


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_recipe_is_cpu_sized_with_the_big_siblings_optimizer(name):
    spec = get_model(name)
    sibling = next(MODELS[n] for n in PAPER_MODELS if MODELS[n].family == spec.family)
    assert (spec.recipe.global_batch, spec.recipe.precision) == (8, "fp32")
    assert spec.recipe.training_steps <= 10_000
    assert spec.recipe.optimizer == sibling.recipe.optimizer
    assert spec.recipe.lr_scheduler_type == sibling.recipe.lr_scheduler_type


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCHITECTURES))
def test_architecture_matches_the_paper(name):
    layers, hidden, heads, vocab_or_classes, size = EXPECTED_ARCHITECTURES[name]
    spec = get_model(name)
    config = spec.build_config()
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    if heads is not None:
        assert config.num_attention_heads == heads
    classes = getattr(config, "num_labels", None) if spec.sample_unit == "images" else config.vocab_size
    assert classes == vocab_or_classes
    assert (spec.seq_len or spec.image_size) == size


def test_pythia_shape_is_the_gpt_neox_one():
    for name in ("pythia-14m", *PYTHIA_SIZES):
        config = get_model(name).build_config()
        assert config.rope_parameters["partial_rotary_factor"] == 0.25
        assert config.use_parallel_residual and not config.tie_word_embeddings
        assert config.intermediate_size == 4 * config.hidden_size
        assert config.max_position_embeddings == 2048


def test_other_paper_architectures():
    roberta = get_model("roberta").build_config()
    assert (roberta.intermediate_size, roberta.max_position_embeddings) == (4096, 514)
    assert roberta.type_vocab_size == 1
    mamba = get_model("mamba").build_config()
    assert (mamba.state_size, mamba.expand, mamba.conv_kernel, mamba.tie_word_embeddings) == (16, 2, 4, True)
    convnext = get_model("convnext").build_config()
    assert list(convnext.depths) == [3, 3, 27, 3]
    assert list(convnext.hidden_sizes) == [256, 512, 1024, 2048]
    assert (convnext.num_labels, convnext.image_size) == (21841, 224)
    vit = get_model("vit").build_config()
    assert (vit.intermediate_size, vit.patch_size, vit.image_size) == (4096, 16, 224)


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMETER_COUNTS))
def test_parameter_count_matches_the_public_model(name):
    assert get_model(name).num_parameters() == PUBLIC_PARAMETER_COUNTS[name]


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KeyError, match=r"Unknown model 'pythia-1g'\. Did you mean: pythia-1b.*Available: "):
        get_model("pythia-1g")


def test_importing_models_loads_neither_torch_nor_transformers():
    code = "import models, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_specs_are_frozen_hashable_data():
    spec = get_model("pythia-160m")
    assert hash(spec) == hash(dataclasses.replace(spec))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec.recipe, Recipe) and isinstance(spec, ModelSpec)
    assert spec.config_kwargs["vocab_size"] == 50304
    assert spec.recipe.optimizer_target == "torch.optim:AdamW"
    assert get_model("mamba").recipe.optimizer_target == "torch.optim:AdamW"


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(get_model("vit").recipe, precision="fp8")
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(get_model("vit"), image_size=None)
    with pytest.raises(ValueError, match="attn_implementation"):
        get_model("tiny-mamba").build_config(attn_implementation="sdpa")


def test_sample_units():
    assert (get_model("pythia-1b").sample_unit, get_model("pythia-1b").tokens_per_sample) == ("tokens", 2048)
    assert (get_model("mamba").tokens_per_sample, get_model("roberta").tokens_per_sample) == (4096, 512)
    assert (get_model("vit").sample_unit, get_model("vit").tokens_per_sample) == ("images", 1)


# --- tiny models on CPU ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_trains_one_step_on_cpu(name):
    import torch

    spec = get_model(name)
    model = spec.build_model()
    assert next(model.parameters()).dtype == torch.float32
    model.train()
    batch = spec.make_batch(2, seed=1)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_declares_what_transformers_provides(name):
    import torch

    spec = get_model(name)
    with torch.device("meta"):
        model = spec.build_model()
    assert any(type(module).__name__ == spec.block_class for module in model.modules())
    assert model.supports_gradient_checkpointing == spec.supports_gradient_checkpointing
    assert model._supports_sdpa == ("sdpa" in spec.attention)
    assert model._supports_flash_attn == ("flash_attention_2" in spec.attention)
    assert spec.tiny and spec.supports_compile == (spec.family != "mamba")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batches_are_random_seeded_and_never_zeros(name):
    import torch

    spec = get_model(name)
    small = dataclasses.replace(spec, seq_len=16) if spec.seq_len else spec
    batch = small.make_batch(2, seed=3)
    again = small.make_batch(2, seed=3)
    other = small.make_batch(2, seed=4)
    for key, value in batch.items():
        assert value.shape[0] == 2
        assert torch.equal(value, again[key])
        assert value.abs().sum() > 0, f"{key} is all zeros"
    assert any(not torch.equal(value, other[key]) for key, value in batch.items())
    if spec.seq_len:
        assert batch["input_ids"].shape == (2, 16)
        assert int(batch["input_ids"].max()) < spec.config_kwargs["vocab_size"]
    else:
        assert batch["pixel_values"].shape == (2, 3, spec.image_size, spec.image_size)
        assert int(batch["labels"].max()) < spec.config_kwargs["num_labels"]


def test_causal_lm_labels_are_the_inputs():
    import torch

    batch = get_model("pythia-14m").make_batch(2)
    assert set(batch) == {"input_ids", "labels"} and torch.equal(batch["input_ids"], batch["labels"])


def test_roberta_masking_selects_15_percent_and_splits_80_10_10():
    spec = get_model("tiny-roberta")
    batch = spec.make_batch(256, seed=0)  # 32,768 positions
    inputs, labels = batch["input_ids"], batch["labels"]
    mask_id = spec.config_kwargs["vocab_size"] - 1
    selected = labels != -100
    assert float(selected.float().mean()) == pytest.approx(0.15, abs=0.01)
    targets = labels[selected]
    assert bool(((targets >= 4) & (targets < mask_id)).all()), "targets must be regular tokens"
    assert not bool((inputs[~selected] == mask_id).any()), "a <mask> outside the selected positions"
    assert bool(batch["attention_mask"].eq(1).all())
    n = int(selected.sum())
    masked = int((inputs[selected] == mask_id).sum())
    unchanged = int((inputs[selected] == labels[selected]).sum())
    replaced = n - masked - unchanged
    assert masked / n == pytest.approx(0.8, abs=0.02)
    assert replaced / n == pytest.approx(0.1, abs=0.02)
    assert unchanged / n == pytest.approx(0.1, abs=0.02)


def test_roberta_loss_covers_only_the_selected_positions():
    import torch

    spec = get_model("tiny-roberta")
    model = spec.build_model().eval()
    batch = spec.make_batch(2)
    selected = batch["labels"] != -100
    with torch.no_grad():
        output = model(**batch)
    logits = output.logits[selected]
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"][selected])
    assert torch.allclose(output.loss, expected)


# --- FLOPs formulas against torch's counter --------------------------------------------------------


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """torch's own conv backward formula ignores `groups` in the weight gradient, counting a depthwise
    conv's backward C times over (pytorch/pytorch#183405). Each gradient of a conv costs what its
    forward costs, which the forward formula (weights are (C_out, C_in / groups, k...)) gets right."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _counted_training_flops(model, batch) -> int:
    """One forward + backward under FlopCounterMode, with SDPA forced onto its math path: the CPU's
    fused SDPA kernel is not in the counter's table (it would count 0), while the math path counts the
    full attention square as the counter's CUDA SDPA formulas do."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        model(**batch).loss.backward()
    return counter.get_total_flops()


def test_corrected_conv_backward_agrees_with_torch_for_ungrouped_convs():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(8, 16, kernel_size=3, padding=1)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    with FlopCounterMode(display=False) as builtin:
        conv(x).sum().backward()
    custom = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=custom) as corrected:
        conv(x).sum().backward()
    assert corrected.get_total_flops() == builtin.get_total_flops() > 0


@pytest.mark.parametrize("name", TINY_MODELS)
def test_flops_formula_agrees_with_the_counter_on_tiny_models(name):
    spec = get_model(name)
    attention = "sdpa" if spec.attention else None
    model = spec.build_model(attn_implementation=attention).train()
    batch_size = 2
    counted = _counted_training_flops(model, spec.make_batch(batch_size))
    assert spec.flops_per_sample() * batch_size == pytest.approx(counted, rel=FLOPS_TOLERANCE)


@pytest.mark.parametrize("name", ["pythia-160m", "roberta"])
def test_flops_formula_agrees_with_the_counter_at_paper_scale(name):
    """The paper's own configs at full length, on fake tensors: shapes only, no memory, no arithmetic.
    (The meta device does not do here: transformers' mask code reads values, which fake tensors let
    it skip as it does while tracing.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = get_model(name)
    with FakeTensorMode():
        model = spec.build_model(attn_implementation="sdpa").train()
        counted = _counted_training_flops(model, spec.make_batch(1))
    assert spec.flops_per_sample() == pytest.approx(counted, rel=FLOPS_TOLERANCE)


def test_flops_at_paper_scale_are_the_known_sizes():
    # 6 N per token for dense transformers (Kaplan et al. 2020) plus attention; a ViT-L/16 forward is
    # 61.6 GMACs and a ConvNeXt-XL forward 60.9 GMACs at 224 px (their papers' tables).
    pythia = get_model("pythia-1b")
    six_n = 6 * pythia.num_parameters() * pythia.seq_len
    assert six_n < pythia.flops_per_sample() < 1.1 * six_n
    assert get_model("vit").flops_per_sample() / 3 / 2 == pytest.approx(61.6e9, rel=0.02)
    assert get_model("convnext").flops_per_sample() / 3 / 2 == pytest.approx(60.9e9, rel=0.02)
    assert math.isclose(get_model("mamba").flops_per_sample(), 6 * 2.768e9 * 4096, rel_tol=0.02)


@pytest.mark.parametrize("installed", [True, False])
def test_the_mamba_kernel_path_is_read_through_transformers_wrapper(monkeypatch, installed):
    """The record says which scan ran: transformers wraps mamba-ssm's function (or its reference) in a
    function of its own module, so the module-level name alone cannot tell."""
    import sys
    import types

    from transformers.integrations import use_kernel_func_from_hub_with_fallback

    from harness.compat import mamba_kernel_path

    package = types.ModuleType("mamba_ssm")

    def kernel(xz, conv1d_weight):
        return "kernel"

    kernel.__module__ = "mamba_ssm.ops.selective_scan_interface"
    package.mamba_inner_fn = kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mamba_ssm", package if installed else None)

    @use_kernel_func_from_hub_with_fallback("mamba_inner_fn", "mamba_ssm")
    def mamba_inner_fn(xz, conv1d_weight):
        return "reference"

    modeling = types.ModuleType("transformers.models.mamba.modeling_mamba")
    modeling.mamba_inner_fn = mamba_inner_fn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, modeling.__name__, modeling)
    assert mamba_inner_fn(1, 2) == ("kernel" if installed else "reference")
    assert mamba_kernel_path() is installed
