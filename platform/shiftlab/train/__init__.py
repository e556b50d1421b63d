"""Adaptation training: the recipe, its Ray Train launch, and one experiment end to end."""

from shiftlab.train.experiment import run_experiment
from shiftlab.train.trainer import TrainResult, run_training

__all__ = ["TrainResult", "run_experiment", "run_training"]
