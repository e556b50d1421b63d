"""Driver-side bookkeeping of trial runs: no trial's MLflow run is ever left RUNNING.

When ASHA stops a trial, Tune kills its actor: the trial's own code never gets to close its
run. This callback runs in the driver and closes it: FINISHED with ``shiftlab.early_stopped``
for a stopped trial, FAILED for an errored one.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from shiftlab.sweep.space import TrialSpec
from shiftlab.sweep.trainable import COMPLETED
from shiftlab.tracking import runs

log = logging.getLogger(__name__)


def trial_key(trial: Any) -> str:
    """The same key the trainable uses: pre-expanded trials carry theirs, searched ones use the id."""
    config = trial.config or {}
    if "trial" in config:
        return TrialSpec.from_dict(config["trial"]).key
    return trial.trial_id


class TrialRunCloser(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = runs.client_for(self.tracking_uri)
        return self._client

    def _close(self, trial: Any, status: str) -> None:
        try:
            run = runs.find_child(
                self.client, self.experiment_id, self.parent_run_id, trial_key(trial)
            )
            if run is None:
                return  # the trial never got as far as creating its run
            completed = bool((trial.last_result or {}).get(COMPLETED))
            if status == "FINISHED" and completed and run.info.status == "FINISHED":
                return  # the trial closed its own run
            early = status == "FINISHED" and not completed
            runs.close_run(self.client, run.info.run_id, status, early_stopped=early)
            if early:
                log.info("trial %s stopped early: run %s FINISHED", trial.trial_id, run.info.run_id)
        except Exception:  # noqa: BLE001 - bookkeeping must never take the sweep down
            log.exception("could not close the MLflow run of trial %s", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")


class SweepProgress(Callback):
    """One line whenever a trial starts or ends: trials done / running / pending and the best
    so far by the sweep's ranking metric (Tune's own status tables are turned off)."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode

    def _best(self, trials: list) -> str:
        scored = [
            (float(t.last_result[self.metric]), name_trial(t))
            for t in trials
            if isinstance((t.last_result or {}).get(self.metric), (int, float))
        ]
        if not scored:
            return "no score yet"
        value, name = (max if self.mode == "max" else min)(scored)
        return f"best {self.metric} {value:.4f} ({name})"

    def _say(self, trials: list, event: str) -> None:
        states = [str(t.status) for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in states)
        log.info(
            "sweep: %s; %d/%d trial(s) done (%d failed), %d running, %d pending; %s",
            event,
            done,
            len(trials),
            states.count("ERROR"),
            states.count("RUNNING"),
            states.count("PENDING"),
            self._best(trials),
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trials, f"{name_trial(trial)} started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trials, f"{name_trial(trial)} finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trials, f"{name_trial(trial)} failed")


def name_trial(trial: Any) -> str:
    """Tune's trial name ``t03``: from the expanded index, or the order of the searcher's suggestions."""
    config = trial.config or {}
    if "trial" in config:
        return f"t{int(config['trial']['index']):02d}"
    tag = str(getattr(trial, "experiment_tag", "") or "")
    counter = tag.split("_", 1)[0]
    if counter.isdigit():
        return f"t{int(counter) - 1:02d}"
    return f"t_{trial.trial_id}"
