"""One owner for every MLflow run's life: ``with tracking.run(...) as tracker:``.

The block opens (or re-opens) the run, logs the config and tags once, and ends it: FINISHED
when the block completes, KILLED on Ctrl-C / SIGTERM, FAILED on any other error. Nothing else
in shiftlab ends a run it opened; runs whose process was killed from outside (trials that
ASHA stopped) are closed by the sweep driver through `shiftlab.tracking.runs.close_run`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shiftlab.config.schema import ExperimentConfig
from shiftlab.tracking.mlflow_run import (
    RunTracker,
    log_run_setup,
    open_run,
    resolve_tracking_uri,
    run_exists,
)
from shiftlab.tracking.runs import client_for, close_run
from shiftlab.utils.atomic import write_json
from shiftlab.utils.run_folder import RunFolder

RUN_RECORD = "mlflow_run.json"  # in the run folder: which MLflow run this training writes to


@contextmanager
def ended(tracker: RunTracker, *, end: bool = True) -> Iterator[RunTracker]:
    """End ``tracker``'s run when the block ends (``end=False``: the caller's run, left open)."""
    try:
        yield tracker
    except (KeyboardInterrupt, SystemExit):
        if end:
            tracker.safely(lambda t: t.end("KILLED"))
        raise
    except BaseException:
        if end:
            tracker.safely(lambda t: t.end("FAILED"))
        raise
    if end:
        tracker.end("FINISHED")


@contextmanager
def run(
    cfg: ExperimentConfig,
    folder: RunFolder,
    fingerprint: str,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[RunTracker]:
    """The MLflow run of one training: the run this training used before (a restart after a
    crash or Ctrl-C continues it), else a new one; params, tags and config logged once."""
    uri = resolve_tracking_uri(cfg)
    run_id = _previous_run(folder, fingerprint, uri)
    tracker = open_run(cfg, run_id=run_id, tracking_uri=uri)
    _set_up(tracker, cfg, folder, fingerprint, tags)
    with ended(tracker):
        yield tracker


def _set_up(
    tracker: RunTracker,
    cfg: ExperimentConfig,
    folder: RunFolder,
    fingerprint: str,
    tags: Mapping[str, Any] | None,
) -> None:
    """Params, tags and config logged once; the run folder records which MLflow run it is."""
    log_run_setup(tracker, cfg, {"train_fingerprint": fingerprint, **dict(tags or {})})
    record = {
        "run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "fingerprint": fingerprint,
    }
    write_json(folder.path(RUN_RECORD), record)
    folder.publish(RUN_RECORD)


def _previous_run(folder: RunFolder, fingerprint: str, uri: str) -> str | None:
    record = folder.pull(RUN_RECORD) if folder.exists(RUN_RECORD) else folder.path(RUN_RECORD)
    if not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text())
    except json.JSONDecodeError:
        return None
    same = saved.get("fingerprint") == fingerprint and saved.get("tracking_uri") == uri
    return saved["run_id"] if same and run_exists(uri, saved.get("run_id", "")) else None


@contextmanager
def attached(
    tracker: RunTracker,
    cfg: ExperimentConfig,
    folder: RunFolder,
    fingerprint: str,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[RunTracker]:
    """A run the caller owns (a sweep trial's child run): set up here, ended by the caller."""
    _set_up(tracker, cfg, folder, fingerprint, tags)
    yield tracker


def close_orphan(
    tracking_uri: str, run_id: str, status: str, early_stopped: bool | None = None
) -> None:
    """End a run whose own process can no longer do it (a trial ASHA stopped)."""
    close_run(client_for(tracking_uri), run_id, status, early_stopped=early_stopped)
