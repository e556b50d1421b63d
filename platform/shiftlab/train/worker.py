"""The Ray Train side of training: the per-worker function and its session.

Ray stays at this edge: `RaySession` turns Ray Train's context (rank, device, DDP wrapping,
``get_checkpoint``, ``report``) into the `Session` the plain-PyTorch `Recipe` asks for.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from shiftlab.config.loader import validate_dict
from shiftlab.models.checkpoint import load_training_state
from shiftlab.train.faults import hooks_from_config
from shiftlab.train.recipe import Recipe
from shiftlab.utils.log_file import LOG_FILE, log_file, worker_console
from shiftlab.utils.ray_runtime import quiet_ray_console
from shiftlab.utils.run_folder import RunFolder


class RaySession:
    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank: int = ctx.get_world_rank()
        self.world_size: int = ctx.get_world_size()
        self.device: torch.device = ray.train.torch.get_device()

    def restored_state(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_training_state(directory)

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters}
        )

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if checkpoint is None:
            ray.train.report(metrics)
        else:
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint))
            )

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """What ``TorchTrainer`` runs on every rank: build the recipe, run it; rank 0 returns the summary."""
    if config.get("cwd") and Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])  # relative dataset paths mean the driver's directory
    worker_console(int(config.get("log_level", logging.INFO)))
    quiet_ray_console()  # Ray Train's per-report INFO lines stay in the worker's log file
    cfg = validate_dict(config["cfg"], "training config")
    session = RaySession()
    run = RunFolder(config["run_location"])
    recipe = Recipe(
        cfg,
        session,
        run=run,
        generated=config.get("generated"),
        tracker=config.get("tracker"),
        hooks=hooks_from_config(config.get("fault")),
    )
    # Rank 0 adds its lines (progress, epochs, Ray Train's own) to the run's log file, which
    # the driver writes too: one file tells the whole run (a shared folder; see check_shared).
    with log_file(run.path(LOG_FILE)) if session.rank == 0 else nullcontext():
        recipe.setup()
        summary = recipe.run()
    return summary if session.rank == 0 else None
