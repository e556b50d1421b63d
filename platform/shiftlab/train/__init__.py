"""Adaptation training on Ray Train (DDP workers, checkpoints, MLflow metrics)."""

from shiftlab.train.trainer import TrainResult, ensure_ray, run_training

__all__ = ["TrainResult", "ensure_ray", "run_training"]
