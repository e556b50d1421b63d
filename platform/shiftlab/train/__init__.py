"""Adaptation training: the recipe, its Ray Train launch, and one experiment end to end.

The entry points load on first use: every Ray Train worker imports ``shiftlab.train.worker``
through this package, and must not pay for what only the driver runs (generation, MLflow
model logging, evaluation of the selected model), about 1 s per worker process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "run_experiment", "run_training"]


def __getattr__(name: str) -> Any:
    if name == "run_experiment":
        from shiftlab.train.experiment import run_experiment

        return run_experiment
    if name in ("run_training", "TrainResult"):
        from shiftlab.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'shiftlab.train' has no attribute {name!r}")
