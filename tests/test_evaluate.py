"""Inference (TTA, sliding window, suppression), checkpoint evaluation and `shiftlab evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shiftlab.cli.main import main
from shiftlab.config.loader import validate_dict
from shiftlab.config.run import EvaluateConfig
from shiftlab.data.formats import open_dataset_args
from shiftlab.data.label_spaces import get_label_space
from shiftlab.evaluate.evaluator import evaluate_checkpoint, evaluate_model
from shiftlab.evaluate.inference import predict_logits, scaled_size
from shiftlab.models import create_model
from shiftlab.models.checkpoint import export_model, load_model
from shiftlab.utils.errors import ConfigError

from layouts import CS_IDS, make_cityscapes, make_gta5, rgb, save
from layouts import labels as labels_of

K = 5


class SymmetricConv(nn.Module):
    """A 3x3 conv whose kernels are mirror-symmetric left-right: exactly flip-equivariant."""

    def __init__(self, k: int = K) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_((w + torch.flip(w, dims=[3])) / 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.conv(x)}


class Pointwise(nn.Module):
    """A 1x1 conv: each pixel's logits depend on that pixel only (any window gives the same)."""

    def __init__(self, k: int = K, bias: list[float] | None = None) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, k, 1)
        if bias is not None:
            with torch.no_grad():
                self.conv.bias.copy_(torch.tensor(bias))
        self.seen: list[tuple[int, int]] = []  # (H, W) of each forward
        self.batches: list[int] = []  # its batch size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((x.shape[-2], x.shape[-1]))
        self.batches.append(x.shape[0])
        return {"logits": self.conv(x)}


class NotFlipEquivariant(nn.Module):
    """Logits grow from left to right: flip TTA must change them."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(0, 1, x.shape[-1]).view(1, 1, 1, -1)
        return {"logits": x[:, :1].repeat(1, K, 1, 1) * ramp}


def image(h: int = 40, w: int = 56) -> list[np.ndarray]:
    """Two uint8 RGB images: what inference takes (it resizes and normalises them itself)."""
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)]


def test_flip_tta_of_flip_equivariant_model_equals_no_tta():
    model, x = SymmetricConv().eval(), image()
    plain = predict_logits(model, x, EvaluateConfig(), K)
    flipped = predict_logits(model, x, EvaluateConfig(flip=True), K)
    torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)
    # ...and a model that is not flip-equivariant is changed by it (the test can fail)
    other = NotFlipEquivariant()
    assert not torch.allclose(
        predict_logits(other, x, EvaluateConfig(flip=True), K),
        predict_logits(other, x, EvaluateConfig(), K),
    )


def test_sliding_window_equal_to_image_is_whole_image_inference():
    model, x = SymmetricConv().eval(), image()
    whole = predict_logits(model, x, EvaluateConfig(), K)
    windowed = predict_logits(model, x, EvaluateConfig(window=(40, 56)), K)
    assert torch.equal(windowed, whole)
    # overlapping windows (stride < window, last window flush with the border) are averaged:
    # for a pointwise model every window agrees, so the mean is the whole-image result
    pw = Pointwise().eval()
    expect = predict_logits(pw, x, EvaluateConfig(), K)
    pw.seen.clear()
    pw.batches.clear()
    got = predict_logits(pw, x, EvaluateConfig(window=(24, 32), window_stride=(10, 20)), K)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-6)
    # rows 0,10,16 x cols 0,20,24 for each of the 2 images, batched 8 windows per forward
    assert set(pw.seen) == {(24, 32)} and sum(pw.batches) == 3 * 3 * 2 and len(pw.batches) == 2


def test_sliding_window_is_not_whole_image_for_a_context_model():
    model, x = SymmetricConv().eval(), image()
    whole = predict_logits(model, x, EvaluateConfig(), K)
    windowed = predict_logits(model, x, EvaluateConfig(window=(20, 28), window_stride=(20, 28)), K)
    assert not torch.allclose(windowed, whole)  # zero padding at window borders differs


def test_absent_class_suppression_never_predicts_the_class():
    model = Pointwise(bias=[0.0, 50.0, 0.0, 0.0, 0.0]).eval()  # class 1 wins everywhere
    names = ["a", "b", "c", "d", "e"]
    x = image()
    assert (predict_logits(model, x, EvaluateConfig(), K).argmax(1) == 1).all()
    logits = predict_logits(model, x, EvaluateConfig(absent_classes=["b"], flip=True), K, names)
    pred = logits.argmax(1)
    assert not (pred == 1).any()
    assert torch.isneginf(logits[:, 1]).all() and torch.isfinite(logits[:, [0, 2, 3, 4]]).all()
    with pytest.raises(ConfigError, match="no class 'zebra'"):
        predict_logits(model, x, EvaluateConfig(absent_classes=["zebra"]), K, names)
    with pytest.raises(ConfigError, match="every class"):
        predict_logits(model, x, EvaluateConfig(absent_classes=names), K, names)


def test_multi_scale_sizes_are_multiples_of_32_and_output_at_input_size():
    model = Pointwise().eval()
    x = image(100, 150)
    logits = predict_logits(model, x, EvaluateConfig(scales=[0.75, 1.0, 1.25], flip=True), K)
    assert logits.shape == (2, K, 100, 150)
    scaled = [s for s in model.seen if s != (100, 150)]
    assert len(model.seen) == 3 and len(scaled) == 2  # image + mirror run as one batch
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in scaled)
    assert scaled_size((100, 150), 0.75, 32) == (64, 128)  # 75 -> 64, 112.5 -> 128
    assert scaled_size((540, 960), 1.25, 32) == (672, 1216)  # 675 -> 672, 1200 (37.5 x 32) -> 1216
    # a fixed evaluation size: the model sees it, the logits come back at the input size
    model.seen.clear()
    logits = predict_logits(model, x, EvaluateConfig(size=(64, 128)), K)
    assert model.seen == [(64, 128)] and logits.shape == (2, K, 100, 150)


# -- checkpoints --------------------------------------------------------------------------------
def test_evaluate_model_batches_images_of_different_sizes(tmp_path):
    labels = make_gta5(tmp_path, n=4, h=16, w=24)
    # one sample of another size: batches are split where the size changes
    rng = np.random.default_rng(9)
    big = labels_of(rng, 20, 30, CS_IDS)
    save(tmp_path / "images" / "00003.png", rgb(rng, 20, 30))
    save(tmp_path / "labels" / "00003.png", big, palette=True)
    labels["00003"] = big
    reader = open_dataset_args("gta5", tmp_path, split="all")
    model = Pointwise(19).train()
    res = evaluate_model(
        model, reader, EvaluateConfig(batch_size=3), out_dir=tmp_path / "o", save_predictions=True
    )
    assert model.training  # restored
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    decoded = [reader.label_space.decode(lab) for lab in labels.values()]
    assert metrics["num_pixels"] == sum(int((d != 255).sum()) for d in decoded)
    assert np.asarray(Image.open(tmp_path / "o" / "predictions" / "00003.png")).shape == (20, 30)
    assert res["role"] == "val" and res["split"] == "all" and 0.0 <= res["miou"] <= 1.0


def tiny_experiment(root: Path, gta_root: Path) -> dict:
    return {
        "name": "tiny_eval",
        "data": {
            "source": {"format": "cityscapes", "root": str(root), "split": "train"},
            "val": [{"format": "cityscapes", "root": str(root), "split": "val", "name": "cs_val"}],
            "test": [{"format": "gta5", "root": str(gta_root), "split": "all", "name": "gta_test"}],
        },
        "model": {
            "name": "deeplabv3plus",
            "backbone": "resnet18",
            "output_stride": 32,
            "pretrained": "none",
            "decoder_channels": 16,
            "low_level_channels": 8,
        },
        "method": {"name": "source_only"},
        "evaluate": {"overlays": 2, "batch_size": 2},
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp_path = tmp_path_factory.mktemp("ckpt")
    cs, gta = tmp_path / "cs", tmp_path / "gta"
    make_cityscapes(cs, "val", h=32, w=64)
    make_gta5(gta, n=3, h=32, w=48)
    cfg = validate_dict(tiny_experiment(cs, gta), "tiny")
    torch.manual_seed(0)
    model = create_model(cfg.model, 19)
    with torch.no_grad():  # a sharper random head, so that several classes are predicted
        model.head[1].weight.mul_(20)
    ckpt = export_model(tmp_path / "ckpt", cfg, model, get_label_space("cityscapes"), {"epoch": 1})
    return ckpt, cs, gta


def run_cli(capsys, *argv: str) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_evaluate_cli_agrees_with_score_on_saved_predictions(checkpoint, tmp_path, capsys):
    ckpt, cs, gta = checkpoint
    out = tmp_path / "eval"
    res = run_cli(capsys, "evaluate", str(ckpt), "--out", str(out), "--json", "--device", "cpu")
    assert set(res) == {"cs_val", "gta_test"}
    assert res["cs_val"]["role"] == "val" and res["gta_test"]["role"] == "test"
    assert (
        res["cs_val"]["split"] == "val" and res["gta_test"]["split"] == "all"
    )  # the datasets' own
    for name, fmt, root, split in (
        ("cs_val", "cityscapes", cs, "val"),
        ("gta_test", "gta5", gta, "all"),
    ):
        preds = out / name / "predictions"
        scored = run_cli(
            capsys, "score", fmt, str(root), "--split", split, "--predictions", str(preds), "--json"
        )
        assert abs(scored["miou"] - res[name]["miou"]) < 1e-9
        assert scored["per_class"].keys() == res[name]["per_class"].keys()
        for cls, v in scored["per_class"].items():
            mine = res[name]["per_class"][cls]
            assert (v is None and mine is None) or abs(v - mine) < 1e-9
        assert abs(scored["pixel_accuracy"] - res[name]["pixel_accuracy"]) < 1e-9
        predicted = {
            int(v) for p in preds.glob("*.png") for v in np.unique(np.asarray(Image.open(p)))
        }
        assert len(predicted) >= 2  # a non-trivial prediction

    # the artifacts: full-size uint8 predictions, tables, confusion plot, overlays, metrics.json
    reader = open_dataset_args("cityscapes", cs, split="val")
    d = out / "cs_val"
    for s in reader.samples():
        pred = np.asarray(Image.open(d / "predictions" / f"{s.id}.png"))
        assert pred.dtype == np.uint8 and pred.shape == (32, 64) and pred.max() < 19
    rows = list(csv.DictReader((d / "per_class_iou.csv").open()))
    assert [r["class"] for r in rows] == list(reader.label_space.class_names)
    assert "| **mIoU** |" in (d / "per_class_iou.md").read_text()
    assert Image.open(d / "confusion.png").format == "PNG"
    overlays = sorted((d / "overlays").glob("*.png"))
    assert len(overlays) == 2
    assert np.asarray(Image.open(overlays[0])).shape == (32, 3 * 64 + 8, 3)
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and metrics["role"] == "val" and metrics["split"] == "val"
    assert np.asarray(metrics["confusion"]).sum() == metrics["num_pixels"]
    assert json.loads((out / "summary.json").read_text()).keys() == res.keys()


def test_evaluate_cli_given_dataset_and_overrides(checkpoint, tmp_path, capsys):
    ckpt, cs, _ = checkpoint
    out = tmp_path / "e2"
    res = run_cli(
        capsys,
        "evaluate",
        str(ckpt),
        "--data",
        "cityscapes",
        str(cs),
        "--split",
        "val",
        "--out",
        str(out),
        "--json",
        "--no-predictions",
        "--device",
        "cpu",
        "evaluate.flip=true",
        "evaluate.overlays=1",
    )
    # a dataset the config does not validate on is a test set, whatever its split is called
    assert list(res) == ["cityscapes/val"] and res["cityscapes/val"]["role"] == "test"
    assert res["cityscapes/val"]["split"] == "val"
    d = out / "cityscapes_val"
    assert not (d / "predictions").exists()
    assert len(list((d / "overlays").glob("*.png"))) == 1
    assert json.loads((d / "metrics.json").read_text())["evaluate"]["flip"] is True
    # an override that is not a valid config value names the key
    code = main(["evaluate", str(ckpt), "--device", "cpu", "evaluate.scales=[]"])
    assert code == 3
    assert "evaluate.scales" in capsys.readouterr().err


def test_label_space_mismatch_is_a_config_error(checkpoint):
    ckpt, cs, _ = checkpoint
    from shiftlab.config.data import DatasetSpec

    spec = DatasetSpec(format="cityscapes", root=str(cs), split="val", label_space="falcon7")
    with pytest.raises(ConfigError, match="falcon7"):
        evaluate_checkpoint(ckpt, [spec], out_dir=ckpt.parent / "x", device="cpu")


def test_evaluate_model_restores_train_mode_and_matches_manual_confusion(checkpoint):
    ckpt, cs, _ = checkpoint
    loaded = load_model(ckpt)
    model, cfg = loaded.network, loaded.config
    model.train()
    reader = open_dataset_args("cityscapes", cs, split="val")
    res = evaluate_model(model, reader, cfg.evaluate, device="cpu")
    assert model.training
    # independent numpy IoU over the whole set
    model.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    tp = np.zeros(19)
    fp = np.zeros(19)
    fn = np.zeros(19)
    with torch.no_grad():
        for s in reader.samples():
            img = (reader.read_image(s) / 255.0 - mean) / std
            x = torch.from_numpy(img.transpose(2, 0, 1)[None]).float()
            pred = model(x)["logits"].argmax(1)[0].numpy()
            gt = reader.read_label(s)
            valid = gt != 255
            for c in range(19):
                tp[c] += np.sum((pred == c) & (gt == c) & valid)
                fp[c] += np.sum((pred == c) & (gt != c) & valid)
                fn[c] += np.sum((pred != c) & (gt == c) & valid)
    union = tp + fp + fn
    ious = tp[union > 0] / union[union > 0]
    assert abs(res["miou"] - ious.mean()) < 1e-9


def test_shipped_experiments_name_real_classes(weights_env):
    """absent_classes and class_weights name classes of each experiment's own label space."""
    from shiftlab.config import load_experiment
    from shiftlab.data.formats import label_space_name

    checked = 0
    for path in sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        cfg = load_experiment(path)
        names = get_label_space(label_space_name(cfg.data.source)).class_names
        for spec in [*cfg.data.val, *cfg.data.test]:
            # another encoding of the same classes (e.g. train-id PNGs) is fine; other classes are not
            if spec.label_space is not None:
                assert get_label_space(spec.label_space).class_names == names, (
                    f"{path.name}: {spec.name}"
                )
            own = spec.evaluate.absent_classes if spec.evaluate else None
            assert set(own or []) <= set(names), f"{path.name}: {spec.name}"
        assert set(cfg.evaluate.absent_classes) <= set(names), path.name
        assert set(getattr(cfg.method, "class_weights", {})) <= set(names), path.name
        checked += bool(cfg.evaluate.absent_classes) + bool(
            getattr(cfg.method, "class_weights", {})
        )
    assert checked >= 3  # the off-road files and the off-road demo set them


def test_a_dataset_may_name_its_own_absent_classes():
    from shiftlab.config.data import DatasetSpec
    from shiftlab.config.run import EvaluateConfig

    base = EvaluateConfig(absent_classes=["sky"], flip=True)
    plain = DatasetSpec(format="folder", root="x")
    own = DatasetSpec(
        format="folder",
        root="x",
        evaluate={"absent_classes": ["Logs", "Flowers"], "size": [64, 128]},
    )
    assert base.for_dataset(plain.evaluate) is base
    assert base.for_dataset(own.evaluate).absent_classes == ["Logs", "Flowers"]
    assert base.for_dataset(own.evaluate).size == (64, 128) and base.for_dataset(own.evaluate).flip
    assert base.absent_classes == ["sky"]
