"""One registry shape for models and methods: name -> builder, built-ins imported on first use.

Built-in modules register themselves when imported; importing them lazily keeps
``import shiftlab.models`` cheap, and an optional module that is absent does not break the rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from shiftlab.utils.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: tuple[str, ...]) -> None:
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (the same object twice is fine)."""

        def wrap(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return wrap

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                # Only the optional module itself may be absent, never a dependency inside it
                # (that is a real installation error).
                if exc.name != module:
                    raise

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def get(self, name: object) -> T:
        """The entry named ``name``; an unknown name is a config error listing the known ones."""
        self._load_builtins()
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(
                f"{self.kind}.name: unknown {self.kind} {name!r} (known: {', '.join(self.names())})"
            )
        return self._entries[name]
