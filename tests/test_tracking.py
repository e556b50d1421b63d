"""MLflow tracking on a real sqlite store: params, tags, artifacts, attaching to runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from shiftlab.tracking import (
    RunTracker,
    config_params,
    default_tracking_uri,
    log_run_setup,
    open_run,
)

from train_fixtures import experiment, make_aligned


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("track")
    root = make_aligned(tmp / "data", {"train": 1}, ["noon"])
    # A description longer than MLflow's 6000-character param limit.
    return experiment(
        tmp,
        root,
        "tracked",
        {"name": "source_only"},
        description="x" * 7000,
        tracking={"tags": {"team": "seg"}},
    )


def test_run_setup_logs_params_tags_and_config(cfg, monkeypatch) -> None:
    from shiftlab.tracking import mlflow_run

    monkeypatch.setattr(mlflow_run, "PARAMS_PER_BATCH", 10)  # every param over several batches
    tracker = open_run(cfg)
    assert tracker.tracking_uri == default_tracking_uri(cfg.output_dir)
    assert tracker.tracking_uri.startswith("sqlite:////")
    log_run_setup(tracker, cfg, {"data_cache_keys": "abc"})
    tracker.log_metrics({"val_miou": 0.25, "epoch": 1, "note": "text is skipped"}, step=1)
    tracker.log_metrics({"val_miou": 0.5, "epoch": 2}, step=2)
    tracker.end()

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    params = run.data.params
    flat = config_params(cfg)
    assert len(flat) > 50
    assert params == flat
    assert params["method.name"] == "source_only" and params["optim.lr"] == "0.01"
    assert len(params["description"]) == 6000 and params["description"].endswith("[truncated]")
    tags = run.data.tags
    assert tags["method"] == "source_only" and tags["seed"] == "0"
    assert (
        tags["pretrained"] == "false" and tags["team"] == "seg" and tags["data_cache_keys"] == "abc"
    )
    history = client.get_metric_history(tracker.run_id, "val_miou")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    assert "note" not in run.data.metrics
    assert run.info.status == "FINISHED"

    experiment_ = client.get_experiment(run.info.experiment_id)
    assert experiment_.name == "tracked"
    assert (
        experiment_.artifact_location == (Path(cfg.output_dir).resolve() / "mlartifacts").as_uri()
    )
    config_file = Path(
        client.download_artifacts(tracker.run_id, "config.yaml", str(Path(cfg.output_dir) / "dl"))
    )
    assert yaml.safe_load(config_file.read_text())["name"] == "tracked"


def test_attach_to_existing_run_keeps_its_params(cfg) -> None:
    uri = default_tracking_uri(cfg.output_dir)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked") or client.get_experiment(
        client.create_experiment("tracked")
    )
    run = client.create_run(exp.experiment_id)
    # A sweep logged this param first (with a value of its own); re-logging would be an error.
    client.log_param(run.info.run_id, "optim.lr", "0.02")
    tracker = open_run(cfg, run_id=run.info.run_id)
    assert isinstance(tracker, RunTracker) and tracker.run_id == run.info.run_id
    log_run_setup(tracker, cfg, {})
    params = client.get_run(run.info.run_id).data.params
    assert params["optim.lr"] == "0.02" and params["method.name"] == "source_only"
    # The handle survives pickling into a worker process.
    import pickle

    clone = pickle.loads(pickle.dumps(tracker))
    clone.log_metrics({"train/loss": 1.5}, step=3)
    assert client.get_run(run.info.run_id).data.metrics["train/loss"] == 1.5
