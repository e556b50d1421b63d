"""Ctrl-C / SIGTERM: one line saying what was kept, the MLflow run KILLED, a rerun resumes.

`shiftlab train` runs in a subprocess joined to the session's Ray (as a second terminal on a
laptop would), is sent SIGTERM once its first epoch is in MLflow, and is run again.
"""

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
from mlflow.tracking import MlflowClient

from shiftlab.cli.main import main
from shiftlab.utils.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

from train_fixtures import experiment, make_aligned


def _train_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "shiftlab", "train", str(config), "--json"]


def _env(gcs: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=gcs, PYTHONUNBUFFERED="1")
    env.pop("SHIFTLAB_TRAIN_FAULT", None)
    return env


def _epochs_logged(record: Path, timeout: float, proc: subprocess.Popen) -> tuple[str, str]:
    """Wait until the run has logged an epoch; its (tracking_uri, run_id)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it was interrupted: {proc.stderr.read()}")
        if record.is_file():
            saved = json.loads(record.read_text())
            client = MlflowClient(tracking_uri=saved["tracking_uri"])
            if client.get_metric_history(saved["run_id"], "epoch"):
                return saved["tracking_uri"], saved["run_id"]
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no epoch logged in time: {proc.communicate()[1]}")


@pytest.fixture
def interrupted_config(tmp_path: Path) -> Path:
    root = make_aligned(tmp_path / "aligned", {"train": 8, "val": 4}, ["noon", "night"])
    cfg = experiment(
        tmp_path,
        root,
        "interrupted",
        {"name": "source_only"},
        train={"epochs": 8, "num_workers": 1, "cpus_per_worker": 0.5},
        tracking={"tracking_uri": f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"},
    )
    path = tmp_path / "interrupted.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_sigterm_during_train_marks_the_run_killed_and_a_rerun_resumes_it(
    ray_local, tmp_path: Path, interrupted_config: Path
) -> None:
    env = _env(ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        _train_command(interrupted_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    record = tmp_path / "runs" / "interrupted" / "mlflow_run.json"
    uri, run_id = _epochs_logged(record, 300, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_TERMINATED, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("shiftlab: terminated (SIGTERM): the run folder "), err
    assert "run the same command again" in last and "Traceback" not in err
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "KILLED"
    done = {m.step for m in client.get_metric_history(run_id, "epoch")}

    rerun = subprocess.run(
        _train_command(interrupted_config),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["mlflow_run_id"] == run_id and summary["epochs"] == 8
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_from_epoch"]) >= min(done)
    # Each epoch logged exactly once across the two processes.
    for key in ("epoch", "val_miou"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, 9)), (key, steps)


DEMO = Path(__file__).parents[1] / "experiments" / "demo.yaml"
SPACE = Path(__file__).parents[1] / "search_spaces" / "demo.yaml"


@pytest.mark.parametrize(
    ("command", "target", "kept"),
    [
        ("train", "shiftlab.train.experiment.run_experiment", "continue from the last one"),
        ("generate", "shiftlab.generate.cache.ensure_generated_report", "image written so far"),
        ("sweep", "shiftlab.sweep.driver.execute", "finished trials are kept"),
    ],
)
@pytest.mark.parametrize("signal_", [KeyboardInterrupt, Terminated])
def test_an_interrupt_says_what_was_kept(
    command: str, target: str, kept: str, signal_: type, monkeypatch, capsys, tmp_path: Path
) -> None:
    """Once a command has said what it keeps, an interrupt ends in that one line;
    exit 130 for Ctrl-C, 143 for SIGTERM."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise signal_()

    monkeypatch.setattr(target, interrupted)
    argv = [command, str(DEMO), f"output_dir={tmp_path}"]
    if command == "sweep":
        argv[2:2] = ["--space", str(SPACE)]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (EXIT_TERMINATED if signal_ is Terminated else EXIT_INTERRUPTED)
    ours = [line for line in err if line.startswith("shiftlab: ")]
    assert ours == err[-1:] and kept in err[-1], err
