"""Adaptation training on Ray Train: one ``TorchTrainer`` fit per experiment.

`TrainingJob.prepare` checks everything before any worker starts (the run folder, the data,
the weights, the cluster's shared storage); `TrainingJob.fit` runs the `Recipe` on every
DDP worker (`worker.py`) with failure recovery from checkpoints, and returns a `TrainResult`
naming the exported ``best`` and ``last`` model folders. ``run_training`` does both, inside
the training's MLflow run.

Ray Train V2 resumes a run from its storage folder when one with the same name exists, so the
run name carries a fingerprint of everything that determines the training: re-running the same
experiment continues it (after a driver crash or Ctrl-C), while a changed config trains anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlab import tracking
from shiftlab.config import save_resolved
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.formats.shiftlab_dir import META_FILE
from shiftlab.data.procedural_cache import ensure_procedural, procedural_key
from shiftlab.models.weights import check_pretrained
from shiftlab.tracking import RunTracker
from shiftlab.train.data import check_training_data
from shiftlab.train.faults import FAULT_ENV, driver_callbacks, parse_fault
from shiftlab.utils.errors import ConfigError, work_begins
from shiftlab.utils.ray_runtime import connect, forwarded_env, verbose
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.storage import check_shared, check_writable
from shiftlab.utils.store import absolute, open_store

log = logging.getLogger(__name__)

# Ray Train's controller checks on its workers every 2 s by default, and each phase of a
# run's start (workers created, context set up, function launched) and its end waits for the
# next check: at 0.5 s a 2-step training on 2 CPUs took 17-19 s instead of 21-23 s
# (bench/RESULTS.md). A check is one small RPC per worker. A value the user set wins.
HEALTH_CHECK_INTERVAL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"

# Settings that change how a run is executed or tracked, not what it learns.
_RUN_ONLY_KEYS = {"description", "ray", "tracking", "evaluate", "protocol"}
_TRAIN_RUN_ONLY = {
    "max_failures",
    "keep_checkpoints",
    "loader_workers",
    "torch_threads",
    "cpus_per_worker",
    "use_gpu",
    "verify_data",
}


@dataclass
class TrainResult:
    run_dir: Path
    best_dir: Path
    last_dir: Path
    epochs: int
    best_score: float | None
    best_epoch: int | None
    metrics: dict[str, Any] = field(default_factory=dict)  # the last reported epoch's
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    ray_path: str | None = None  # Ray Train's run folder (checkpoints)
    resumed_from: int = 0  # epochs already done when the final worker group started
    epochs_trained: int = 0  # fewer than `epochs` when early stopping ended the run
    stopped_early: dict[str, int] = field(default_factory=dict)  # stage -> epoch it stopped after
    timings: dict[str, list[float]] = field(default_factory=dict)  # rank 0's, see Recipe.timings


def absolute_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with ``output_dir`` made absolute (workers run in other directories)."""
    return cfg.model_copy(update={"output_dir": absolute(cfg.output_dir)})


def prepare_run_folder(cfg: ExperimentConfig) -> RunFolder:
    """The run's folder, checked writable, with the resolved config saved (once per run)."""
    folder = cfg.run_folder
    # Read-only, full, a missing bucket: a clear error before any work.
    check_writable(folder.location, "run directory")
    check_writable(folder.path(), "run directory (local copy)")
    save_resolved(cfg, folder.path("config.yaml"))
    folder.publish("config.yaml")
    return folder


def training_fingerprint(cfg: ExperimentConfig, generated: str | None) -> str:
    data = cfg.model_dump(mode="json")
    for key in _RUN_ONLY_KEYS:
        data.pop(key, None)
    for key in _TRAIN_RUN_ONLY:
        data["train"].pop(key, None)
    data["__generated__"] = generated
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _render_procedural(cfg: ExperimentConfig) -> list[str]:
    """Render procedural sets once in the driver (not twice in parallel in the workers), and
    return their cache keys for the MLflow tags."""
    keys = []
    specs = [cfg.data.source, cfg.data.target_unlabelled, *cfg.data.val, *cfg.data.test]
    for spec in specs:
        if spec is not None and spec.format == "procedural":
            ensure_procedural(spec)
            keys.append(procedural_key(spec))
    return sorted(set(keys))


def _generated_key(generated: str | None) -> str | None:
    if generated is None:
        return None
    try:
        data = json.loads(open_store(generated).read_bytes(META_FILE))
    except (OSError, json.JSONDecodeError):
        return None
    key = data.get("cache_key") or data.get("key")
    return str(key) if key else None


def preflight(cfg: ExperimentConfig, generated: str | None) -> None:
    """Config and data errors, raised in the driver before any worker starts (a worker error
    would be retried ``max_failures`` times)."""
    if not cfg.train.init_from:
        check_pretrained(cfg.model)
    check_training_data(cfg, generated)


@dataclass
class TrainingJob:
    cfg: ExperimentConfig
    folder: RunFolder
    generated: str | None
    fingerprint: str
    tags: dict[str, Any]

    @classmethod
    def prepare(
        cls, cfg: ExperimentConfig, generated: str | Path | None, folder: RunFolder
    ) -> TrainingJob:
        """Everything checked and ready, before any worker starts."""
        where = absolute(generated) if generated is not None else None
        needed = cfg.method.generated_modes
        if needed and where is None:
            raise ConfigError(
                f"method {cfg.method.name!r} trains on generated views: pass generated=<dataset dir>"
            )
        data_keys = _render_procedural(cfg)
        preflight(cfg, where)
        connect(cfg.ray.address, cfg.ray.num_cpus)
        # Rank 0 may run on another node and writes best/ and last/ here: it must see this folder.
        check_shared(folder.location, "run directory")
        if cfg.ray.storage_path:
            check_shared(cfg.ray.storage_path, "ray.storage_path")
        fingerprint = training_fingerprint(cfg, where)
        tags: dict[str, Any] = {
            "data_cache_keys": ",".join(data_keys) or None,
            "generated_cache_key": _generated_key(where),
            "generated_dir": where,
        }
        return cls(cfg, folder, where, fingerprint, tags)

    def fit(self, tracker: RunTracker | None, callbacks: Sequence[Any] = ()) -> TrainResult:
        """Train on Ray Train; ``callbacks``: Ray Train ``UserCallback``s (a sweep passes
        ``TuneReportCallback()``)."""
        work_begins()
        result = self._trainer(tracker, callbacks).fit()
        if result.error is not None:  # older behaviour: an error on the result, not raised
            raise result.error
        summary = result.return_value or {}
        for exported in ("best", "last"):  # rank 0 published them, maybe from another node
            self.folder.pull(exported)
        run_dir = self.folder.path()
        return TrainResult(
            run_dir=run_dir,
            best_dir=run_dir / "best",
            last_dir=run_dir / "last",
            epochs=int(summary.get("epochs", 0)),
            best_score=summary.get("best_score"),
            best_epoch=summary.get("best_epoch"),
            metrics=dict(summary.get("metrics") or result.metrics or {}),
            mlflow_run_id=tracker.run_id if tracker is not None else None,
            tracking_uri=tracker.tracking_uri if tracker is not None else None,
            ray_path=str(result.path) if result.path else None,
            resumed_from=int(summary.get("resumed_from", 0)),
            epochs_trained=int(summary.get("epochs_trained", 0)),
            stopped_early=dict(summary.get("stopped_early") or {}),
            timings=dict(summary.get("timings") or {}),
        )

    def _trainer(self, tracker: RunTracker | None, callbacks: Sequence[Any]) -> Any:
        import ray
        import ray.train

        from shiftlab.train.ray_trainer import ShiftlabTorchTrainer
        from shiftlab.train.worker import train_loop_per_worker

        cfg = self.cfg
        gpu = _use_gpu(cfg, ray.cluster_resources())
        resources: dict[str, float] = {
            "CPU": cfg.train.cpus_per_worker,
            **({"GPU": 1} if gpu else {}),
        }
        fault = parse_fault(os.environ.get(FAULT_ENV))
        # Ray Train's controller passes this to itself when the trainer starts (read there).
        os.environ.setdefault(HEALTH_CHECK_INTERVAL_VAR, HEALTH_CHECK_INTERVAL_S)
        env = forwarded_env()
        return ShiftlabTorchTrainer(
            train_loop_per_worker,  # type: ignore[arg-type]  # rank 0 returns the summary
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "generated": self.generated,
                "run_location": self.folder.location,
                "cwd": os.getcwd(),
                "tracker": tracker,
                "fault": fault,
                "log_level": logging.getLogger("shiftlab").getEffectiveLevel(),
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.train.num_workers, use_gpu=gpu, resources_per_worker=resources
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{self.fingerprint}",
                storage_path=cfg.ray.storage_path or self.folder.uri("ray"),
                failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=cfg.train.keep_checkpoints
                ),
                callbacks=[*callbacks, *driver_callbacks(fault)],
                # Train V2's RunConfig (ray.train) has it; the type stubs still show V1's.
                worker_runtime_env={"env_vars": env} if env else None,  # type: ignore[call-arg]
                # Ray Train's INFO lines stay in Ray's log files unless -v.
                logging_config=ray.train.LoggingConfig(
                    log_level="INFO" if verbose() else "WARNING"
                ),
            ),
        )


def _use_gpu(cfg: ExperimentConfig, cluster: dict[str, float]) -> bool:
    if cfg.train.use_gpu != "auto":
        return bool(cfg.train.use_gpu)
    return cluster.get("GPU", 0) >= 1


def run_training(
    cfg: ExperimentConfig,
    generated: str | Path | None = None,
    tracker: RunTracker | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train ``cfg`` with Ray Train; returns where the best/last models are.

    ``generated``: the shiftlab dataset directory of generated views (``ensure_generated``;
    a URI when it is on object storage). When ``output_dir`` is a URI, the run's files are
    published there and ``best_dir``/``last_dir`` of the result are this node's copies.
    ``tracker``: log into this open run (its owner ends it); without one, the training's own
    MLflow run is opened and ended here (when tracking is enabled).
    """
    cfg = absolute_config(cfg)
    job = TrainingJob.prepare(cfg, generated, prepare_run_folder(cfg))
    if tracker is not None or not cfg.tracking.enabled:
        return job.fit(tracker, callbacks)
    with tracking.run(cfg, job.folder, job.fingerprint, job.tags) as own:
        return job.fit(own, callbacks)
