"""MLflow tracking: one run per training run, params/tags from the driver, metrics from rank 0."""

from shiftlab.tracking.mlflow_run import (
    RunTracker,
    config_params,
    default_tracking_uri,
    git_revision,
    log_run_setup,
    open_run,
    resolve_tracking_uri,
    run_exists,
)

__all__ = [
    "RunTracker",
    "config_params",
    "default_tracking_uri",
    "git_revision",
    "log_run_setup",
    "open_run",
    "resolve_tracking_uri",
    "run_exists",
]
