"""Adaptation training on Ray Train: one ``TorchTrainer`` fit per experiment.

``run_training`` builds the trainer (DDP workers, failure recovery from checkpoints,
checkpoint retention), creates or attaches to the MLflow run, and returns a ``TrainResult``
naming the exported ``best`` and ``last`` model directories.

Ray Train V2 resumes a run from its storage folder when one with the same name exists, so the
run name carries a fingerprint of everything that determines the training: re-running the same
experiment continues it (after a driver crash), while a changed config trains from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlab.data.formats.shiftlab_dir import META_FILE
from shiftlab.utils.atomic import write_json
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.ray_runtime import forwarded_env
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import absolute, is_uri, open_store

log = logging.getLogger(__name__)

# Env var read by the driver: "epoch=E,rank=R,marker=PATH" kills rank R once in epoch E (tests).
FAULT_ENV = "SHIFTLAB_TRAIN_FAULT"
MLFLOW_RUN_FILE = "mlflow_run.json"
# Settings that change how a run is executed or tracked, not what it learns.
_RUN_ONLY_KEYS = {
    "description", "ray", "tracking", "evaluate",
}
_TRAIN_RUN_ONLY = {
    "max_failures", "keep_checkpoints", "loader_workers", "torch_threads", "cpus_per_worker",
    "use_gpu",
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


def ensure_ray(cfg: Any) -> None:
    """``ray.init`` unless Ray is already up: ``cfg.ray.address`` (or RAY_ADDRESS) or local."""
    from shiftlab.utils.ray_runtime import ensure_ray as connect

    connect(cfg.ray.address, cfg.ray.num_cpus)


def absolute_config(cfg: Any) -> Any:
    """The config with ``output_dir`` made absolute (workers run in other directories)."""
    return cfg.model_copy(update={"output_dir": absolute(cfg.output_dir)})


def training_fingerprint(cfg: Any, generated: Path | str | None) -> str:
    data = cfg.model_dump(mode="json")
    for key in _RUN_ONLY_KEYS:
        data.pop(key, None)
    for key in _TRAIN_RUN_ONLY:
        data["train"].pop(key, None)
    data["__generated__"] = str(generated) if generated else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def parse_fault(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        parts = dict(item.split("=", 1) for item in text.split(","))
        return {"epoch": int(parts["epoch"]), "rank": int(parts.get("rank", 0)), "marker": parts["marker"]}
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{FAULT_ENV}={text!r}: expected epoch=E,rank=R,marker=PATH ({exc})") from None


def use_gpu(cfg: Any) -> bool:
    if cfg.train.use_gpu != "auto":
        return bool(cfg.train.use_gpu)
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def _prepare_data(cfg: Any) -> list[str]:
    """Render procedural sets once in the driver (not twice in parallel in the workers), and
    return their cache keys for the MLflow tags."""
    from shiftlab.data.procedural_cache import ensure_procedural, procedural_key

    keys = []
    specs = [cfg.data.source, cfg.data.target_unlabelled, *cfg.data.val, *cfg.data.test]
    for spec in specs:
        if spec is not None and spec.format == "procedural":
            ensure_procedural(spec)
            keys.append(procedural_key(spec))
    return sorted(set(keys))


def _generated_key(generated: Path | str | None) -> str | None:
    if generated is None:
        return None
    try:
        data = json.loads(open_store(generated).read_bytes(META_FILE))
    except (OSError, json.JSONDecodeError):
        return None
    key = data.get("cache_key") or data.get("key")
    return str(key) if key else None


def _open_tracking(
    cfg: Any, run: RunFolder, fingerprint: str, mlflow_run_id: str | None, tags: dict[str, Any]
) -> Any:
    """Attach to the given run, or the run this training used before (same fingerprint), or a
    new one; params, tags and the resolved config are logged to it."""
    from shiftlab.tracking import log_run_setup, open_run, resolve_tracking_uri, run_exists

    uri = resolve_tracking_uri(cfg)
    record = run.pull(MLFLOW_RUN_FILE) if run.exists(MLFLOW_RUN_FILE) else run.path(MLFLOW_RUN_FILE)
    run_id = mlflow_run_id
    if run_id is None and record.is_file():
        try:
            saved = json.loads(record.read_text())
        except json.JSONDecodeError:
            saved = {}
        if (
            saved.get("fingerprint") == fingerprint
            and saved.get("tracking_uri") == uri
            and run_exists(uri, saved.get("run_id", ""))
        ):
            run_id = saved["run_id"]  # the same training, restarted: continue its run
    tracker = open_run(cfg, run_id=run_id, tracking_uri=uri)
    log_run_setup(tracker, cfg, tags)
    write_json(record, {"run_id": tracker.run_id, "tracking_uri": uri, "fingerprint": fingerprint})
    run.publish(MLFLOW_RUN_FILE)
    return tracker


def run_training(
    cfg: Any,
    generated: Path | str | None = None,
    mlflow_run_id: str | None = None,
    callbacks: list[Any] | None = None,
    end_run: bool | None = None,
) -> TrainResult:
    """Train ``cfg`` with Ray Train; returns where the best/last models are.

    ``generated``: the shiftlab dataset directory of generated views (``ensure_generated``;
    a URI when it is on object storage). When ``output_dir`` is a URI, the run's files are
    published there and ``best_dir``/``last_dir`` of the result are this node's copies.
    ``mlflow_run_id``: log into this run (a sweep's child run) instead of creating one.
    ``callbacks``: Ray Train ``UserCallback``s for the ``RunConfig`` (a sweep passes
    ``TuneReportCallback()`` here). ``end_run``: mark the MLflow run FINISHED/FAILED at the end
    (default: only when this call created the run).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from shiftlab.config import save_resolved
    from shiftlab.train.loop import preflight, train_loop_per_worker
    from shiftlab.utils.storage import check_shared, check_writable

    cfg = absolute_config(cfg)
    if generated is not None and not is_uri(generated):
        generated = Path(generated).resolve()
    if cfg.generate is not None and generated is None and cfg.method.name == "sdgpa":
        raise ConfigError("method 'sdgpa' trains on generated views: pass generated=<dataset dir>")
    run = cfg.run_folder
    run_dir = run.path()
    # Read-only, full, a missing bucket: a clear error before any work.
    check_writable(run.location, "run directory")
    check_writable(run_dir, "run directory (local copy)")
    save_resolved(cfg, run_dir / "config.yaml")
    run.publish("config.yaml")

    fingerprint = training_fingerprint(cfg, generated)
    data_keys = _prepare_data(cfg)
    preflight(cfg, generated)
    ensure_ray(cfg)
    # Rank 0 may run on another node and writes best/ and last/ here: it must see this folder.
    check_shared(run.location, "run directory")
    if cfg.ray.storage_path:
        check_shared(cfg.ray.storage_path, "ray.storage_path")
    tracker = None
    if cfg.tracking.enabled:
        tags: dict[str, Any] = {"train_fingerprint": fingerprint}
        if data_keys:
            tags["data_cache_keys"] = ",".join(data_keys)
        gen_key = _generated_key(generated)
        if gen_key:
            tags["generated_cache_key"] = gen_key
        if generated is not None:
            tags["generated_dir"] = str(generated)
        tracker = _open_tracking(cfg, run, fingerprint, mlflow_run_id, tags)
    if end_run is None:
        end_run = mlflow_run_id is None

    gpu = use_gpu(cfg)
    resources: dict[str, float] = {"CPU": cfg.train.cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    storage = cfg.ray.storage_path or run.uri("ray")
    env = forwarded_env()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "generated": str(generated) if generated else None,
            "run_location": run.location,
            "cwd": os.getcwd(),
            "tracker": tracker,
            "fault": parse_fault(os.environ.get(FAULT_ENV)),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{fingerprint}",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=list(callbacks or []),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    try:
        result = trainer.fit()
    except BaseException:
        if tracker is not None and end_run:
            tracker.finish("FAILED")
        raise
    if result.error is not None:  # older behaviour: an error on the result, not raised
        if tracker is not None and end_run:
            tracker.finish("FAILED")
        raise result.error
    summary = result.return_value or {}
    if run.remote is not None:  # rank 0 published them, maybe from another node
        for exported in ("best", "last"):
            run.pull(exported)
    if tracker is not None and end_run:
        tracker.finish("FINISHED")
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
    )
