"""One MLflow run per training run: created by the driver, written to by rank 0.

``RunTracker`` is a small picklable handle (tracking URI + run id) so that the driver can
create or attach to a run and hand it to the Ray Train workers, where rank 0 logs the
per-epoch metrics through ``MlflowClient`` (no global ``mlflow.start_run`` state, which would
not survive the trip into a worker process).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from shiftlab.config import flatten, resolved_yaml
from shiftlab.config.schema import ExperimentConfig
from shiftlab.tracking.runs import close_run
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.store import open_store

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's limits (mlflow.utils.validation): 6000 chars per param value, 100 params/tags and
# 1000 metrics per log_batch call.
MAX_PARAM_CHARS = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def default_tracking_uri(output_dir: str | Path) -> str:
    """A local sqlite store next to the runs (a file store is refused by MLflow 3); an output
    on object storage has no place for one (a ConfigError asks for a server)."""
    return open_store(output_dir).sqlite_uri("mlflow.db")


def default_artifact_location(output_dir: str | Path) -> str:
    return open_store(output_dir).artifact_uri("mlartifacts")


def resolve_tracking_uri(cfg: ExperimentConfig) -> str:
    return absolute_tracking_uri(cfg.tracking.tracking_uri or default_tracking_uri(cfg.output_dir))


def absolute_tracking_uri(uri: str) -> str:
    """Trials run in other working directories: a relative sqlite path must become absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    if "://" not in uri:
        raise ConfigError(
            f"tracking URI {uri!r}: give sqlite:///path/to/mlflow.db or a server "
            "http://host:port (MLflow 3 refuses plain directories)"
        )
    return uri


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config flattened to ``{"a.b.c": "value"}``, values capped at MLflow's limit."""
    flat = flatten(cfg.model_dump(mode="json"))
    return {key: _param_value(value) for key, value in flat.items()}


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    if len(text) > MAX_PARAM_CHARS:
        # The full value is in the config.yaml artifact; the param keeps a marked prefix.
        marker = "...[truncated]"
        text = text[: MAX_PARAM_CHARS - len(marker)] + marker
    return text


def git_revision(path: str | Path | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (default: this package), if it is one."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


class RunTracker:
    """A handle on one MLflow run; cheap to pickle (the client is built lazily per process)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tracking_uri = state["tracking_uri"]
        self.run_id = state["run_id"]
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- logging -------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(key=k, value=float(v), timestamp=now, step=int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for chunk in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params not yet on the run (a sweep may have logged some already: params are
        immutable in MLflow, so re-logging a different value would be an error)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        entries = [Param(k, v) for k, v in params.items() if k not in existing]
        for chunk in _chunks(entries, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        for chunk in _chunks(entries, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """End the run once: a run that already ended keeps its status and end time."""
        close_run(self.client, self.run_id, status)

    def reopen(self) -> RunTracker:
        if self.status() != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        return self

    def last_step(self, key: str) -> int | None:
        """The highest step logged for metric ``key`` (a resumed run logs after it)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((int(m.step) for m in history), default=None)

    def safely(self, action: Callable[[RunTracker], T], default: T | None = None) -> T | None:
        """``action(self)``, or ``default`` with a warning when the tracking server fails:
        tracking must never kill a training run."""
        try:
            return action(self)
        except Exception as exc:  # noqa: BLE001 - any tracking failure
            log.warning("MLflow run %s: %s", self.run_id, exc)
            return default

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def open_run(
    cfg: ExperimentConfig,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> RunTracker:
    """Attach to ``run_id`` (a sweep's child run, or the run of a resumed training), or create
    a run in the experiment ``cfg.tracking.experiment_name`` (default: ``cfg.name``)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or resolve_tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    if run_id is not None:
        client.get_run(run_id)  # fails clearly if the run is not in this store
        if client.get_run(run_id).info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        tracker = RunTracker(uri, run_id)
        tracker._client = client
        return tracker
    # A local (sqlite) store keeps artifacts under the output dir (MLflow's default would be
    # ./mlruns of whatever directory the process runs in); a server decides for itself.
    artifacts = default_artifact_location(cfg.output_dir) if uri.startswith("sqlite:") else None
    experiment_id = get_or_create_experiment(
        client, cfg.tracking.experiment_name or cfg.name, artifacts
    )
    run = client.create_run(experiment_id, run_name=run_name or cfg.name)
    tracker = RunTracker(uri, run.info.run_id)
    tracker._client = client
    return tracker


def run_exists(tracking_uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def log_run_setup(tracker: RunTracker, cfg: ExperimentConfig, tags: Mapping[str, Any]) -> None:
    """Params (flattened config), tags, and the resolved config as an artifact."""
    tracker.log_params(config_params(cfg))
    base = {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "experiment": cfg.name,
        "git_revision": git_revision(),
    }
    # Pretrained weights change results more than most settings: say when there were none.
    if cfg.train.init_from:
        base["init_from"] = cfg.train.init_from
    elif str(getattr(cfg.model, "pretrained", "none")).strip().lower() == "none":
        base["pretrained"] = "false"
    tracker.set_tags({**base, **dict(cfg.tracking.tags), **dict(tags)})
    tracker.log_text(resolved_yaml(cfg), "config.yaml")
    log.info("MLflow run %s at %s", tracker.run_id, tracker.tracking_uri)
