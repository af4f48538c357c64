"""The models: the paper's ten, the public Pythia-14m, and one CPU-sized member of every other family.

Architectures are the public HF configs written out in full, so that nothing is fetched from a hub.
Recipes are those of the original code ("$100K or 100 Days", Khandelwal et al. 2024, and its repo):
see the replication tables in the project's reference notes.
"""

from __future__ import annotations

from dataclasses import replace

from models.spec import ModelSpec, Recipe

TINY_STEPS = 1000
TINY_GLOBAL_BATCH = 8

# --- Pythia (Biderman et al. 2023): GPT-NeoX, 143,000 steps of 1024 x 2048 tokens -------------------
PYTHIA_STEPS = 143_000


def pythia_recipe(*, lr: float, precision: str) -> Recipe:
    return Recipe(
        global_batch=1024,
        training_steps=PYTHIA_STEPS,
        precision=precision,
        # GPT-NeoX's "Adam" is FusedAdam in AdamW mode, with biases and norms exempt from decay.
        optimizer="adamw",
        no_decay="bias-norm",
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.01,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs=(("min_lr_rate", 0.1),),
        warmup_steps=round(0.01 * PYTHIA_STEPS),  # 1% of the steps: 1430
        max_grad_norm=1.0,
    )


def pythia(
    name: str, *, layers: int, hidden: int, heads: int, recipe: Recipe, vocab: int = 50304, tiny: bool = False
) -> ModelSpec:
    seq_len = 128 if tiny else 2048
    config = (
        ("vocab_size", vocab),
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("intermediate_size", 4 * hidden),
        ("hidden_act", "gelu"),
        ("rotary_pct", 0.25),
        ("rotary_emb_base", 10000),
        ("max_position_embeddings", 2048),
        ("use_parallel_residual", True),
        ("tie_word_embeddings", False),
        ("layer_norm_eps", 1e-5),
        ("initializer_range", 0.02),
        ("attention_dropout", 0.0),
        ("hidden_dropout", 0.0),
        ("bos_token_id", 0),
        ("eos_token_id", 0),
        # A KV cache is for generation: in training it only holds every layer's keys and values.
        ("use_cache", False),
    )
    return ModelSpec(
        name=name,
        family="pythia",
        hf_class="transformers:GPTNeoXForCausalLM",
        config_class="transformers:GPTNeoXConfig",
        config=config,
        recipe=recipe,
        block_class="GPTNeoXLayer",
        seq_len=seq_len,
        attention=("eager", "sdpa", "flash_attention_2"),
        tiny=tiny,
    )


# --- RoBERTa-large (Liu et al. 2019, table 9): 500k steps of 8192 x 512 tokens ---------------------
ROBERTA_RECIPE = Recipe(
    global_batch=8192,
    training_steps=500_000,
    precision="fp16",
    # eps 1e-6 as in the RoBERTa paper's table 9; the paper's own code left the Trainer's 1e-8.
    # fairseq's Adam decays decoupled (AdamW) and exempts no parameter.
    optimizer="adamw",
    no_decay="none",
    lr=4e-4,
    betas=(0.9, 0.98),
    eps=1e-6,
    weight_decay=0.01,
    lr_scheduler_type="linear",
    warmup_steps=30_000,
    max_grad_norm=0.0,
)


def roberta(
    name: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    vocab: int,
    seq_len: int,
    recipe: Recipe,
    tiny: bool = False,
) -> ModelSpec:
    config = (
        ("vocab_size", vocab),
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("intermediate_size", 4 * hidden),
        ("hidden_act", "gelu"),
        ("hidden_dropout_prob", 0.1),
        ("attention_probs_dropout_prob", 0.1),
        # Positions start after the padding index (1), hence seq_len + 2: 514 for 512 tokens.
        ("max_position_embeddings", seq_len + 2),
        ("type_vocab_size", 1),
        ("layer_norm_eps", 1e-5),
        ("initializer_range", 0.02),
        ("pad_token_id", 1),
        ("bos_token_id", 0),
        ("eos_token_id", 2),
        ("tie_word_embeddings", True),
        ("use_cache", False),
    )
    return ModelSpec(
        name=name,
        family="roberta",
        hf_class="transformers:RobertaForMaskedLM",
        config_class="transformers:RobertaConfig",
        config=config,
        recipe=recipe,
        block_class="RobertaLayer",
        seq_len=seq_len,
        attention=("eager", "sdpa", "flash_attention_2"),
        tiny=tiny,
    )


# --- Mamba-2.8B (Gu & Dao 2023): 572,204 steps of 128 x 4096 tokens (300B tokens) ------------------
MAMBA_STEPS = 572_204
MAMBA_RECIPE = Recipe(
    global_batch=128,
    training_steps=MAMBA_STEPS,
    precision="bf16",
    optimizer="adamw",
    no_decay="bias-norm-ssm",
    lr=8e-4,
    betas=(0.9, 0.95),
    eps=1e-8,
    weight_decay=0.1,
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs=(("min_lr", 1e-5),),
    warmup_steps=round(0.1 * MAMBA_STEPS),  # 10% of the steps: 57220
    max_grad_norm=1.0,
)


def mamba(
    name: str, *, layers: int, hidden: int, vocab: int, seq_len: int, recipe: Recipe, tiny: bool = False
) -> ModelSpec:
    config = (
        ("vocab_size", vocab),
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("state_size", 16),
        ("expand", 2),
        ("conv_kernel", 4),
        ("time_step_rank", -(-hidden // 16)),  # "auto" in the public config: ceil(d / 16), 160 for 2.8B
        ("use_bias", False),
        ("use_conv_bias", True),
        ("hidden_act", "silu"),
        ("layer_norm_epsilon", 1e-5),
        ("residual_in_fp32", True),
        ("tie_word_embeddings", True),
        ("pad_token_id", 0),
        ("bos_token_id", 0),
        ("eos_token_id", 0),
        ("use_cache", False),
    )
    return ModelSpec(
        name=name,
        family="mamba",
        hf_class="transformers:MambaForCausalLM",
        config_class="transformers:MambaConfig",
        config=config,
        recipe=recipe,
        block_class="MambaBlock",
        seq_len=seq_len,
        # As in the paper: torch.compile did not handle Mamba then; its speed comes from the kernels.
        supports_compile=False,
        kernels=("mamba_ssm", "causal_conv1d"),
        tiny=tiny,
    )


# --- ConvNeXt-XL on ImageNet-22k (Liu et al. 2022): 90 epochs of 4096 images ------------------------
CONVNEXT_RECIPE = Recipe(
    global_batch=4096,
    training_steps=311_940,
    precision="fp32",
    optimizer="adamw",
    no_decay="bias-1d",
    lr=4e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.05,
    lr_scheduler_type="cosine",
    warmup_steps=17_330,  # 5 epochs of ImageNet-22k
    max_grad_norm=0.0,
)


def convnext(
    name: str,
    *,
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    labels: int,
    image_size: int,
    recipe: Recipe,
    tiny: bool = False,
) -> ModelSpec:
    config = (
        ("num_channels", 3),
        ("patch_size", 4),
        ("num_stages", len(depths)),
        ("depths", depths),
        ("hidden_sizes", widths),
        ("hidden_act", "gelu"),
        ("layer_norm_eps", 1e-12),
        ("layer_scale_init_value", 1e-6),
        ("drop_path_rate", 0.0),
        ("initializer_range", 0.02),
        ("image_size", image_size),
        ("num_labels", labels),
    )
    return ModelSpec(
        name=name,
        family="convnext",
        hf_class="transformers:ConvNextForImageClassification",
        config_class="transformers:ConvNextConfig",
        config=config,
        recipe=recipe,
        # The block, not the stage: stage 3 holds 27 of 36 blocks and most of the weights, too
        # coarse a unit for FSDP. HF's ConvNeXt has no gradient-checkpointing support of its own.
        block_class="ConvNextLayer",
        image_size=image_size,
        supports_gradient_checkpointing=False,
        tiny=tiny,
    )


# --- ViT-L/16 on ImageNet-21k (Dosovitskiy et al. 2021): 90 epochs of 4096 images --------------------
VIT_RECIPE = Recipe(
    global_batch=4096,
    training_steps=311_948,
    precision="fp32",
    # flax's Adam of the original code decayed decoupled, scaled by the learning rate: AdamW.
    optimizer="adamw",
    no_decay="none",
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.03,
    lr_scheduler_type="linear",
    warmup_steps=10_000,
    max_grad_norm=1.0,
)


def vit(
    name: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    patch: int,
    labels: int,
    image_size: int,
    recipe: Recipe,
    tiny: bool = False,
) -> ModelSpec:
    config = (
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("intermediate_size", 4 * hidden),
        ("hidden_act", "gelu"),
        ("hidden_dropout_prob", 0.0),
        ("attention_probs_dropout_prob", 0.0),
        ("layer_norm_eps", 1e-12),
        ("initializer_range", 0.02),
        ("image_size", image_size),
        ("patch_size", patch),
        ("num_channels", 3),
        ("qkv_bias", True),
        ("num_labels", labels),
    )
    return ModelSpec(
        name=name,
        family="vit",
        hf_class="transformers:ViTForImageClassification",
        config_class="transformers:ViTConfig",
        config=config,
        recipe=recipe,
        block_class="ViTLayer",
        image_size=image_size,
        attention=("eager", "sdpa", "flash_attention_2"),
        tiny=tiny,
    )


def tiny_recipe(recipe: Recipe) -> Recipe:
    """The big sibling's optimizer and schedule on CPU scale: batch 8, fp32 (CPUs have no fast fp16),
    1000 steps, and the same warmup fraction of the steps."""
    warmup = round(recipe.warmup_steps * TINY_STEPS / recipe.training_steps)
    return replace(
        recipe,
        global_batch=TINY_GLOBAL_BATCH,
        training_steps=TINY_STEPS,
        precision="fp32",
        warmup_steps=warmup,
    )


def _build() -> dict[str, ModelSpec]:
    specs = [
        pythia(
            "pythia-160m", layers=12, hidden=768, heads=12, recipe=pythia_recipe(lr=6e-4, precision="fp16")
        ),
        pythia(
            "pythia-410m", layers=24, hidden=1024, heads=16, recipe=pythia_recipe(lr=3e-4, precision="fp16")
        ),
        pythia("pythia-1b", layers=16, hidden=2048, heads=8, recipe=pythia_recipe(lr=3e-4, precision="bf16")),
        pythia(
            "pythia-1.4b", layers=24, hidden=2048, heads=16, recipe=pythia_recipe(lr=2e-4, precision="fp16")
        ),
        pythia(
            "pythia-2.8b", layers=32, hidden=2560, heads=32, recipe=pythia_recipe(lr=1.6e-4, precision="fp16")
        ),
        pythia(
            "pythia-6.9b",
            layers=32,
            hidden=4096,
            heads=32,
            vocab=50432,
            recipe=pythia_recipe(lr=1.2e-4, precision="fp16"),
        ),
        roberta("roberta", layers=24, hidden=1024, heads=16, vocab=50265, seq_len=512, recipe=ROBERTA_RECIPE),
        mamba("mamba", layers=64, hidden=2560, vocab=50280, seq_len=4096, recipe=MAMBA_RECIPE),
        convnext(
            "convnext",
            depths=(3, 3, 27, 3),
            widths=(256, 512, 1024, 2048),
            labels=21841,
            image_size=224,
            recipe=CONVNEXT_RECIPE,
        ),
        vit(
            "vit", layers=24, hidden=1024, heads=16, patch=16, labels=21841, image_size=224, recipe=VIT_RECIPE
        ),
        # The public Pythia-14m: real architecture and vocabulary, the Pythia optimizer, CPU-scale
        # batch; lr 1e-3 is the rate of the smallest size in the Pythia paper (70m).
        pythia(
            "pythia-14m",
            layers=6,
            hidden=128,
            heads=4,
            tiny=True,
            recipe=tiny_recipe(pythia_recipe(lr=1e-3, precision="fp32")),
        ),
        roberta(
            "tiny-roberta",
            layers=2,
            hidden=64,
            heads=4,
            vocab=1024,
            seq_len=128,
            recipe=tiny_recipe(ROBERTA_RECIPE),
            tiny=True,
        ),
        mamba(
            "tiny-mamba",
            layers=2,
            hidden=64,
            vocab=1024,
            seq_len=128,
            recipe=tiny_recipe(MAMBA_RECIPE),
            tiny=True,
        ),
        convnext(
            "tiny-convnext",
            depths=(1, 1, 2, 1),
            widths=(16, 32, 64, 128),
            labels=10,
            image_size=32,
            recipe=tiny_recipe(CONVNEXT_RECIPE),
            tiny=True,
        ),
        vit(
            "tiny-vit",
            layers=2,
            hidden=64,
            heads=4,
            patch=4,
            labels=10,
            image_size=32,
            recipe=tiny_recipe(VIT_RECIPE),
            tiny=True,
        ),
    ]
    return {spec.name: spec for spec in sorted(specs, key=lambda spec: spec.name)}


MODELS: dict[str, ModelSpec] = _build()
PAPER_MODELS: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if not spec.tiny)
TINY_MODELS: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if spec.tiny)
