from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# test helpers (layouts.py) are importable from every test module
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One real local Ray for the whole test session (start-up costs seconds).

    Tests that need a Ray of their own shape (multi-node, killed drivers) start their own
    cluster in a subprocess instead of re-initialising this one.
    """
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,  # the State API behind Train V2's cleanup needs it
            log_to_driver=False,
            _temp_dir=None,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Procedural scenes and generated sets go to a per-session cache, never ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "shiftlab-cache"
    monkeypatch.setenv("SHIFTLAB_CACHE_DIR", str(cache))
