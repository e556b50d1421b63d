"""One experiment end to end: generate -> train -> evaluate the selected model.

``run_experiment`` is what ``shiftlab train`` and every sweep trial call. The model is chosen
during training by ``train.select`` (``<run_dir>/best``); the test sets are only scored here,
after the choice, and never feed back into it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shiftlab import tracking
from shiftlab.config.schema import ExperimentConfig
from shiftlab.evaluate.evaluator import evaluate_checkpoint
from shiftlab.evaluate.metrics import metric_keys
from shiftlab.evaluate.mlflow_model import log_model_folder
from shiftlab.generate.cache import ensure_generated
from shiftlab.tracking import RunTracker
from shiftlab.train.trainer import TrainingJob, TrainResult, absolute_config, prepare_run_folder
from shiftlab.utils.log_file import LOG_FILE, log_file
from shiftlab.utils.run_folder import RunFolder

log = logging.getLogger(__name__)


def numeric_summary(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{set name: evaluate_checkpoint result} -> val_miou, test_miou, <role>/<name>/miou,
    <role>/<name>/pixel_accuracy, <role>/<name>/iou/<class>, <role>/<name>/<subset> (e.g.
    miou13 of a cityscapes16 set)."""
    summary: dict[str, float] = {}
    by_split: dict[str, list[float]] = {}
    for name, result in results.items():
        split = result["role"]  # val or test, whatever the dataset's own split is called
        summary.update(
            metric_keys(
                f"{split}/{name}",
                result["miou"],
                result["pixel_accuracy"],
                result["per_class"],
                result.get("subset_miou"),
            )
        )
        by_split.setdefault(split, []).append(float(result["miou"]))
    for split, values in by_split.items():
        summary[f"{split}_miou"] = sum(values) / len(values)
    return summary


def evaluate_best(cfg: ExperimentConfig, best_dir: Path, out_dir: Path) -> dict[str, float]:
    """Score the selected model on the config's val and test sets (artifacts in out_dir)."""
    if not cfg.data.val and not cfg.data.test:
        return {}
    results = evaluate_checkpoint(
        best_dir, None, out_dir, save_predictions=cfg.evaluate.save_predictions
    )
    return numeric_summary(results)


def run_experiment(
    cfg: ExperimentConfig, tracker: RunTracker | None = None, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Generate (if ``cfg.generate``), train on Ray Train, evaluate ``<run_dir>/best``.

    Returns the numeric summary (``val_miou``, ``test_miou``, ``val/<set>/miou``,
    ``test/<set>/miou``, ``best_epoch``, ``epochs``) plus ``run_dir`` and ``mlflow_run_id``.
    ``tracker``: log into this open run (a sweep's child run), which its owner ends;
    ``callbacks``: Ray Train callbacks (``TuneReportCallback()`` inside a Tune trial).
    """
    cfg = absolute_config(cfg)
    if cfg.tracking.enabled:
        tracking.resolve_tracking_uri(cfg)  # e.g. output_dir on s3:// without a server: fail now
    folder = prepare_run_folder(cfg)
    try:
        with log_file(folder.path(LOG_FILE)):
            return _run_in_folder(cfg, folder, tracker, callbacks)
    finally:
        _publish_log(folder)


def _publish_log(folder: RunFolder) -> None:
    """On object storage the log goes up too, also after a failure it must not hide."""
    try:
        folder.publish(LOG_FILE)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
        log.warning("could not copy %s to %s: %s", LOG_FILE, folder.location, exc)


def _run_in_folder(
    cfg: ExperimentConfig,
    folder: RunFolder,
    tracker: RunTracker | None,
    callbacks: Sequence[Any],
) -> dict[str, Any]:
    generated = ensure_generated(cfg) if cfg.generate is not None else None
    job = TrainingJob.prepare(cfg, generated, folder)
    if tracker is not None:
        with tracking.attached(tracker, cfg, folder, job.fingerprint, job.tags):
            return _train_and_score(job, tracker, callbacks)
    if not cfg.tracking.enabled:
        return _train_and_score(job, None, callbacks)
    with tracking.run(cfg, folder, job.fingerprint, job.tags) as own:
        return _train_and_score(job, own, callbacks)


def _train_and_score(
    job: TrainingJob, tracker: RunTracker | None, callbacks: Sequence[Any]
) -> dict[str, Any]:
    result = job.fit(tracker, callbacks)
    eval_dir = result.run_dir / "eval"
    scores = evaluate_best(job.cfg, result.best_dir, eval_dir)
    job.folder.publish("eval")
    if tracker is not None:
        _log_final(tracker, result, scores, eval_dir, job.cfg.tracking.log_model)
    return {
        **scores,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "epochs_trained": result.epochs_trained,
        "stopped_early": result.stopped_early,
        "run_dir": job.folder.location,
        "mlflow_run_id": result.mlflow_run_id,
    }


def _log_final(
    tracker: RunTracker,
    result: TrainResult,
    scores: dict[str, float],
    eval_dir: Path,
    log_model: bool,
) -> None:
    # Final scores of the selected model, apart from the per-epoch val curves.
    tracker.log_metrics({f"final/{k}": v for k, v in scores.items()}, step=result.epochs)
    tracker.set_tags({"best_epoch": result.best_epoch})
    if eval_dir.is_dir():
        tracker.client.log_artifacts(tracker.run_id, str(eval_dir), "evaluation")
    if log_model:
        uri = log_model_folder(tracker.tracking_uri, tracker.run_id, result.best_dir)
        tracker.set_tags({"model_uri": uri})
