"""Fault injection for tests of recovery: kill one training worker once, between two epochs.

``SHIFTLAB_TRAIN_FAULT="epoch=E,rank=R,marker=PATH"`` in the driver's environment makes rank R
exit at the start of epoch E (0-based), once: a marker file records that it happened. Before
dying, the worker waits until the driver's `CheckpointRegistered` callback has seen the
previous epoch's checkpoint arrive (a real failure comes long after the last report), using
only Ray Train's public callback API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from shiftlab.utils.errors import ConfigError

FAULT_ENV = "SHIFTLAB_TRAIN_FAULT"


def parse_fault(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        parts = dict(item.split("=", 1) for item in text.split(","))
        return {
            "epoch": int(parts["epoch"]),
            "rank": int(parts.get("rank", 0)),
            "marker": parts["marker"],
        }
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"{FAULT_ENV}={text!r}: expected epoch=E,rank=R,marker=PATH ({exc})"
        ) from None


def _registered(marker: str) -> Path:
    return Path(f"{marker}.checkpoints")


class CheckpointRegistered(UserCallback):
    """Driver side: counts the checkpoints Ray Train has taken, in a file next to the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if checkpoint is not None:
            path = _registered(self.marker)
            count = int(path.read_text() or 0) if path.is_file() else 0
            path.write_text(str(count + 1))


class KillOnce:
    """Worker side (a `RecipeHook`): exit rank R at the start of epoch E, once."""

    def __init__(self, epoch: int, rank: int, marker: str, timeout_s: float = 120.0) -> None:
        self.epoch, self.rank, self.marker, self.timeout_s = epoch, rank, Path(marker), timeout_s

    def on_epoch_start(self, recipe: Any, epoch: int) -> None:
        if epoch != self.epoch or recipe.session.rank != self.rank or self.marker.exists():
            return
        deadline = time.monotonic() + self.timeout_s
        registered = _registered(str(self.marker))
        while time.monotonic() < deadline:
            if (
                registered.is_file()
                and int(registered.read_text() or 0) >= recipe.checkpoints_reported
            ):
                break
            time.sleep(0.2)
        self.marker.write_text(f"killed rank {self.rank} at the start of epoch {epoch}\n")
        os._exit(1)


def hooks_from_config(fault: dict[str, Any] | None) -> list[KillOnce]:
    return [KillOnce(fault["epoch"], fault["rank"], fault["marker"])] if fault else []


def driver_callbacks(fault: dict[str, Any] | None) -> list[Any]:
    return [CheckpointRegistered(fault["marker"])] if fault else []
