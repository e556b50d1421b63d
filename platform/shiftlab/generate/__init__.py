"""Synthetic target-style data: editors, SDGPA patching, and the Ray Data generation pipeline.

`ensure_generated(cfg)` is the entry point other stages call: it returns the complete dataset
directory of ``cfg.generate`` (format ``shiftlab``), generating only what is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GenerateResult", "ensure_generated", "ensure_generated_report"]


def __getattr__(name: str) -> Any:
    # Lazy: `shiftlab.config.generate` imports `shiftlab.generate.presets`, which runs this
    # package's __init__ while the config module is half-initialised; the cache module
    # imports that config, so it may only load on first use.
    if name in __all__:
        from shiftlab.generate import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'shiftlab.generate' has no attribute {name!r}")
