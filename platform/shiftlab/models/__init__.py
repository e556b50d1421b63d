"""Segmentation models behind one registry: ``create_model(cfg, num_classes)``.

Every model returns ``{"logits": (B,K,H,W) at the input size, "features": [stages shallow ->
deep], ...}`` and has ``param_groups() -> {"encoder", "decoder", "head"}``. Each family file
registers its builder; importing this package registers them all.
"""

from __future__ import annotations

from shiftlab.models import deeplab, querydiff, segformer
from shiftlab.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "deeplab", "list_models", "querydiff", "register_model", "segformer"]
