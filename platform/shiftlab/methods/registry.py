"""Method registry: config ``name`` -> Method class."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from shiftlab.utils.errors import ConfigError

_REGISTRY: dict[str, type] = {}
# Imported on first use; an optional module that does not exist (yet) is skipped.
_BUILTIN_MODULES = (
    "shiftlab.methods.simple",
    "shiftlab.methods.sdgpa",
    "shiftlab.methods.feature_align",
    "shiftlab.methods.classmix",
    "shiftlab.methods.querydiff",
)
_loaded = False


def register_method(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

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
            if exc.name != module:
                raise


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_method(
    cfg: Any,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    seed: int = 0,
) -> Any:
    """Build the method named by ``cfg.name``.

    ``class_names`` (the label space's, index = train id) resolves class weights given by name;
    ``seed`` seeds the method's own random choices (ClassMix classes, MMD pixel samples).
    """
    _load_builtins()
    name = getattr(cfg, "name", None)
    if name not in _REGISTRY:
        raise ConfigError(f"method.name: unknown method {name!r} (known: {', '.join(list_methods())})")
    return _REGISTRY[name](
        cfg, num_classes, class_names=class_names, ignore_index=ignore_index, seed=seed
    )
