"""Connecting to Ray the same way everywhere: a laptop starts a local Ray, a cluster job joins.

`connect` is the one way every stage (generation, training, sweeps) joins Ray. Safe defaults:
a local Ray binds its dashboard (and job server) to 127.0.0.1, and Ray >= 2.59 turns token
authentication on for local clusters. `FORWARDED_ENV` is the one list of the driver's settings
that Ray's worker processes must share.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Where procedural scenes and per-node copies of object-store datasets go, where Hugging
# Face and torch look for local weights, how a shipped checkout is found, and MLflow's quiet
# mode: Ray workers started by a running cluster's raylet do not have this shell's environment.
FORWARDED_ENV = (
    "SHIFTLAB_CACHE_DIR",
    "HF_HUB_OFFLINE",
    "TORCH_HOME",
    "PYTHONPATH",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
)


def forwarded_env() -> dict[str, str]:
    """``FORWARDED_ENV`` as set in this process, for a runtime_env's ``env_vars``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def connect(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True
) -> Any:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray; no-op when connected."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    # CPU-only tasks on GPU nodes must not see (and grab) every GPU.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        env = forwarded_env()
        ray.init(
            address=address,
            log_to_driver=log_to_driver,
            runtime_env={"env_vars": env} if env else None,
        )
    else:
        ray.init(
            num_cpus=num_cpus,
            dashboard_host=LOOPBACK,
            include_dashboard=True,
            log_to_driver=log_to_driver,
        )  # the dashboard: the State API Train V2 needs
    return ray.get_runtime_context()


def cluster_nodes() -> list[dict[str, Any]]:
    """Alive nodes of the connected cluster."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]
