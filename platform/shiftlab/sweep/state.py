"""A sweep's state: one typed record, saved to and loaded from ``sweep.json``.

Everything a resume needs travels in it (the resolved experiment, the space, the options, the
MLflow store, experiment and parent run), and every trial receives it as its context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from shiftlab.config.loader import validate_dict
from shiftlab.config.schema import ExperimentConfig
from shiftlab.sweep.space import SearchSpace, TrialSpec, parse_space
from shiftlab.utils.atomic import write_json
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import absolute

STATE_FILE = "sweep.json"
Status = Literal["created", "running", "finished", "failed", "interrupted"]


@dataclass
class SweepOptions:
    """What the command line adds to an experiment and a space."""

    num_samples: int | None = None
    scheduler: str = "fifo"  # fifo | asha
    search: str = "random"  # random | optuna
    max_concurrent: int | None = None
    name: str | None = None
    tracking_uri: str | None = None
    address: str | None = None


class Ranking(BaseModel):
    """What the leaderboard ranks on, said wherever it is shown."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    mode: str
    sets: list[str]
    target_labels: bool  # an oracle validation on labelled target data

    def describe(self) -> str:
        text = f"{self.metric} ({self.mode}) on {', '.join(self.sets)}"
        if self.target_labels:
            text += " (carries target labels: an oracle validation, disjoint from the test sets)"
        return text


class SweepState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    location: str  # the sweep's run directory: a path or an object-store URI
    experiment_path: str
    overrides: list[str]
    experiment: dict[str, Any]  # resolved; absolute output paths (trials run elsewhere)
    space_path: str
    space: dict[str, Any]  # as written in the space file
    scheduler: str
    search: str
    max_concurrent_cap: int | None  # --max-concurrent
    num_samples: int
    sweep_seed: int
    epochs: int
    trials: list[dict[str, Any]] | None  # expanded up front (random search); None for optuna
    ranking: Ranking
    tracking_uri: str
    mlflow_experiment: str
    mlflow_experiment_id: str
    parent_run_id: str
    address: str | None
    num_cpus: int | None
    max_concurrent: int | None = None  # planned from the cluster when it first ran
    status: Status = "created"

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.location)

    def base_config(self) -> ExperimentConfig:
        return validate_dict(self.experiment, f"sweep {self.name} experiment")

    def search_space(self) -> SearchSpace:
        return parse_space(self.space, self.space_path)

    def trial_specs(self) -> list[TrialSpec] | None:
        return [TrialSpec.from_dict(t) for t in self.trials] if self.trials is not None else None

    def save(self, status: Status | None = None) -> None:
        if status is not None:
            self.status = status
        folder = self.folder
        write_json(folder.path(STATE_FILE), self.model_dump(mode="json"))
        folder.publish(STATE_FILE)

    @classmethod
    def load(cls, location: str | Path) -> SweepState:
        folder = RunFolder(absolute(location))
        if not folder.exists(STATE_FILE):
            raise ConfigError(f"{location}: not a sweep run directory (no {STATE_FILE})")
        path = folder.pull(STATE_FILE)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{path}: unreadable sweep state: {exc}") from None


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep gets: the sweep's state, the driver's working directory
    (relative paths in the config mean it) and the environment it forwards to workers."""

    state: SweepState
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
