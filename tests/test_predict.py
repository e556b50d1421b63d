"""`shiftlab predict` and `shiftlab.load_model`: the files a researcher gets for any images.

Real model folders (a random-init tiny DeepLabV3+ exported with `export_model`), real files,
the real command line; no part of the model is mocked.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from shiftlab.cli.main import main
from shiftlab.config import load_experiment
from shiftlab.config.loader import deep_merge, validate_dict
from shiftlab.data.label_spaces import get_label_space
from shiftlab.evaluate.evaluator import evaluate_checkpoint
from shiftlab.evaluate.predictor import CITYSCAPES_LABEL_IDS, Predictor, labelid_table
from shiftlab.models import create_model
from shiftlab.models.checkpoint import export_model

from train_fixtures import experiment, make_aligned

KINDS = ("trainids", "colour", "overlay")


def export_tiny(
    root: Path, data: Path, space: str = "cityscapes", pretrained: str = "none"
) -> Path:
    """A random-init tiny model exported as ``<root>/runs/tiny/best``; ``pretrained`` is only
    recorded in its config (the network is built without it, as a trained one would be)."""
    cfg = experiment(root, data, "tiny", {"name": "source_only"})
    space_obj = get_label_space(space)
    torch.manual_seed(0)
    model = create_model(cfg.model, space_obj.num_classes)
    with torch.no_grad():  # a sharper random head, so that several classes are predicted
        model.head[1].weight.mul_(20)
    recorded = validate_dict(
        deep_merge(cfg.model_dump(mode="json"), {"model": {"pretrained": pretrained}}), "tiny"
    )
    return export_model(root / "runs" / "tiny" / "best", recorded, model, space_obj, {"epoch": 1})


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, aligned dataset root with 4 night/noon val images of 32x64)."""
    root = tmp_path_factory.mktemp("predict")
    data = make_aligned(root / "data", {"train": 2, "val": 4}, ["noon", "night"])
    return export_tiny(root, data), data


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def mixed_folder(data: Path, folder: Path) -> Path:
    """png + jpg + jpeg, two sizes, a subfolder with a second ``a``, a corrupt and a truncated
    file, and a text file that is not an input."""
    night = sorted((data / "images" / "night" / "val").glob("*.png"))
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    shutil.copy(night[0], folder / "a.png")
    shutil.copy(night[1], folder / "sub" / "a.png")
    Image.open(night[2]).save(folder / "sub" / "b.JPG", quality=90)
    Image.open(night[3]).resize((48, 40)).save(folder / "c.jpeg")
    (folder / "bad.png").write_bytes(b"this is not an image")
    (folder / "cut.png").write_bytes(night[0].read_bytes()[:120])  # a header, half the pixels
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_of_mixed_images_writes_every_readable_one_and_names_the_bad(
    setup, tmp_path, capsys
):
    ckpt, data = setup
    folder = mixed_folder(data, tmp_path / "in")
    out = folder / "preds"  # inside the input folder: never read back as input
    code, stdout, err = cli(capsys, "predict", ckpt, folder, "--out", out, "--device", "cpu")
    assert code == 1  # something was skipped
    warnings = [line for line in err.splitlines() if line.startswith("shiftlab: warning:")]
    assert len(warnings) == 2
    assert any("bad.png" in w for w in warnings) and any("cut.png" in w for w in warnings)
    assert "4 image(s)" in stdout and "2 unreadable" in stdout
    space = get_label_space("cityscapes")
    for rel, size in (("a", (32, 64)), ("sub/a", (32, 64)), ("sub/b", (32, 64)), ("c", (40, 48))):
        ids = read(out / "trainids" / f"{rel}.png")
        assert ids.shape == size and ids.dtype == np.uint8 and ids.max() < space.num_classes
        assert np.array_equal(read(out / "colour" / f"{rel}.png"), space.colorize(ids))
        assert read(out / "overlay" / f"{rel}.png").shape == (*size, 3)
    assert sorted(p.name for p in (out / "trainids").rglob("*.png")) == sorted(
        ["a.png", "a.png", "b.png", "c.png"]
    )
    assert not list(out.rglob(".*.tmp"))
    code, stdout, err = cli(capsys, "predict", ckpt, folder, "--out", out, "--json")
    summary = json.loads(stdout)
    assert code == 1 and summary["total"] == 6 and summary["already_done"] == 4
    assert summary["written"] == 0 and len(summary["unreadable"]) == 2


def test_two_inputs_with_one_output_name_are_refused_before_any_work(setup, tmp_path, capsys):
    ckpt, data = setup
    folder = tmp_path / "in"
    folder.mkdir()
    image = sorted((data / "images" / "noon" / "val").glob("*.png"))[0]
    shutil.copy(image, folder / "x.png")
    Image.open(image).save(folder / "x.jpg")
    code, _, err = cli(capsys, "predict", ckpt, folder, "--out", tmp_path / "out")
    assert code == 3 and "x.png" in err and "x.jpg" in err
    assert not (tmp_path / "out" / "trainids").exists()


def test_predictions_equal_evaluate_saved_predictions(setup, tmp_path, capsys):
    ckpt, data = setup
    override = "evaluate.flip=true"
    evaluate_checkpoint(ckpt, out_dir=tmp_path / "eval", device="cpu", overrides=[override])
    saved = tmp_path / "eval" / "night" / "predictions"
    by_data, by_folder = tmp_path / "by_data", tmp_path / "by_folder"
    for out, source in (
        (by_data, ["--data", "aligned", data, "--split", "val", "--condition", "night"]),
        (by_folder, [data / "images" / "night" / "val"]),
    ):
        code, _, err = cli(
            capsys, "predict", ckpt, *source, override, "--out", out, "--device", "cpu"
        )
        assert code == 0, err
    names = sorted(p.name for p in saved.glob("*.png"))
    assert len(names) == 4
    for out in (by_data, by_folder):
        assert sorted(p.name for p in (out / "trainids").glob("*.png")) == names
        for name in names:
            assert (out / "trainids" / name).read_bytes() == (saved / name).read_bytes()


def test_a_copied_model_folder_needs_nothing_it_was_made_from(tmp_path, capsys, monkeypatch):
    data = make_aligned(tmp_path / "data", {"train": 1, "val": 2}, ["noon", "night"])
    backbone = tmp_path / "weights" / "resnet18.pth"
    backbone.parent.mkdir()
    torch.save({"unused": torch.zeros(1)}, backbone)
    original = export_tiny(tmp_path, data, pretrained=str(backbone))
    copy = tmp_path / "elsewhere" / "best"
    shutil.copytree(original, copy)
    assert load_experiment(copy / "config.yaml").model.pretrained == str(backbone)
    cache = Path(os.environ["SHIFTLAB_CACHE_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp_path / "runs")
    backbone.unlink()
    shutil.rmtree(cache)

    results = evaluate_checkpoint(copy, out_dir=tmp_path / "eval", device="cpu")
    assert 0.0 <= results["night"]["miou"] <= 1.0
    out = tmp_path / "out"
    images = data / "images" / "night" / "val"
    code, _, err = cli(capsys, "predict", copy, images, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert len(list((out / "trainids").glob("*.png"))) == 2


def test_cityscapes_format_writes_label_ids_under_the_input_names(setup, tmp_path, capsys):
    ckpt, data = setup
    night = sorted((data / "images" / "night" / "val").glob("*.png"))
    names = {
        "frankfurt/frankfurt_000000_000294_leftImg8bit": night[0],
        "lindau/lindau_000001_000019_leftImg8bit": night[1],
    }
    for rel, src in names.items():
        (tmp_path / "cs" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / "cs" / f"{rel}.png")
    out = tmp_path / "out"
    code, _, err = cli(
        capsys, "predict", ckpt, tmp_path / "cs", "--out", out, "--format", "cityscapes"
    )
    assert code == 0, err
    space = get_label_space("cityscapes")
    table = labelid_table(space)
    for rel in names:
        file = out / "labelids" / f"{rel}.png"
        # The Cityscapes server's pattern for this image: <city>_<seq>_<frame>*.png
        city, seq, frame = file.name.split("_")[:3]
        assert fnmatch.fnmatch(file.name, f"{city}_{seq}_{frame}*.png")
        ids, label_ids = read(out / "trainids" / f"{rel}.png"), read(file)
        assert np.array_equal(label_ids, table[ids])
        assert set(np.unique(label_ids)) <= set(CITYSCAPES_LABEL_IDS.values())
        assert len(np.unique(ids)) > 1  # several classes, so the mapping is really exercised
    # The table agrees with the label space's own labelIds (cityscapes.yaml: values).
    for i, entry in enumerate(space.to_dict()["classes"]):
        assert table[i] == entry["values"][0]


def test_cityscapes_format_needs_a_space_with_label_ids(tmp_path, capsys):
    data = make_aligned(tmp_path / "data", {"train": 1, "val": 1}, ["noon"])
    ckpt = export_tiny(tmp_path, data, space="falcon7")
    images = data / "images" / "noon" / "val"
    out = tmp_path / "out"
    code, _, err = cli(capsys, "predict", ckpt, images, "--out", out, "--format", "cityscapes")
    assert code == 3 and "falcon7" in err
    assert not (out / "trainids").exists()


def test_a_rerun_predicts_only_what_is_missing(setup, tmp_path, capsys):
    ckpt, data = setup
    images = data / "images" / "night" / "val"
    out = tmp_path / "out"
    assert cli(capsys, "predict", ckpt, images, "--out", out, "--device", "cpu")[0] == 0
    files = sorted(out.rglob("*.png"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    gone = out / "colour" / "val_002.png"
    gone.unlink()
    (out / "trainids" / ".val_000.png.x1y2.tmp").write_bytes(b"left by a killed run")
    code, stdout, err = cli(
        capsys, "predict", ckpt, images, "--out", out, "--device", "cpu", "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["written"] == 1 and summary["already_done"] == 3
    assert sorted(out.rglob("*.png")) == files and not list(out.rglob(".*.tmp"))
    assert gone.read_bytes() == before[gone][0]
    redone = {p for p in files if p.stem == "val_002"}
    assert all(p.stat().st_mtime_ns == before[p][1] for p in files if p not in redone)
    code, stdout, _ = cli(capsys, "predict", ckpt, images, "--out", out, "--device", "cpu")
    assert code == 0 and "predicted 0 image(s)" in stdout and "4 already predicted" in stdout


def test_ray_actor_pool_writes_the_same_bytes(setup, tmp_path, capsys, ray_local):
    ckpt, data = setup
    folder = mixed_folder(data, tmp_path / "in")
    here, pool = tmp_path / "here", tmp_path / "pool"
    code_here, _, _ = cli(capsys, "predict", ckpt, folder, "--out", here, "--device", "cpu")
    code_pool, stdout, err = cli(
        capsys, "predict", ckpt, folder, "--out", pool, "--num-workers", "1", "--json"
    )
    assert code_here == code_pool == 1  # the two unreadable files, reported by both
    assert "bad.png" in err and "cut.png" in err
    summary = json.loads(stdout)
    assert summary["workers"] == 1 and summary["written"] == 4
    files = sorted(p.relative_to(here) for p in here.rglob("*.png"))
    assert len(files) == 4 * len(KINDS)
    assert sorted(p.relative_to(pool) for p in pool.rglob("*.png")) == files
    for rel in files:
        assert (pool / rel).read_bytes() == (here / rel).read_bytes(), rel


def test_load_model_is_the_notebook_entry_point(setup):
    import shiftlab

    ckpt, data = setup
    model = shiftlab.load_model(ckpt)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device.type == expected and not model.network.training
    with torch.no_grad():
        logits = model.network(torch.rand(1, 3, 32, 64, device=model.device))["logits"]
    assert logits.shape == (1, 19, 32, 64)
    image = read(sorted((data / "images" / "night" / "val").glob("*.png"))[0])
    (pred,) = Predictor(model).predict([image])
    assert pred.shape == image.shape[:2] and pred.dtype == np.uint8
    assert yaml.safe_load((ckpt / "label_space.yaml").read_text())["name"] == "cityscapes"


def test_a_model_logged_to_mlflow_predicts_as_shiftlab_does(setup, tmp_path: Path) -> None:
    """``tracking.log_model``: MLflow's own loader gives the same train-id maps."""
    import mlflow

    from shiftlab.evaluate.mlflow_model import log_model_folder

    model_dir, data = setup
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("logged"))
    model_uri = log_model_folder(uri, run.info.run_id, model_dir)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).outputs.model_outputs[0].model_id in model_uri
    images = np.stack(
        [
            np.asarray(Image.open(p))
            for p in sorted((data / "images" / "night" / "val").glob("*.png"))
        ]
    )
    mlflow.set_tracking_uri(uri)
    try:
        served = mlflow.pyfunc.load_model(model_uri).predict(images)
    finally:
        mlflow.set_tracking_uri(None)
    expected = Predictor.from_path(model_dir).predict(list(images))
    assert len(served) == len(expected) == 4
    for a, b in zip(served, expected, strict=True):
        np.testing.assert_array_equal(a, b)
