"""A timm-style model registry: architecture name -> builder(cfg, num_classes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from shiftlab.config.base import ModelSection
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.registry import Registry

ModelBuilder = Callable[[Any, int], nn.Module]

# Filled by the family modules that `shiftlab.models` imports (deeplab, querydiff, segformer).
MODELS: Registry[ModelBuilder] = Registry("model")
register_model = MODELS.register
list_models = MODELS.names


def create_model(cfg: ModelSection, num_classes: int) -> nn.Module:
    """Build the model named by ``cfg.name`` with ``num_classes`` outputs."""
    builder = MODELS.get(getattr(cfg, "name", None))
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return builder(cfg, num_classes)
