"""Ctrl-C / SIGTERM: one line saying what was kept, the MLflow run KILLED, a rerun resumes;
two commands side by side on one machine, each with a local Ray of its own."""

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
    # ray.num_cpus=1: each command starts a local Ray of its own, side by side on 2 cores
    return [sys.executable, "-m", "shiftlab", "train", str(config), "ray.num_cpus=1", "--json"]


def _checkpoint_registered(run_dir: Path) -> bool:
    """Ray Train's controller has recorded a checkpoint in its run's snapshot (what a rerun
    restores). The worker logs the epoch to MLflow as soon as it has handed the checkpoint
    over; the controller registers it a moment later, so a signal in between loses it."""
    for snapshot in run_dir.glob("**/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("checkpoint_results"):
                return True
        except json.JSONDecodeError:  # being written
            pass
    return False


def _epochs_logged(record: Path, timeout: float, proc: subprocess.Popen) -> tuple[str, str]:
    """Wait until the run has logged an epoch and Ray Train has registered its checkpoint;
    its (tracking_uri, run_id)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it was interrupted: {proc.stderr.read()}")
        if record.is_file() and _checkpoint_registered(record.parent):
            saved = json.loads(record.read_text())
            client = MlflowClient(tracking_uri=saved["tracking_uri"])
            if client.get_metric_history(saved["run_id"], "epoch"):
                return saved["tracking_uri"], saved["run_id"]
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no epoch logged in time: {proc.communicate()[1]}")


def _config(tmp_path: Path, root: Path, name: str, epochs: int) -> Path:
    cfg = experiment(
        tmp_path,
        root,
        name,
        {"name": "source_only"},
        train={"epochs": epochs, "num_workers": 1, "cpus_per_worker": 0.5},
        tracking={"tracking_uri": f"sqlite:///{tmp_path / name}.db"},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _assert_quiet_console_and_log(tmp_path: Path, name: str, epochs: int, err: str) -> None:
    # Train's placement-group cleaner found its own Ray (it auto-detects without an address)
    assert "multiple active Ray instances" not in err
    assert "PlacementGroupCleaner" not in err and "shiftlab: error" not in err
    # The console: shiftlab's progress and epochs, not Ray Train's start-up chatter.
    assert f"epoch {epochs}/{epochs} done in" in err and "steps/s" in err
    assert "Started training worker group" not in err
    assert "Reporting training result" not in err
    log = (tmp_path / "runs" / name / "shiftlab.log").read_text()
    assert f"epoch {epochs}/{epochs} done in" in log  # the log file keeps the console's lines
    assert (tmp_path / "runs" / name / "best" / "model.safetensors").is_file()


def test_side_by_side_trainings_one_terminated_then_resumed(tmp_path: Path) -> None:
    """Two `shiftlab train` commands started together, each with a local Ray of its own (two
    terminals on a laptop). One gets SIGTERM after its first epoch: exit 143, one line saying
    what was kept, its MLflow run KILLED; the other finishes. Run again, the terminated one
    resumes the same MLflow run and logs each epoch once."""
    root = make_aligned(tmp_path / "aligned", {"train": 8, "val": 4}, ["noon", "night"])
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SHIFTLAB_TRAIN_FAULT")}
    env.update(SHIFTLAB_PROGRESS_SECONDS="0", PYTHONUNBUFFERED="1")
    configs = {"left": _config(tmp_path, root, "left", 3)}
    configs["interrupted"] = _config(tmp_path, root, "interrupted", 8)
    procs = {
        name: subprocess.Popen(
            _train_command(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name, config in configs.items()
    }
    record = tmp_path / "runs" / "interrupted" / "mlflow_run.json"
    uri, run_id = _epochs_logged(record, 600, procs["interrupted"])
    procs["interrupted"].send_signal(signal.SIGTERM)
    _, err = procs["interrupted"].communicate(timeout=180)
    assert procs["interrupted"].returncode == EXIT_TERMINATED, err
    # One line of shiftlab's own (Ray's forwarded worker lines may still arrive after it).
    ours = [line for line in err.splitlines() if line.startswith("shiftlab: ")]
    assert len(ours) == 1 and ours[0].startswith("shiftlab: terminated (SIGTERM): the run folder ")
    assert "run the same command again" in ours[0] and "Traceback" not in err
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "KILLED"
    done = {m.step for m in client.get_metric_history(run_id, "epoch")}

    _, err = procs["left"].communicate(timeout=900)
    assert procs["left"].returncode == 0, err[-5000:]
    _assert_quiet_console_and_log(tmp_path, "left", 3, err)

    rerun = subprocess.run(
        _train_command(configs["interrupted"]),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    _assert_quiet_console_and_log(tmp_path, "interrupted", 8, rerun.stderr)
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
