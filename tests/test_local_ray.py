"""Two shiftlab commands side by side on one machine, each with a local Ray of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from train_fixtures import experiment, make_aligned


def _config(tmp_path: Path, root: Path, name: str) -> Path:
    cfg = experiment(
        tmp_path,
        root,
        name,
        {"name": "source_only"},
        train={"epochs": 3, "num_workers": 1, "cpus_per_worker": 0.5},
        tracking={"tracking_uri": f"sqlite:///{tmp_path / name}.db"},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_two_trainings_started_together_both_finish(tmp_path: Path) -> None:
    root = make_aligned(tmp_path / "aligned", {"train": 8, "val": 4}, ["noon", "night"])
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SHIFTLAB_TRAIN_FAULT")}
    env["SHIFTLAB_PROGRESS_SECONDS"] = "0"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shiftlab",
                "train",
                str(_config(tmp_path, root, name)),
                "ray.num_cpus=1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name in ("left", "right")
    ]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-5000:]
        # Train's placement-group cleaner found its own Ray (it auto-detects without an address)
        assert "multiple active Ray instances" not in out + err
        assert "PlacementGroupCleaner" not in err and "shiftlab: error" not in err
        # The console: shiftlab's progress and epochs, not Ray Train's start-up chatter.
        assert "epoch 3/3 done in" in err and "steps/s" in err
        assert "Started training worker group" not in err
        assert "Reporting training result" not in err
    for name in ("left", "right"):
        log = (tmp_path / "runs" / name / "shiftlab.log").read_text()
        assert "epoch 3/3 done in" in log  # the run's log file keeps the console's lines
        assert (tmp_path / "runs" / name / "best" / "model.safetensors").is_file()
