"""Which epoch becomes ``best/``, and when to stop early: the rule of ``train.select``.

Kept apart from the training loop so it can be read (and tested) on its own: it sees only
epoch counters and the metrics of each epoch, never a dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shiftlab.config.run import EarlyStopConfig, SelectConfig


@dataclass(frozen=True)
class Decision:
    best: bool  # this epoch's model becomes best/
    stop: bool  # early stopping: no later epoch is trained


class Selector:
    """``update`` once per epoch; ``state_dict`` travels with each training checkpoint."""

    def __init__(
        self, rule: SelectConfig, early_stop: EarlyStopConfig | None, total_epochs: int
    ) -> None:
        self.rule = rule
        self.early_stop = early_stop
        self.total_epochs = total_epochs
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.stale = 0  # validations in a row without an improvement of min_delta

    def update(
        self, done: int, stage: str, stage_done: int, metrics: Mapping[str, Any]
    ) -> Decision:
        """``done``: epochs finished overall; ``stage_done``: epochs finished in ``stage``."""
        if self.rule.rule == "metric":
            return self._by_metric(done, metrics.get(self.rule.metric))
        if self.rule.rule == "epoch":
            hit = stage_done == self.rule.epoch if self.rule.stage else done == self.rule.epoch
            at = hit and (self.rule.stage is None or stage == self.rule.stage)
            return self._chosen(done, at, metrics)
        return self._chosen(done, done == self.total_epochs, metrics)

    def _chosen(self, done: int, chosen: bool, metrics: Mapping[str, Any]) -> Decision:
        if chosen:
            self.best_epoch = done
            score = metrics.get("val_miou")
            self.best_score = float(score) if isinstance(score, (int, float)) else None
        return Decision(best=chosen, stop=False)

    def _by_metric(self, done: int, score: Any) -> Decision:
        if not isinstance(score, (int, float)):
            return Decision(best=False, stop=False)  # no validation this epoch
        score = float(score)
        margin = self.early_stop.min_delta if self.early_stop else 0.0
        improved_enough = self.best_score is None or score > self.best_score + margin
        best = self.best_score is None or score > self.best_score
        if best:
            self.best_score, self.best_epoch = score, done
        self.stale = 0 if improved_enough else self.stale + 1
        stop = self.early_stop is not None and self.stale >= self.early_stop.patience
        return Decision(best=best, stop=stop)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.best_score is not None:
            out["best_score"] = self.best_score
        if self.best_epoch is not None:
            out["best_epoch"] = self.best_epoch
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = state.get("best_epoch")
        self.stale = int(state.get("stale", 0))
