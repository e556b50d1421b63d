"""Where a recipe runs: its rank, device and the way it reports epochs and checkpoints.

The recipe (`recipe.py`) is plain PyTorch; a *session* is everything it needs from the
outside. `RaySession` (``worker.py``) is Ray Train's; `LocalSession` runs the same recipe in
this process, one rank, checkpoints kept in a folder: unit tests and the benchmark baseline
use it, so "plain PyTorch" and "Ray Train" execute exactly the same training code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from shiftlab.models.checkpoint import load_training_state


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def restored_state(self) -> dict[str, Any] | None:
        """The training state to continue from (the latest checkpoint), if any."""
        ...

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        """The model on this rank's device, wrapped for data parallelism where there is any."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """One epoch's metrics (every rank) and its checkpoint folder (rank 0, or None)."""
        ...

    def node_id(self) -> str: ...


class LocalSession:
    """One process, one rank; the latest checkpoint is copied to ``checkpoint_dir``."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = torch.device(device)
        self.reports: list[dict[str, Any]] = []

    def restored_state(self) -> dict[str, Any] | None:
        if not (self.checkpoint_dir / "state.pt").is_file():
            return None
        return load_training_state(self.checkpoint_dir)

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            staging = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".new")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint, staging)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            staging.rename(self.checkpoint_dir)

    def node_id(self) -> str:
        return "local"
