"""Numbers a researcher can trust: selection never sees a test set (nor, zero-shot, any target
label), no silent random init, and evaluation resizes exactly as training did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from shiftlab.cli.main import main
from shiftlab.config import load_experiment
from shiftlab.config.augment import AugmentConfig
from shiftlab.config.loader import validate_dict
from shiftlab.config.run import EvaluateConfig
from shiftlab.data.transforms import resize_image
from shiftlab.evaluate.inference import predict_logits
from shiftlab.train.augment import PairedAugment
from shiftlab.utils.errors import ConfigError

from layouts import make_acdc, make_cityscapes, make_gta5

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SDGPA = sorted(EXPERIMENTS.glob("sdgpa_*.yaml"))


def procedural(split: str, condition: str, name: str) -> dict:
    return {
        "name": name,
        "format": "procedural",
        "split": split,
        "condition": condition,
        "layouts": 2,
    }


def tiny(val: list[dict], test: list[dict], **train: object) -> dict:
    return {
        "name": "t",
        "data": {"source": procedural("train", "noon", "src"), "val": val, "test": test},
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "pretrained": "none"},
        "method": {"name": "source_only"},
        "train": dict(train),
    }


# -- selection --------------------------------------------------------------------------------
def test_a_selection_set_equal_to_a_test_set_is_refused_naming_both() -> None:
    night = procedural("val", "night", "night_val")
    same = {
        **procedural("val", "night", "night_reported"),
        "limit": 5,
    }  # renamed and limited: same data
    with pytest.raises(ConfigError) as err:
        validate_dict(tiny([night], [same]), "exp.yaml")
    assert "'night_val'" in str(err.value) and "'night_reported'" in str(err.value)
    # by a metric naming that one set, too; a different split is fine
    with pytest.raises(ConfigError, match="night_reported"):
        validate_dict(tiny([night], [same], select="val/night_val/miou"), "exp.yaml")
    ok = validate_dict(tiny([night], [procedural("test", "night", "night_test")]), "exp.yaml")
    assert [s.display_name for s in ok.selection_sets()] == [
        "night_val"
    ] and ok.selection_uses_target_labels()
    # selecting the last (or a fixed) epoch reads no validation labels at all
    fixed = validate_dict(tiny([night], [same], select={"epoch": 1}), "exp.yaml")
    assert fixed.selection_sets() == []


def test_selection_rules_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="not a validation metric"):
        validate_dict(tiny([], [], select="test_miou"), "exp.yaml")
    with pytest.raises(ConfigError, match="needs data.val"):
        validate_dict(tiny([], [], select="val_miou"), "exp.yaml")
    with pytest.raises(ConfigError, match="names no data.val set"):
        validate_dict(
            tiny([procedural("val", "noon", "v")], [], select="val/other/miou"), "exp.yaml"
        )
    with pytest.raises(ConfigError, match="train.select.epoch"):
        validate_dict(tiny([], [], epochs=3, select={"epoch": 4}), "exp.yaml")
    assert validate_dict(tiny([], []), "exp.yaml").selection.rule == "last"  # no val: last
    zero_shot = {**tiny([procedural("val", "night", "night_val")], []), "protocol": "zero_shot"}
    with pytest.raises(ConfigError, match="reads no target label"):
        validate_dict(zero_shot, "exp.yaml")


@pytest.fixture
def sdgpa_data(tmp_path, monkeypatch, weights_env) -> dict[str, Path]:
    """The datasets the SDGPA files name, as tiny fixtures (their variables point at them)."""
    roots = {
        "CITYSCAPES_ROOT": tmp_path / "cityscapes",
        "ACDC_ROOT": tmp_path / "acdc",
        "GTA5_ROOT": tmp_path / "gta5",
    }
    for split in ("train", "val"):
        make_cityscapes(roots["CITYSCAPES_ROOT"], split)
    make_acdc(roots["ACDC_ROOT"], "val")
    make_gta5(roots["GTA5_ROOT"])
    (roots["GTA5_ROOT"] / "val1000.txt").write_text("00000\n00001\n")
    for name, root in roots.items():
        monkeypatch.setenv(name, str(root))
    return roots


@pytest.mark.parametrize("path", SDGPA, ids=[p.stem for p in SDGPA])
def test_sdgpa_experiments_read_no_target_label_to_choose_the_model(path: Path, sdgpa_data) -> None:
    cfg = load_experiment(path)
    assert cfg.protocol == "zero_shot" and cfg.data.target_unlabelled is None
    assert cfg.selection.rule == "epoch" and (cfg.selection.stage, cfg.selection.epoch) == (
        "stage2",
        65,
    )
    assert cfg.selection_sets() == [] and not cfg.selection_uses_target_labels()
    # validation (curves only) reads Cityscapes, the source; every target set is a test set
    assert all(s.domain_for(cfg.data.source) == "source" for s in cfg.data.val)
    assert {s.root for s in cfg.data.val} == {str(sdgpa_data["CITYSCAPES_ROOT"])}
    targets = [s for s in cfg.data.test if s.domain_for(cfg.data.source) == "target"]
    assert targets and len(targets) == len(cfg.data.test)


# -- no silent random init --------------------------------------------------------------------
def test_an_unset_weights_variable_stops_a_real_experiment_before_any_work(
    tmp_path, monkeypatch, capsys, sdgpa_data
) -> None:
    out = tmp_path / "runs"
    monkeypatch.setenv("SHIFTLAB_OUTPUT", str(out))
    monkeypatch.delenv("RESNET50_WEIGHTS")
    code = main(["train", str(EXPERIMENTS / "sdgpa_night.yaml")])
    err = capsys.readouterr().err
    assert code != 0 and "model.pretrained" in err and "RESNET50_WEIGHTS" in err
    assert not out.exists()  # nothing was written
    # set but pointing nowhere: the same, before any work
    monkeypatch.setenv("RESNET50_WEIGHTS", str(tmp_path / "missing.pth"))
    cheap = ["generate=null", "method={name: source_only}", "train.select=last"]
    code = main(["train", str(EXPERIMENTS / "sdgpa_night.yaml"), *cheap])
    err = capsys.readouterr().err
    assert code != 0 and "model.pretrained" in err and "missing.pth" in err
    assert not (out / "sdgpa_night" / "ray").exists()
    # an empty value is refused by the config itself
    monkeypatch.setenv("RESNET50_WEIGHTS", "")
    with pytest.raises(ConfigError, match="model.pretrained: .*empty"):
        load_experiment(EXPERIMENTS / "sdgpa_night.yaml")


# -- one preprocessing ------------------------------------------------------------------------
class Recorder(nn.Module):
    """Records the input it is given; predicts nothing useful."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.inputs.append(x.clone())
        return {"logits": self.conv(x)}


def test_evaluation_resizes_an_image_exactly_as_training_does() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)
    size = (64, 96)
    train = PairedAugment(AugmentConfig(resize=size, hflip=0.0, color_jitter=None))
    trained_on = train({"image": image}, None, np.random.default_rng(1))["image"]
    model = Recorder().eval()
    predict_logits(model, [image], EvaluateConfig(size=size), 2)
    assert model.inputs[0].shape == (1, 3, *size)
    torch.testing.assert_close(model.inputs[0][0], trained_on, rtol=0, atol=0)
    # ...and it is the antialiased bicubic of generation, not a bilinear interpolation
    bilinear = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        size=size,
        mode="bilinear",
        align_corners=False,
    )
    assert not np.array_equal(
        resize_image(image, size), bilinear[0].permute(1, 2, 0).round().byte().numpy()
    )


# -- shiftlab config ----------------------------------------------------------------------------
def test_config_command_prints_the_resolved_config_selection_and_weights(
    capsys, sdgpa_data, weights_env
) -> None:
    assert main(["config", str(EXPERIMENTS / "sdgpa_night.yaml"), "optim.lr=0.002"]) == 0
    out = capsys.readouterr().out
    assert "# protocol:   zero_shot" in out and "epoch 65 of stage stage2" in out
    assert str(weights_env["RESNET50_WEIGHTS"]) in out and "exists" in out
    resolved = yaml.safe_load(out)
    assert resolved["optim"]["lr"] == 0.002 and resolved["train"]["select"]["rule"] == "epoch"
    assert main(["config", str(EXPERIMENTS / "demo.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["selection"] == "the last epoch" and data["summary"][
        "weights"
    ].startswith("none")
    assert data["config"]["model"]["pretrained"] == "none"
