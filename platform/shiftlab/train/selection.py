"""Which epoch becomes ``best/`` (``train.select``), and when a stage stops early.

Kept apart from the training loop so they can be read (and tested) on their own: they see
only epoch counters and each epoch's metrics, never a dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftlab.config.run import EarlyStopConfig, SelectConfig


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Selector:
    """``update`` once per epoch -> whether this epoch's model becomes ``best/``;
    ``state_dict`` travels with each training checkpoint."""

    def __init__(self, rule: SelectConfig, total_epochs: int) -> None:
        self.rule = rule
        self.total_epochs = total_epochs
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def update(
        self, done: int, stage: str, stage_done: int, metrics: Mapping[str, Any], last: bool
    ) -> bool:
        """``done``: epochs finished overall; ``stage_done``: in ``stage``; ``last``: no
        epoch follows (the end of the plan, or an early stop of the last stage)."""
        if self.rule.rule == "metric":
            score = _number(metrics.get(self.rule.metric))
            if score is None or (self.best_score is not None and score <= self.best_score):
                return False
            self.best_score, self.best_epoch = score, done
            return True
        if self.rule.rule == "epoch":
            count = stage_done if self.rule.stage else done
            chosen = count == self.rule.epoch and (
                self.rule.stage is None or stage == self.rule.stage
            )
        else:
            chosen = last
        if chosen:
            self.best_epoch, self.best_score = done, _number(metrics.get("val_miou"))
        return chosen

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.best_score is not None:
            out["best_score"] = self.best_score
        if self.best_epoch is not None:
            out["best_epoch"] = self.best_epoch
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = state.get("best_epoch")


class EarlyStopper:
    """Ends a stage once ``metric`` stopped improving by ``min_delta`` for ``patience``
    validations; every stage starts counting afresh."""

    def __init__(self, cfg: EarlyStopConfig | None, metric: str | None) -> None:
        self.cfg, self.metric = cfg, metric
        self.stage: str | None = None
        self.best: float | None = None
        self.stale = 0
        self.stopped: dict[str, int] = {}  # stage -> epoch (overall) it stopped after

    def update(self, done: int, stage: str, metrics: Mapping[str, Any]) -> bool:
        """True: this stage trains no further epoch."""
        if self.cfg is None or self.metric is None:
            return False
        if stage != self.stage:
            self.stage, self.best, self.stale = stage, None, 0
        score = _number(metrics.get(self.metric))
        if score is None:
            return False  # no validation this epoch
        if self.best is None or score > self.best + self.cfg.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        if self.stale >= self.cfg.patience:
            self.stopped[stage] = done
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "best": self.best,
            "stale": self.stale,
            "stopped": dict(self.stopped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stage, self.best = state.get("stage"), state.get("best")
        self.stale = int(state.get("stale", 0))
        self.stopped = dict(state.get("stopped", {}))
