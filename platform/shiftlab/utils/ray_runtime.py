"""Connecting to Ray the same way everywhere: a laptop starts a local Ray, a cluster job joins.

Safe defaults: a local Ray binds its dashboard (and job server) to 127.0.0.1, and Ray >= 2.59
turns token authentication on for local clusters.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# The driver's settings that Ray worker processes (started from the raylet's environment)
# must share: where procedural scenes and per-node copies of object-store datasets go.
FORWARDED_ENV = ("SHIFTLAB_CACHE_DIR",)


def forwarded_env() -> dict[str, str]:
    """``FORWARDED_ENV`` as set in this process, for a runtime_env's ``env_vars``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray; no-op when connected."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    # CPU-only tasks on GPU nodes must not see (and grab) every GPU.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=kwargs.pop("log_to_driver", True), **kwargs)
    else:
        kwargs.setdefault("dashboard_host", LOOPBACK)
        kwargs.setdefault("include_dashboard", True)  # the State API that Train V2 needs
        ray.init(num_cpus=num_cpus, **kwargs)
    return ray.get_runtime_context()


def cluster_nodes() -> list[dict]:
    """Alive nodes of the connected cluster."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]
