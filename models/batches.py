"""Synthetic training batches: random, seeded, never zeros, with labels the HF model learns from.

Every batch is drawn on the CPU from a `torch.Generator` seeded with `seed` and then moved, so that the
same seed gives the same batch on any device (CUDA generators draw different streams).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from models.spec import ModelSpec

# RoBERTa's vocabulary starts with <s>=0, <pad>=1, </s>=2, <unk>=3 and ends with <mask>
# (50264 of 50265); the tiny RoBERTa keeps that layout in a smaller vocabulary.
ROBERTA_FIRST_REGULAR_TOKEN = 4
MLM_SELECT_RATE = 0.15  # BERT/RoBERTa: 15% of positions are prediction targets,
MLM_MASK_SHARE = 0.8  # of which 80% become <mask>,
MLM_RANDOM_SHARE = 0.1  # 10% a random token, and the remaining 10% stay as they are.
IGNORE_INDEX = -100  # what HF losses skip


def make_batch(
    spec: ModelSpec, batch_size: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    import torch

    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    config = spec.config_kwargs
    if spec.family in ("pythia", "mamba"):
        batch = causal_lm_batch(generator, batch_size, spec.sample_size, config["vocab_size"])
    elif spec.family == "roberta":
        batch = masked_lm_batch(generator, batch_size, spec.sample_size, config["vocab_size"])
    elif spec.family in ("convnext", "vit"):
        channels = config.get("num_channels", 3)
        batch = image_batch(generator, batch_size, spec.sample_size, channels, config["num_labels"])
    else:
        raise ValueError(f"no batch builder for family {spec.family!r}")
    return {key: value.to(device) for key, value in batch.items()}


def causal_lm_batch(
    generator: torch.Generator, batch_size: int, seq_len: int, vocab_size: int
) -> dict[str, torch.Tensor]:
    """labels = input_ids: HF causal LMs shift the labels themselves (seq_len - 1 predictions)."""
    import torch

    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def masked_lm_batch(
    generator: torch.Generator, batch_size: int, seq_len: int, vocab_size: int
) -> dict[str, torch.Tensor]:
    """RoBERTa's masked-LM objective, drawn as HF's DataCollatorForLanguageModeling draws it.

    Tokens come from the regular range only: a <pad> inside the sequence would shift RoBERTa's
    position ids (they count non-pad tokens), and real text has no <mask> in it.
    """
    import torch

    mask_id = vocab_size - 1
    shape = (batch_size, seq_len)
    tokens = torch.randint(ROBERTA_FIRST_REGULAR_TOKEN, mask_id, shape, generator=generator)
    selected = torch.rand(shape, generator=generator) < MLM_SELECT_RATE
    action = torch.rand(shape, generator=generator)
    to_mask = selected & (action < MLM_MASK_SHARE)
    to_random = selected & (action >= MLM_MASK_SHARE) & (action < MLM_MASK_SHARE + MLM_RANDOM_SHARE)
    random_tokens = torch.randint(ROBERTA_FIRST_REGULAR_TOKEN, mask_id, shape, generator=generator)

    input_ids = torch.where(to_mask, mask_id, tokens)
    input_ids = torch.where(to_random, random_tokens, input_ids)
    # The loss covers the selected positions only, whatever became of their input token.
    labels = torch.where(selected, tokens, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def image_batch(
    generator: torch.Generator, batch_size: int, image_size: int, channels: int, num_labels: int
) -> dict[str, torch.Tensor]:
    """Standard-normal pixels, like a normalised image, and one random class per image."""
    import torch

    pixel_values = torch.randn((batch_size, channels, image_size, image_size), generator=generator)
    labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return {"pixel_values": pixel_values, "labels": labels}
