from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# test helpers (layouts.py) are importable from every test module
sys.path.insert(0, str(Path(__file__).parent))

import s3_server  # noqa: E402

# Before any Ray process starts: Ray workers inherit the S3 endpoint and credentials.
S3_PORT = s3_server.configure_environment()

# One intra-op thread in the test process: Ray workers use the other core, and on a busy
# 2-core machine torch's default thread pool made small models 20-40x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One real local Ray for the whole test session (start-up costs seconds).

    Tests that need a Ray of their own shape (multi-node, killed drivers) start their own
    cluster in a subprocess instead of re-initialising this one.
    """
    import ray

    from shiftlab.utils.ray_runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2, log_to_driver=False)  # the same defaults users get
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Procedural scenes and generated sets go to a per-session cache, never ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "shiftlab-cache"
    monkeypatch.setenv("SHIFTLAB_CACHE_DIR", str(cache))


@pytest.fixture(scope="session")
def s3_bucket():
    """``s3://<bucket>`` on a local S3 server shared by the session's object-storage tests."""
    server = s3_server.start(S3_PORT)
    yield f"s3://{s3_server.BUCKET}"
    server.stop()


# The weights variables real experiments require (shipped experiment files name them).
WEIGHTS_VARIABLES = (
    "RESNET50_WEIGHTS",
    "RESNET101_WEIGHTS",
    "DINOV2_WEIGHTS",
    "MIT_B5_WEIGHTS",
    "SD2_MODEL",
)


@pytest.fixture
def weights_env(tmp_path, monkeypatch):
    """Every weights variable of the shipped experiments set to a (placeholder) local path."""
    paths = {}
    for name in WEIGHTS_VARIABLES:
        path = tmp_path / "weights" / name.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
        monkeypatch.setenv(name, str(path))
        paths[name] = path
    return paths
