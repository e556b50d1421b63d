"""Safe defaults: nothing loaded from a file runs code; servers bind loopback; data stays in its root."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from shiftlab.config import load_experiment
from shiftlab.data.formats import open_dataset_args
from shiftlab.models.checkpoint import load_training_state as load_state
from shiftlab.utils.errors import ConfigError, DataError

from cluster_helpers import free_port, listening_addresses
from layouts import rgb, save


class _Exploit:
    """Unpickling this runs a command that creates a file: the proof of code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="exp.yaml"):
        load_experiment(exp)
    assert not marker.exists()


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with open(ckpt / "state.pt", "wb") as fh:
        pickle.dump({"model": _Exploit(str(marker))}, fh)
    with pytest.raises(DataError, match="cannot be loaded safely"):
        load_state(ckpt)
    assert not marker.exists()
    # a real checkpoint with tensors and plain containers still loads
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "rng": {"pos": 1}}, ckpt / "state.pt")
    assert load_state(ckpt)["epoch"] == 3


def test_dataset_files_may_not_escape_their_root(tmp_path):
    root = tmp_path / "gen"
    outside = tmp_path / "secret.png"
    save(outside, rgb(np.random.default_rng(0), 8, 8))
    save(root / "labels" / "a.png", np.zeros((8, 8), np.uint8))
    (root / "target").mkdir(parents=True)
    (root / "target" / "a.png").symlink_to(outside)
    (root / "dataset.json").write_text(
        json.dumps({"label_space": "cityscapes", "modes": ["target"]})
    )
    with pytest.raises(DataError, match="outside its dataset root"):
        open_dataset_args("shiftlab", root).samples()


def test_local_ray_dashboard_binds_loopback(ray_local):
    import ray

    url = ray._private.worker.global_worker.node.address_info["webui_url"]
    host, port = url.split("//")[-1].split(":")
    assert host == "127.0.0.1"
    assert listening_addresses(int(port)) == {"127.0.0.1"}


def test_mlflow_ui_binds_loopback_by_default(tmp_path):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "shiftlab")
    proc = subprocess.Popen(
        [exe, "ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not listening_addresses(port):
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
