"""One experiment end to end: generate -> train -> evaluate the selected model.

``run_experiment`` is what ``shiftlab train`` and every sweep trial call. The model is chosen
on the validation sets during training (``<run_dir>/best``); the test sets are only scored
here, after the choice, and never feed back into it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shiftlab.config import save_resolved

log = logging.getLogger(__name__)


def _numeric_summary(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{set name: evaluate_checkpoint result} -> val_miou, test_miou, <split>/<name>/miou ..."""
    summary: dict[str, float] = {}
    by_split: dict[str, list[float]] = {}
    for name, result in results.items():
        split = result.get("split", "test")
        summary[f"{split}/{name}/miou"] = float(result["miou"])
        summary[f"{split}/{name}/pixel_accuracy"] = float(result["pixel_accuracy"])
        by_split.setdefault(split, []).append(float(result["miou"]))
    for split, values in by_split.items():
        summary[f"{split}_miou"] = sum(values) / len(values)
    return summary


def evaluate_best(cfg: Any, checkpoint_dir: Path, out_dir: Path) -> dict[str, float]:
    """Score the selected checkpoint on the config's val and test sets (artifacts in out_dir)."""
    if not cfg.data.val and not cfg.data.test:
        return {}
    from shiftlab.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(
        checkpoint_dir, None, out_dir, save_predictions=cfg.evaluate.save_predictions
    )
    return _numeric_summary(results)


def run_experiment(
    cfg: Any, mlflow_run_id: str | None = None, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """Generate (if ``cfg.generate``), train on Ray Train, evaluate ``<run_dir>/best``.

    Returns the numeric summary (``val_miou``, ``test_miou``, ``val/<set>/miou``,
    ``test/<set>/miou``, ``best_epoch``, ``epochs``) plus ``run_dir`` and ``mlflow_run_id``.
    ``mlflow_run_id``: log into this (sweep child) run, which the caller then closes;
    ``callbacks``: Ray Train callbacks (``TuneReportCallback()`` inside a Tune trial).
    """
    from shiftlab.train import run_training
    from shiftlab.train.trainer import absolute_config

    cfg = absolute_config(cfg)
    if cfg.tracking.enabled:
        from shiftlab.tracking import resolve_tracking_uri

        resolve_tracking_uri(cfg)  # e.g. output_dir on s3:// without an MLflow server: fail now
    run = cfg.run_folder
    run_dir = run.path()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir / "config.yaml")
    run.publish("config.yaml")

    generated: Path | str | None = None
    if cfg.generate is not None:
        from shiftlab.generate import ensure_generated

        generated = ensure_generated(cfg)
        log.info("generated views: %s", generated)

    owns_run = mlflow_run_id is None
    result = run_training(cfg, generated, mlflow_run_id=mlflow_run_id, callbacks=callbacks, end_run=False)
    tracker = None
    if result.mlflow_run_id is not None:
        from shiftlab.tracking import RunTracker

        tracker = RunTracker(result.tracking_uri, result.mlflow_run_id)
    try:
        eval_dir = run_dir / "eval"
        scores = evaluate_best(cfg, result.best_dir, eval_dir)
        run.publish("eval")
        summary: dict[str, Any] = {
            **scores,
            "best_epoch": result.best_epoch,
            "epochs": result.epochs,
        }
        if tracker is not None:
            # Final scores of the selected model, apart from the per-epoch val curves.
            tracker.log_metrics({f"final/{k}": v for k, v in scores.items()}, step=result.epochs)
            tracker.set_tags({"best_epoch": result.best_epoch})
            if eval_dir.is_dir():
                tracker.client.log_artifacts(tracker.run_id, str(eval_dir), "evaluation")
    except BaseException:
        if tracker is not None and owns_run:
            tracker.finish("FAILED")
        raise
    if tracker is not None and owns_run:
        tracker.finish("FINISHED")
    summary["run_dir"] = run.location
    summary["mlflow_run_id"] = result.mlflow_run_id
    return summary
