"""Method registry: config ``name`` -> Method class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shiftlab.config.base import MethodSection
from shiftlab.utils.registry import Registry

# Filled by the method modules that `shiftlab.methods` imports.
METHODS: Registry[type] = Registry("method")
register_method = METHODS.register
list_methods = METHODS.names


def build_method(
    cfg: MethodSection,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    seed: int = 0,
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Any:
    """Build the method named by ``cfg.name``.

    ``class_names`` (the label space's, index = train id) resolves class weights given by name;
    ``seed`` seeds the method's own random choices (ClassMix classes, MMD pixel samples);
    ``input_stats``: the (mean, std) of the input normalisation (default ImageNet's).
    """
    extra = {"input_stats": input_stats} if input_stats is not None else {}
    return METHODS.get(getattr(cfg, "name", None))(
        cfg, num_classes, class_names=class_names, ignore_index=ignore_index, seed=seed, **extra
    )
