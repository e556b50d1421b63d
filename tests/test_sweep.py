"""A real sweep on a real local Ray, killed with SIGKILL and resumed: one MLflow run per trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shiftlab.tracking import runs

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"

pytestmark = pytest.mark.slow


def tiny_overrides(out: Path) -> list[str]:
    """The demo experiment shrunk to seconds per trial."""
    return [
        f"output_dir={out}",
        "data.source.layouts=4",
        "data.val.0.layouts=4",
        "data.test.0.layouts=4",
        "method.stage1_epochs=1",
        "method.stage2_epochs=1",
        "train.batch_size=2",
        "train.cpus_per_worker=0.99",
        "train.torch_threads=1",
        "evaluate.overlays=0",
    ]


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shiftlab", "sweep", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def child_runs(uri: str) -> list:
    client = runs.client_for(uri)
    out = []
    for exp in client.search_experiments():
        out += [
            r for r in client.search_runs([exp.experiment_id]) if runs.PARENT_TAG in r.data.tags
        ]
    return out


def run_until_first_trial_finishes(cmd: list[str], log, cwd: Path, out: Path, uri: str) -> list:
    """Start the sweep, wait for a FINISHED trial run, then SIGKILL the driver."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=cwd)
    finished: list = []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            if not (out / "mlflow.db").exists():
                continue
            try:
                finished = [r for r in child_runs(uri) if r.info.status == "FINISHED"]
            except Exception:  # noqa: BLE001 - the store may be mid-migration on first use
                continue
            if finished:
                break
        assert proc.poll() is None, (
            f"the sweep ended before it could be killed:\n{Path(log.name).read_text()[-3000:]}"
        )
        assert finished, "no trial finished in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return finished


def test_killed_sweep_resumes_without_duplicate_runs(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    space = tmp_path / "space.yaml"
    space.write_text(
        # Two trials are enough: the first finishes, the driver dies, the resume runs only the other.
        yaml.safe_dump({"parameters": {"method.zodi_weight": {"grid": [0.0, 0.1]}}})
    )
    uri = f"sqlite:///{out / 'mlflow.db'}"
    with open(tmp_path / "first.log", "w") as log:
        finished = run_until_first_trial_finishes(
            sweep_cmd(
                str(DEMO),
                "--space",
                str(space),
                "--name",
                "killme",
                "--max-concurrent",
                "1",
                *tiny_overrides(out),
            ),
            log,
            tmp_path,
            out,
            uri,
        )
    time.sleep(3)  # Ray's processes share the driver's fate; let them go
    first = finished[0]
    run_dir = out / "killme"
    state = json.loads((run_dir / "sweep.json").read_text())
    assert state["status"] == "running"

    resumed = subprocess.run(
        sweep_cmd("--resume", str(run_dir)),
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    children = child_runs(uri)
    keys = [r.data.tags[runs.TAG_KEY] for r in children]
    assert sorted(keys) == ["c00-sx", "c01-sx"], keys  # exactly one run per trial
    assert all(r.data.tags[runs.PARENT_TAG] == state["parent_run_id"] for r in children)
    assert {r.info.status for r in children} == {"FINISHED"}
    again = next(r for r in children if r.info.run_id == first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not run again
    for r in children:
        assert "final/val_miou" in r.data.metrics, r.info.run_name  # every trial ran to the end
        assert r.data.params["seed"] == "0" and "method.zodi_weight" in r.data.params
    client = runs.client_for(uri)
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    board = json.loads((run_dir / "leaderboard.json").read_text())
    assert len(board["rows"]) == 2 and all(row["mean"] is not None for row in board["rows"])
    assert "zodi_weight" in resumed.stdout  # the leaderboard is printed

    compare = subprocess.run(
        [sys.executable, "-m", "shiftlab", "compare", "killme", "--tracking-uri", uri, "--json"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert compare.returncode == 0, compare.stderr
    table = json.loads(compare.stdout)
    assert [r["config_id"] for r in table["rows"]] == [r["config_id"] for r in board["rows"]]
    assert table["differing"] == ["method.zodi_weight"]

    # Ranked by one class of the test set (the selected models' per-class IoU in MLflow).
    by_road = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftlab",
            "compare",
            "killme",
            "--tracking-uri",
            uri,
            "--json",
            "--metric",
            "test/night_test/iou/road",
        ],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert by_road.returncode == 0, by_road.stderr
    ranked = json.loads(by_road.stdout)
    means = [r["mean"] for r in ranked["rows"]]
    assert "test/night_test/iou/road" in ranked["ranking"] and None not in means
    assert means == sorted(means, reverse=True)
