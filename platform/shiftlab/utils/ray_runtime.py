"""Connecting to Ray the same way everywhere: a laptop starts a local Ray, a cluster job joins.

`connect` is the one way every stage (generation, training, sweeps) joins Ray. Safe defaults:
a local Ray binds its dashboard (and job server) to 127.0.0.1, and Ray >= 2.59 turns token
authentication on for local clusters. `FORWARDED_ENV` is the one list of the driver's settings
that Ray's worker processes must share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PREEMPTION_WATCHER_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TRAIN_METRICS_VAR = "RAY_TRAIN_METRICS_ENABLED"
# Where procedural scenes and per-node copies of object-store datasets go, where Hugging
# Face and torch look for local weights, how a shipped checkout is found, MLflow's quiet
# mode and how progress is shown: Ray workers started by a running cluster's raylet do not
# have this shell's environment.
FORWARDED_ENV = (
    "SHIFTLAB_CACHE_DIR",
    "HF_HUB_OFFLINE",
    "TORCH_HOME",
    "PYTHONPATH",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
    "SHIFTLAB_PROGRESS",
    "SHIFTLAB_PROGRESS_SECONDS",
)


def forwarded_env() -> dict[str, str]:
    """``FORWARDED_ENV`` as set in this process, for a runtime_env's ``env_vars``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _submitted_job_env() -> dict[str, str]:
    """The env_vars of the runtime env ``ray job submit`` gave this driver, if any.

    Ray refuses a ray.init runtime env that names a variable the job's own already sets, so
    the submitter's values win and are not passed again.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return dict(runtime_env.get("env_vars") or {})


def _runtime_env(extra: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The runtime env every stage's Ray processes get: ``FORWARDED_ENV`` plus ``extra``."""
    job_env = _submitted_job_env()
    env = {k: v for k, v in {**forwarded_env(), **(extra or {})}.items() if k not in job_env}
    return {"env_vars": env} if env else None


def verbose() -> bool:
    """``shiftlab -v``: everything on the console, Ray's own INFO lines included."""
    return logging.getLogger("shiftlab").isEnabledFor(logging.DEBUG)


class _RayWarningsOnly(logging.Filter):
    """Ray's records below WARNING, by logger name or, for the loggers Ray names after their
    file (Train's "Reporting training result ..."), by the file they come from."""

    def __init__(self, ray_dir: str) -> None:
        super().__init__()
        self.ray_dir = ray_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not (record.name.startswith("ray") or record.pathname.startswith(self.ray_dir))


def quiet_ray_console() -> None:
    """Ray's INFO chatter (dataset plans, worker-group start-up, checkpoint paths) leaves the
    console, which shows shiftlab's progress and results; log files keep it all. ``-v`` keeps
    everything. Safe to call more than once."""
    import ray

    if verbose():
        return
    ray_dir = os.path.dirname(ray.__file__) + os.sep
    for logger in (logging.getLogger("ray"), logging.getLogger()):
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler) and not any(
                isinstance(f, _RayWarningsOnly) for f in handler.filters
            ):
                handler.addFilter(_RayWarningsOnly(ray_dir))


def data_context() -> Any:
    """Ray Data's context for a shiftlab pipeline: its own progress bars only with ``-v``
    (shiftlab shows the images done, the rate and an ETA across all actors)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose()
    return context


def connect(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True
) -> Any:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray; no-op when connected."""
    import ray

    quiet_ray_console()  # after `import ray`, which sets up Ray's own console handler
    if ray.is_initialized():
        return ray.get_runtime_context()
    # CPU-only tasks on GPU nodes must not see (and grab) every GPU.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    with _own_sigterm_handler():
        if address:
            log.info("connecting to Ray at %s", address)
            # Ray's own actors (Train's placement-group cleaner) find the cluster by
            # RAY_ADDRESS; with several Rays on one machine they cannot guess it.
            joined = {} if address == "auto" else {"RAY_ADDRESS": address}
            ray.init(address=address, log_to_driver=log_to_driver, runtime_env=_runtime_env(joined))
        else:
            _start_local(num_cpus, log_to_driver)
    return ray.get_runtime_context()


# Whether Ray was already connected when the running `shiftlab` command began (a test session's
# or a notebook's Ray). True outside a command: library calls never disconnect.
_connected_before_command = True


def begin_command() -> None:
    """Note whether Ray is connected as a `shiftlab` command begins (see `end_command_ray`)."""
    global _connected_before_command
    ray = sys.modules.get("ray")
    _connected_before_command = ray is not None and ray.is_initialized()


def end_command_ray() -> None:
    """Disconnect from the Ray this command connected to, so that nothing Ray prints comes
    after this point (a command's ``--json`` result must be its last line).

    Two things print asynchronously: the stream of Ray's processes' output and, with or without
    it, the raylet's warnings (e.g. "N PYTHON worker processes have been started"), which
    `shiftlab demo --json` once printed after its JSON line. Disconnecting flushes both and
    ends a local Ray as exit would; a Ray connected before the command began is left alone.
    """
    ray = sys.modules.get("ray")
    if not _connected_before_command and ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def _own_sigterm_handler() -> Iterator[None]:
    """Keep the command's SIGTERM handler across ray.init, which replaces it with Ray's own
    (exit 1 with no word, or a local node's teardown). shiftlab's handler ends the run the
    way Ctrl-C does (run KILLED, exit 143); a local Ray is still torn down at exit."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _start_local(num_cpus: int | None, log_to_driver: bool) -> None:
    """A local Ray of this command's own, side by side with any other on the machine.

    Ray's own actors (Train V2's placement-group cleaner) call the State API without an
    address; with two local Rays, its auto-detection fails ("Found multiple active Ray
    instances"). Every process of this job is told which dashboard is its own.
    """
    import ray

    # Ray Train's preemption watcher (one more actor process per training, polling every
    # 5 s) asks the cluster whether a node is being drained; one machine's own local Ray
    # never is. A value the user set wins.
    os.environ.setdefault(PREEMPTION_WATCHER_VAR, "0")
    # Ray Train's Prometheus metrics feed the Ray dashboard's Train view; nobody watches the
    # dashboard of a command's own Ray (its runs are in MLflow), and each run's controller and
    # workers would export them. A value the user set wins.
    os.environ.setdefault(TRAIN_METRICS_VAR, "0")
    port = _free_port()
    ray.init(
        num_cpus=num_cpus,
        dashboard_host=LOOPBACK,
        dashboard_port=port,
        include_dashboard=True,  # the dashboard: the State API Train V2 needs
        log_to_driver=log_to_driver,
        runtime_env=_runtime_env({"RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{port}"}),
    )


def cluster_nodes() -> list[dict[str, Any]]:
    """Alive nodes of the connected cluster."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]
