"""Nested MLflow runs: one parent run per sweep, one child run per trial.

Child runs are found by a deterministic trial key (tag ``shiftlab.trial_key``) under the
parent, so a restarted or resumed trial writes into the run it already has instead of
creating a second one.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TAG_SWEEP = "shiftlab.sweep"
TAG_KIND = "shiftlab.kind"
TAG_KEY = "shiftlab.trial_key"
TAG_INDEX = "shiftlab.trial_index"
TAG_CONFIG = "shiftlab.config_id"
TAG_PARAMS = "shiftlab.sweep_params"  # JSON of the swept values of this trial
TAG_SEED = "shiftlab.seed"
TAG_EARLY = "shiftlab.early_stopped"
TAG_TUNE_ID = "shiftlab.tune_trial_id"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def client_for(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _retry(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """sqlite stores shared by several trial processes can be briefly locked: retry a little."""
    delay = 0.2
    for attempt in range(6):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only lock errors are retried
            if "locked" not in str(exc).lower() or attempt == 5:
                raise
            time.sleep(delay)
            delay *= 2
    return None


def create_parent(client: Any, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> str:
    run = _retry(
        client.create_run,
        experiment_id,
        run_name=sweep_name,
        tags={TAG_SWEEP: sweep_name, TAG_KIND: "sweep", **tags},
    )
    return run.info.run_id


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    from mlflow.entities import ViewType

    runs: list[Any] = []
    token = None
    while True:
        page = _retry(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    return _search(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def find_child(client: Any, experiment_id: str, parent_run_id: str, key: str) -> Any | None:
    runs = _search(
        client,
        experiment_id,
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TAG_KEY}` = '{key}'",
    )
    # Oldest first: if a crash ever left two, keep writing into the first.
    runs.sort(key=lambda r: r.info.start_time or 0)
    return runs[0] if runs else None


def finished_results(run: Any | None) -> dict[str, float] | None:
    """The final scores of a trial run that FINISHED with them, else None."""
    if run is None or run.info.status != "FINISHED":
        return None
    final = {
        k.removeprefix("final/"): v for k, v in run.data.metrics.items() if k.startswith("final/")
    }
    return final or None


def get_or_create_child(
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    key: str,
    name: str,
    tags: dict[str, str],
) -> str:
    existing = find_child(client, experiment_id, parent_run_id, key)
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status != "RUNNING":
            _retry(client.update_run, run_id, status="RUNNING")
        # A re-run is no longer the run that was stopped early or failed.
        _retry(client.set_tag, run_id, TAG_EARLY, "false")
        return run_id
    run = _retry(
        client.create_run,
        experiment_id,
        run_name=name,
        tags={PARENT_TAG: parent_run_id, TAG_KEY: key, TAG_EARLY: "false", **tags},
    )
    return run.info.run_id


def close_run(client: Any, run_id: str, status: str, early_stopped: bool | None = None) -> None:
    """End a trial's run once: a run that already ended keeps its status and end time.

    The trial, the driver's callback and a resumed sweep may each try to close the same run.
    """
    if _retry(client.get_run, run_id).info.status in TERMINAL:
        return
    if early_stopped is not None:
        _retry(client.set_tag, run_id, TAG_EARLY, "true" if early_stopped else "false")
    _retry(client.set_terminated, run_id, status=status)


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)
