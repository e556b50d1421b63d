"""Training on a real local Ray with 2 DDP workers: every method, and a killed worker resumed.

Tiny on purpose (32x64 images, resnet18 DeepLabV3+ with a 16-channel decoder, 2 steps per
epoch): these tests check the plumbing (DDP, stages, checkpoints, resumption, MLflow), not
accuracy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from shiftlab.models.checkpoint import load_model, load_training_state, read_meta
from shiftlab.train import run_training
from shiftlab.train.faults import FAULT_ENV

from train_fixtures import experiment, make_aligned, make_shiftlab_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def tmp_path():
    # Outside pytest's basetemp rotation: on a machine shared by several pytest sessions, a
    # minutes-long Ray test can otherwise have its folder removed by another session.
    with tempfile.TemporaryDirectory(prefix="shiftlab-test-train-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def data() -> dict[str, Path]:
    with tempfile.TemporaryDirectory(prefix="shiftlab-test-train-data-") as tmp:
        # 8 train scenes: 4 per worker, 2 steps of batch 2 per epoch.
        root = make_aligned(
            Path(tmp) / "aligned", {"train": 8, "val": 2, "test": 2}, ["noon", "night", "fog"]
        )
        yield {"root": root, "generated": make_shiftlab_dir(Path(tmp) / "generated", root)}


def latest_checkpoint(ray_path: str) -> dict:
    dirs = sorted(p for p in Path(ray_path).glob("checkpoint_*") if p.is_dir())
    assert dirs, f"no Ray Train checkpoints under {ray_path}"
    return load_training_state(dirs[-1])


def check_exports(result, epochs: int) -> None:
    assert result.epochs == epochs
    model = load_model(result.best_dir).network
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 32, 64))["logits"]
    assert logits.shape == (1, 19, 32, 64)
    assert read_meta(result.last_dir)["epoch"] == epochs
    assert set(read_meta(result.best_dir)) >= {"epoch", "metrics", "normalization", "label_space"}
    # exports hold the model only: weights, config, label space, meta (no optimizer state)
    names = {p.name for p in result.best_dir.iterdir()}
    assert names == {"model.safetensors", "config.yaml", "label_space.yaml", "meta.json"}


def no_tracking(**kw):
    return {"tracking": {"enabled": False}, **kw}


def test_sdgpa_two_stages_rebuild_the_schedule(ray_local, tmp_path, data) -> None:
    cfg = experiment(
        tmp_path,
        data["root"],
        "sdgpa",
        {"name": "sdgpa", "stage1_epochs": 1, "stage2_epochs": 1, "zodi_weight": 0.1},
        generate={"preset": "night", "editor": {"kind": "photometric"}},
        **no_tracking(),
    )
    result = run_training(cfg, generated=data["generated"])
    check_exports(result, 2)
    state = latest_checkpoint(result.ray_path)
    assert state["stage"] == "stage2" and state["epoch"] == 2 and state["stage_epoch"] == 1
    assert state["metrics"]["train/steps"] == 2
    # Stage 2 began with a new schedule: 2 iterations counted, not the 4 of both stages.
    assert state["scheduler"]["iteration"] == 2, state["scheduler"]
    assert {"train/ce_a", "train/ce_b", "train/zodi_sim", "val_miou"} <= set(result.metrics)
    # A local Ray of one machine is never drained: no preemption watcher (an actor process
    # polling every 5 s) is started next to the workers; Ray Train's controller and workers are.
    # Nor a Ray Data manager: shiftlab's workers read their own files.
    from ray.util.state import list_actors

    classes = {a.class_name for a in list_actors(limit=10_000)}
    assert "TrainController" in classes and "RayTrainWorker" in classes, classes
    assert not classes & {"PreemptionWatcher", "DatasetManager"}, classes


@pytest.mark.parametrize(
    ("method", "extra", "expect"),
    [
        (
            {
                "name": "feature_align",
                "appearances": ["noon", "night", "fog"],
                "align_weight": 0.1,
                "align": {"layers": [0, -1]},
            },
            {},
            "train/align",
        ),
        (
            {"name": "classmix", "ema_alpha": 0.99, "pseudo_threshold": 0.5},
            {
                "data": {
                    "target_unlabelled": {"format": "aligned", "split": "train", "condition": "fog"}
                }
            },
            "train/loss_t",
        ),
        (
            {
                "name": "daformer",
                "pseudo_threshold": 0.0,  # every pixel weighs: the MIC loss cannot be 0
                "rcs": {"min_pixels": 16},
                "fd": {"min_ratio": 0.0},
                "mic": {"block_size": 8},
            },
            {
                "data": {
                    "target_unlabelled": {"format": "aligned", "split": "train", "condition": "fog"}
                }
            },
            "train/mic",
        ),
        ({"name": "offroad", "class_weights": {"road": 2.0, "sky": 0.5}}, {}, "train/dice"),
    ],
    ids=["feature_align", "classmix", "daformer_mic", "offroad"],
)
def test_method_trains_on_two_workers(ray_local, tmp_path, data, method, extra, expect) -> None:
    if "target_unlabelled" in extra.get("data", {}):
        extra["data"]["target_unlabelled"]["root"] = str(data["root"])
    cfg = experiment(
        tmp_path, data["root"], method["name"], method, train={"epochs": 1}, **no_tracking(**extra)
    )
    result = run_training(cfg)
    check_exports(result, 1)
    assert result.metrics[expect] > 0
    assert result.metrics["train/steps"] == 2
    state = latest_checkpoint(result.ray_path)
    if method["name"] in ("classmix", "daformer"):
        # The EMA teacher is part of the checkpoint and saw every optimizer step.
        assert state["method"]["step"] == 2 and "teacher" in state["method"]


DAFORMER_CARLA_MIC = {
    "name": "daformer",
    "appearances": ["noon", "night"],
    "align_weight": 0.1,
    "mix_align_weight": 0.1,
    "pseudo_threshold": 0.5,
    "rcs": {"min_pixels": 16},
    "fd": {"min_ratio": 0.0},
    "mic": {"block_size": 8},
}


def test_killed_worker_resumes_one_mlflow_run(
    ray_local, tmp_path, data, monkeypatch, capsys
) -> None:
    """Through ``shiftlab train`` (CLI -> run_experiment -> run_training -> evaluation), with
    the richest method state there is: the DAFormer family's CARLA-4AGT UDA variant (EMA
    teacher, feature-distance reference, rare-class sampling, MIC, two appearances)."""
    from shiftlab.cli.main import main

    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"epoch=1,rank=1,marker={marker}")
    root = str(data["root"])
    cfg = experiment(
        tmp_path,
        data["root"],
        "resume",
        DAFORMER_CARLA_MIC,
        data={
            "target_unlabelled": {
                "format": "aligned",
                "root": root,
                "split": "train",
                "condition": "fog",
            },
            "test": [
                {
                    "format": "aligned",
                    "root": root,
                    "split": "test",
                    "condition": "fog",
                    "name": "fog",
                }
            ],
        },
    )
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    tracking_uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                str(path),
                "train.epochs=3",
                "tracking.log_model=true",
                "--tracking-uri",
                tracking_uri,
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert marker.is_file()  # rank 1 really died in the second epoch

    assert summary["epochs"] == 3
    assert {"val_miou", "test_miou", "val/night/miou", "test/fog/miou"} <= set(summary)
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "best" / "model.safetensors").is_file() and (
        run_dir / "config.yaml"
    ).is_file()

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_ = client.get_experiment_by_name("resume")
    runs = client.search_runs([experiment_.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary["mlflow_run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    # Resumed, not restarted: each epoch was logged once, epoch 1 before the kill.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert sorted(steps) == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "val_miou")) == 3
    assert run.data.params["method.name"] == "daformer"
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.tags["pretrained"] == "false" and run.data.tags["method"] == "daformer"
    assert run.data.tags["resumed_from_epoch"] == "1"
    # Every DAFormer-family term trained on the two DDP workers.
    terms = {"train/fd", "train/mic", "train/align_source", "train/align_mixed", "train/loss_t"}
    assert terms <= set(run.data.metrics), sorted(run.data.metrics)
    assert {"final/val_miou", "final/test_miou"} <= set(run.data.metrics)
    # Per-class IoU: a curve per validation epoch and the selected model's test score.
    assert {"val/night/iou/road", "val/night/iou/sky"} <= set(run.data.metrics)
    assert {"final/test/fog/iou/road", "final/test/fog/iou/car"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val/night/iou/road")) == 3
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/fog")}
    assert {"evaluation/fog/per_class_iou.png", "evaluation/fog/confusion.png"} <= evaluation
    assert (run_dir / "mlflow_run.json").is_file()
    # tracking.log_model: the selected model is the run's logged model, in pyfunc format.
    logged = run.outputs.model_outputs
    assert len(logged) == 1 and run.data.tags["model_uri"] == f"models:/{logged[0].model_id}"
