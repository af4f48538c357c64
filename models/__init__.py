"""The model registry: architecture, replication recipe, synthetic batch, FLOPs and wrap class per model.

Importing this package loads neither torch nor transformers (pytest collection stays fast); models are
built from explicit configs, never fetched from a hub, when `ModelSpec.build_model` is called.
"""

from __future__ import annotations

from models.names import lookup
from models.registry import MODELS, PAPER_MODELS, TINY_MODELS
from models.spec import FAMILIES, ModelSpec, Recipe

__all__ = ["FAMILIES", "MODELS", "PAPER_MODELS", "TINY_MODELS", "ModelSpec", "Recipe", "get_model"]


def get_model(name: str) -> ModelSpec:
    """The spec for `name`, or an UnknownNameError that suggests the closest names."""
    return lookup(MODELS, name, "model")
