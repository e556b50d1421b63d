"""A real sweep on a real local Ray and a real S3 server, killed with SIGKILL and resumed from
its URI: one MLflow run per trial, every file on object storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from shiftlab.tracking import runs

import s3_server
from train_fixtures import tiny_demo_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"

pytestmark = pytest.mark.slow


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


def run_until_first_trial_finishes(cmd: list[str], log, cwd: Path, db: Path) -> list:
    """Start the sweep, wait for a FINISHED trial run, then SIGKILL the driver."""
    uri = f"sqlite:///{db}"
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=cwd)
    finished: list = []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            if not db.exists():
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


def command_json(capsys, main, *argv: str) -> dict:
    """Run ``shiftlab <argv> --json`` in this process; its JSON result (the last line)."""
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _key(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[1]


# One sweep, run once, checks both ends of the driver's life: killed with SIGKILL after its
# first trial (resumed without running anything twice) and kept entirely on object storage
# (generated set, trial folders, Ray Train checkpoints, MLflow artifacts, Tune state,
# sweep.json, leaderboard), resumed from its URI. Two sweeps of two trainings each were the
# suite's slowest tests; each check below is one they made.
def test_killed_sweep_on_s3_resumes_from_its_uri_without_duplicate_runs(
    ray_local, s3_bucket, tmp_path: Path, capsys, monkeypatch
) -> None:
    from shiftlab.cli.main import main
    from shiftlab.sweep.driver import resume_sweep
    from shiftlab.sweep.state import SweepState

    prefix = f"{s3_bucket}/{uuid.uuid4().hex[:10]}"
    uri = f"{prefix}/sweeps/killme"
    base = _key(uri)
    space = tmp_path / "space.yaml"
    space.write_text(
        # Two trials are enough: the first finishes, the driver dies, the resume runs only the other.
        yaml.safe_dump({"parameters": {"method.zodi_weight": {"grid": [0.0, 0.1]}}})
    )
    db = tmp_path / "mlflow.db"
    tracking = f"sqlite:///{db}"
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
                "--tracking-uri",
                tracking,
                *tiny_demo_sweep(f"{prefix}/sweeps"),
            ),
            log,
            tmp_path,
            db,
        )
    time.sleep(3)  # Ray's processes share the driver's fate; let them go
    first = finished[0]
    state = json.loads(s3_server.read(f"{base}/sweep.json"))
    assert state["status"] == "running"

    # The resume, the comparisons and the evaluation run the command line in this process, on
    # the session's Ray (a command's own Ray and its --json last line are tested elsewhere).
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["sweep", "--resume", uri]) == 0
    resumed = capsys.readouterr().out
    children = child_runs(tracking)
    keys = [r.data.tags[runs.TAG_KEY] for r in children]
    assert sorted(keys) == ["c00-sx", "c01-sx"], keys  # exactly one run per trial
    assert all(r.data.tags[runs.PARENT_TAG] == state["parent_run_id"] for r in children)
    assert {r.info.status for r in children} == {"FINISHED"}
    again = next(r for r in children if r.info.run_id == first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not run again
    for r in children:
        assert "final/val_miou" in r.data.metrics, r.info.run_name  # every trial ran to the end
        assert r.data.params["seed"] == "0" and "method.zodi_weight" in r.data.params
    client = runs.client_for(tracking)
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    board = json.loads(s3_server.read(f"{base}/leaderboard.json"))
    assert len(board["rows"]) == 2 and all(row["mean"] is not None for row in board["rows"])
    assert "zodi_weight" in resumed  # the leaderboard is printed

    table = command_json(capsys, main, "compare", "killme", "--tracking-uri", tracking)
    assert [r["config_id"] for r in table["rows"]] == [r["config_id"] for r in board["rows"]]
    assert table["differing"] == ["method.zodi_weight"]

    # Ranked by one class of the test set (the selected models' per-class IoU in MLflow).
    ranked = command_json(
        capsys,
        main,
        "compare",
        "killme",
        "--tracking-uri",
        tracking,
        "--metric",
        "test/night_test/iou/road",
    )
    means = [r["mean"] for r in ranked["rows"]]
    assert "test/night_test/iou/road" in ranked["ranking"] and None not in means
    assert means == sorted(means, reverse=True)

    check_sweep_objects(uri, prefix, db, tmp_path)
    check_exported_model_evaluates_in_place(uri, capsys, main)

    ended = {r.info.run_id: r.info.end_time for r in child_runs(tracking)}
    assert len(ended) == 2
    # A finished sweep resumed by its URI runs nothing twice.
    finished_again = resume_sweep(uri)
    assert finished_again.errors == 0 and len(finished_again.board.rows) == 2
    assert {r.info.run_id: r.info.end_time for r in child_runs(tracking)} == ended
    # Resumed again by its URI, now with Tune's state lost (a driver killed after its trials
    # finished but before Tune saved): the trials see their FINISHED runs and report them
    # instead of training again, and the leaderboard is the one the first resume wrote.
    for key in s3_server.keys(f"{base}/tune/"):
        s3_server.delete(key)
    again = resume_sweep(uri)
    assert again.location == uri and again.errors == 0 and again.trials == 2
    assert [r.stats() for r in again.board.rows] == [(r["mean"], r["std"]) for r in board["rows"]]
    assert {r.info.run_id: r.info.end_time for r in child_runs(tracking)} == ended
    assert {r.info.status for r in child_runs(tracking)} == {"FINISHED"}
    assert SweepState.load(uri).status == "finished"


def _trial_models(objects: set[str], base: str) -> list[str]:
    return sorted(
        k
        for k in objects
        if k.startswith(f"{base}/trials/") and k.endswith("best/model.safetensors")
    )


def check_sweep_objects(uri: str, prefix: str, db: Path, cwd: Path) -> None:
    """What a finished sweep on S3 left there, read back with boto3."""
    from shiftlab.sweep.state import SweepState

    base = _key(uri)
    objects = set(s3_server.keys(base + "/"))
    assert {f"{base}/sweep.json", f"{base}/leaderboard.json", f"{base}/leaderboard.txt"} <= objects
    assert any(k.startswith(f"{base}/tune/") for k in objects)  # Tune wrote its state there
    trial_models = _trial_models(objects, base)
    assert len(trial_models) == 2, sorted(objects)
    assert SweepState.load(uri).status == "finished"
    # Generated views went to <output_dir>/generated on S3, not to a local folder.
    assert any(
        k.endswith("dataset.json") for k in s3_server.keys(f"{_key(prefix)}/sweeps/generated/")
    )
    for where in (Path("s3:"), cwd / "s3:"):
        assert not where.exists(), where

    # One trial's run directory: what training, Ray Train and evaluation wrote there.
    trial = trial_models[0].removesuffix("/best/model.safetensors")
    rel = {k[len(trial) + 1 :] for k in objects if k.startswith(trial + "/")}
    assert {
        "config.yaml",
        "mlflow_run.json",
        "best/model.safetensors",
        "best/config.yaml",
        "last/model.safetensors",
        "eval/summary.json",
    } <= rel, sorted(rel)
    assert any(r.startswith("ray/train-") and "/checkpoint_" in r for r in rel), sorted(rel)
    saved = yaml.safe_load(s3_server.read(f"{trial}/config.yaml"))
    assert saved["output_dir"] == f"{uri}/trials"
    # Its MLflow artifacts (evaluation files) are objects under <output_dir>/mlartifacts.
    run_id = json.loads(s3_server.read(f"{trial}/mlflow_run.json"))["run_id"]
    run = runs.client_for(f"sqlite:///{db}").get_run(run_id)
    assert run.info.artifact_uri.startswith(f"{prefix}/sweeps/mlartifacts/")
    artifacts = s3_server.keys(_key(run.info.artifact_uri) + "/")
    assert any(k.endswith("evaluation/summary.json") for k in artifacts), sorted(artifacts)


def check_exported_model_evaluates_in_place(uri: str, capsys, main) -> None:
    """`shiftlab evaluate` takes the URI of an exported model and publishes its eval/ there."""
    base = _key(uri)
    trial = _trial_models(set(s3_server.keys(base + "/")), base)[0]
    trial = trial.removesuffix("/best/model.safetensors")
    best = f"s3://{s3_server.BUCKET}/{trial}/best"
    printed = command_json(capsys, main, "evaluate", best, "--no-predictions")
    assert set(printed) >= {"night_val", "night_test"}
    assert f"{trial}/best/eval/summary.json" in s3_server.keys(f"{trial}/best/eval/")
