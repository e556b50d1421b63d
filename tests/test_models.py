"""DeepLabV3+ through the registry: shapes, parameter groups, local pretrained weights."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from shiftlab.config.model import DeepLabV3PlusConfig
from shiftlab.models import create_model, list_models, register_model
from shiftlab.utils.errors import ConfigError

SMALL = {
    "backbone": "resnet18",
    "decoder_channels": 32,
    "low_level_channels": 16,
    "pretrained": "none",
}


def small_cfg(**kw: object) -> DeepLabV3PlusConfig:
    return DeepLabV3PlusConfig(**{**SMALL, **kw})


def test_registry_lists_deeplab() -> None:
    assert "deeplabv3plus" in list_models()


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_forward_shapes_per_output_stride(stride: int) -> None:
    torch.manual_seed(0)
    model = create_model(small_cfg(output_stride=stride), num_classes=5)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 5, 64, 64)
    feats = out["features"]
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    # stride-4 low-level stage, deepest stage at the configured output stride
    assert feats[0].shape[-1] == 64 // 4
    assert feats[-1].shape[-1] == 64 // stride
    assert out["decoder"].shape == (2, 32, 16, 16)


def test_logits_follow_non_square_input() -> None:
    model = create_model(small_cfg(), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out["logits"].shape == (1, 3, 64, 96)


def test_param_groups_partition_all_parameters() -> None:
    model = create_model(small_cfg(), num_classes=4)
    groups = model.param_groups()
    assert set(groups) == {"encoder", "decoder", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["encoder"]} == {id(p) for p in model.backbone.parameters()}
    # the classifier is the head: its last weight has num_classes output channels
    assert groups["head"][0].shape[0] == 4


def test_backward_reaches_every_group() -> None:
    model = create_model(small_cfg(), num_classes=4)
    out = model(torch.randn(2, 3, 64, 64))
    out["logits"].mean().backward()
    for name, params in model.param_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_aspp_rates_are_configurable() -> None:
    model = create_model(small_cfg(aspp_rates=(2, 4)), num_classes=2)
    # 1x1 + two dilated + pooling
    assert len(model.aspp.branches) == 4
    assert model.aspp.branches[1][0].dilation == (2, 2)
    assert model.aspp.branches[2][0].dilation == (4, 4)


def test_random_init_only_when_asked_for() -> None:
    """No silent random init: pretrained must be given; `none` asks for random weights."""
    from pydantic import ValidationError

    model = create_model(small_cfg(pretrained="none"), num_classes=2)
    assert model.pretrained_source is None
    with pytest.raises(ValidationError, match="pretrained"):
        DeepLabV3PlusConfig(backbone="resnet18")
    with pytest.raises(ValidationError, match="empty"):
        small_cfg(pretrained="  ")


def _reference_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    full = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return full.state_dict()


@pytest.mark.parametrize("kind", ["pth", "safetensors", "dir", "wrapped"])
def test_pretrained_from_local_file(tmp_path, kind: str) -> None:
    state = _reference_weights()
    if kind == "pth":
        path = tmp_path / "r18.pth"
        torch.save(state, path)
    elif kind == "safetensors":
        path = tmp_path / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "dir":
        path = tmp_path / "resnet18_dir"
        path.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    else:  # a training checkpoint: {"state_dict": {"module.<name>": tensor}}
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = create_model(small_cfg(pretrained=str(path)), num_classes=2)
    assert model.pretrained_source is not None
    got = model.backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(got[key], state[key]), key


def test_pretrained_of_wrong_backbone_is_config_error(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    with pytest.raises(ConfigError, match="model.pretrained"):
        create_model(small_cfg(pretrained=str(path)), num_classes=2)


def test_missing_pretrained_path_is_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_model(small_cfg(pretrained=str(tmp_path / "nope.pth")), num_classes=2)


def test_unknown_backbone_and_model_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.backbone"):
        create_model(small_cfg(backbone="not_a_net"), num_classes=2)

    class Fake:
        name = "nonexistent"

    with pytest.raises(ConfigError, match="nonexistent"):
        create_model(Fake(), num_classes=2)


def test_register_model_adds_an_architecture() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, k, 1)

        def forward(self, x):
            return {"logits": self.conv(x), "features": [x]}

    @register_model("tiny_test_net")
    def build(cfg, num_classes):
        return Tiny(num_classes)

    class Cfg:
        name = "tiny_test_net"

    assert "tiny_test_net" in list_models()
    assert create_model(Cfg(), 7)(torch.zeros(1, 3, 4, 4))["logits"].shape == (1, 7, 4, 4)


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DeepLabV3PlusConfig(output_stride=4)
    with pytest.raises(ValidationError):
        DeepLabV3PlusConfig(aspp_rates=())
    with pytest.raises(ValidationError):
        DeepLabV3PlusConfig(dropout=1.5)
    with pytest.raises(ValidationError):
        DeepLabV3PlusConfig(bogus=1)
