"""shiftlab: domain-adaptive semantic segmentation with synthetic data, on Ray.

The Python entry points a notebook needs are here; everything else is in the stage folders
(``config``, ``data``, ``generate``, ``train``, ``evaluate``, ``sweep``, ...). They are loaded
on first use, so ``import shiftlab`` stays cheap in every Ray worker.
"""

from __future__ import annotations

from typing import Any

from shiftlab.utils.version import __version__

__all__ = ["__version__", "load_experiment", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from shiftlab.evaluate.predictor import load_model

        return load_model
    if name == "load_experiment":
        from shiftlab.config import load_experiment

        return load_experiment
    raise AttributeError(f"module 'shiftlab' has no attribute {name!r}")
