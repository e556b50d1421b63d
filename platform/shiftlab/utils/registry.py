"""One registry shape for models and methods: name -> builder (timm's ``register_model``).

Each family's module registers itself with a decorator when imported; the stage's package
(``shiftlab.models``, ``shiftlab.methods``) imports its family modules, so importing any of the
stage's modules fills the registry and the registry never imports its entries back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from shiftlab.utils.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (the same object twice is fine)."""

        def wrap(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: object) -> T:
        """The entry named ``name``; an unknown name is a config error listing the known ones."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(
                f"{self.kind}.name: unknown {self.kind} {name!r} (known: {', '.join(self.names())})"
            )
        return self._entries[name]
