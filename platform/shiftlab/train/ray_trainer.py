"""Ray Train's ``TorchTrainer`` without the Ray Data parts a shiftlab run never uses.

Train V2 (Ray 2.60) gives every run a ``DatasetsCallback`` even when no Ray Dataset is
passed: it starts one more actor process (a ``DatasetManager``, ~1.5 CPU-s) and ships Ray
Data's context to each worker, which then imports ``ray.data`` (~1 CPU-s). shiftlab's workers
read their own files (``train/data.py``), so a run without datasets goes without both
(bench/RESULTS.md: the 2-worker training tests ~1 s faster each on 2 cores).

Imported only where a trainer is built: importing it imports torch and Ray Train.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback


class ShiftlabTorchTrainer(TorchTrainer):
    """A ``TorchTrainer``; with no ``datasets``, Ray Data's callback is left out."""

    def _create_default_callbacks(self) -> list[Any]:
        # Train V2's trainer (what ray.train.torch gives); the type stubs still show V1's.
        callbacks = super()._create_default_callbacks()  # type: ignore[misc]
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
