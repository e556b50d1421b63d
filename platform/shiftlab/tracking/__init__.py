"""MLflow tracking: a service of the training and sweep stages.

``with tracking.run(cfg, folder, fingerprint) as tracker:`` owns a training's run (open, tag,
end); `RunTracker` is the picklable handle that Ray Train's rank 0 logs epochs through;
`shiftlab.tracking.runs` holds the nested parent/child runs of sweeps.
"""

from shiftlab.tracking.lifecycle import RUN_RECORD, attached, ended, run
from shiftlab.tracking.mlflow_run import (
    RunTracker,
    absolute_tracking_uri,
    config_params,
    default_tracking_uri,
    git_revision,
    log_run_setup,
    open_run,
    resolve_tracking_uri,
    run_exists,
)

__all__ = [
    "RUN_RECORD",
    "RunTracker",
    "absolute_tracking_uri",
    "attached",
    "config_params",
    "default_tracking_uri",
    "ended",
    "git_revision",
    "log_run_setup",
    "open_run",
    "resolve_tracking_uri",
    "run",
    "run_exists",
]
