"""Experiment configs: YAML -> validated, typed objects."""

from shiftlab.config.loader import flatten, load_experiment, resolved_yaml, save_resolved

__all__ = ["flatten", "load_experiment", "resolved_yaml", "save_resolved"]
