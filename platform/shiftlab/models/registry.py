"""A timm-style model registry: architecture name -> builder(cfg, num_classes)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from shiftlab.utils.errors import ConfigError

ModelBuilder = Callable[[Any, int], nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}

# Modules that register architectures when imported. They are imported on first use so that
# `import shiftlab.models` stays cheap and an optional architecture whose module is absent
# (or not written yet) does not break the others.
_BUILTIN_MODULES = ("shiftlab.models.deeplab", "shiftlab.models.querydiff")
_loaded = False


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(cfg, num_classes) -> nn.Module`` under ``name``."""

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only tolerate the optional module itself being absent, never a missing
            # dependency inside it (that is a real installation error).
            if exc.name != module:
                raise


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def create_model(cfg: Any, num_classes: int) -> nn.Module:
    """Build the model named by ``cfg.name`` with ``num_classes`` outputs."""
    _load_builtins()
    name = getattr(cfg, "name", None)
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r} (known: {', '.join(list_models())})")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name](cfg, num_classes)
