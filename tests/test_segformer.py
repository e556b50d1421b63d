"""SegFormer through the registry: MiT tables, both heads, local pretrained encoders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel

from shiftlab.config.model import ModelConfig
from shiftlab.config.segformer import SegFormerConfig
from shiftlab.models import create_model, list_models
from shiftlab.models.segformer import (
    DAFormerHead,
    DepthwiseSeparableConv,
    PixelLinear,
    SegFormerMLPHead,
    mit_config,
)
from shiftlab.utils.errors import ConfigError

TINY_CHANNELS = [16, 32, 64, 128]


def tiny_cfg(**kw: object) -> SegFormerConfig:
    return SegFormerConfig(**{"variant": "tiny", "pretrained": "none", **kw})


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_segformer_and_config_union_parses_it() -> None:
    assert "segformer" in list_models()
    cfg = TypeAdapter(ModelConfig).validate_python({"name": "segformer", "pretrained": "none"})
    assert isinstance(cfg, SegFormerConfig)
    assert (cfg.variant, cfg.head, cfg.fusion_dilations) == ("b5", "daformer", (1, 6, 12, 18))


@pytest.mark.parametrize("head", ["mlp", "daformer"])
@pytest.mark.parametrize("size", [(72, 104), (50, 70)])
def test_forward_shapes(head: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_cfg(head=head), num_classes=5)
    h, w = size
    out = model(torch.randn(2, 3, h, w))
    assert out["logits"].shape == (2, 5, h, w)
    assert model.feature_channels == TINY_CHANNELS
    assert model.feature_strides == [4, 8, 16, 32]
    feats = out["features"]
    assert len(feats) == 4
    for f, c, s in zip(feats, TINY_CHANNELS, model.feature_strides, strict=True):
        # The overlapping patch embeddings (k7 s4 p3, k3 s2 p1) give ceil(size / stride).
        assert f.shape == (2, c, math.ceil(h / s), math.ceil(w / s))
    # tiny's decoder width is 32; the decoder map is at the stride-4 size.
    assert out["decoder"].shape == (2, 32, *feats[0].shape[-2:])


@pytest.mark.parametrize("head", ["mlp", "daformer"])
def test_param_groups_partition_all_parameters(head: str) -> None:
    model = create_model(tiny_cfg(head=head), num_classes=4)
    groups = model.param_groups()
    assert set(groups) == {"encoder", "decoder", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["encoder"]} == {id(p) for p in model.encoder.parameters()}
    # head: the 1x1 classifier only (weight + bias)
    assert [tuple(p.shape) for p in groups["head"]] == [(4, 32, 1, 1), (4,)]


@pytest.mark.parametrize("head", ["mlp", "daformer"])
def test_backward_with_cross_entropy_reaches_every_group(head: str) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_cfg(head=head), num_classes=3).train()
    x = torch.randn(2, 3, 40, 56)
    target = torch.randint(0, 3, (2, 40, 56))
    target[:, :4] = 255  # ignored rows, as DAFormer's pseudo-label border
    loss = F.cross_entropy(model(x)["logits"], target, ignore_index=255)
    loss.backward()
    assert torch.isfinite(loss)
    for name, params in model.param_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    first = model.encoder.stages[0].patch_embeddings.proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0


# --------------------------------------------------------------------------- published facts

PUBLISHED_MIT = {  # hidden sizes, depths (SegFormer Table 6, NVlabs mix_transformer.py)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED_MIT))
def test_mit_table_is_the_published_one(variant: str) -> None:
    c = mit_config(variant)
    assert (tuple(c.hidden_sizes), tuple(c.depths)) == PUBLISHED_MIT[variant]
    assert tuple(c.num_attention_heads) == (1, 2, 5, 8)
    assert tuple(c.sr_ratios) == (8, 4, 2, 1)
    assert tuple(c.mlp_ratios) == (4, 4, 4, 4)
    assert tuple(c.patch_sizes) == (7, 3, 3, 3)
    assert tuple(c.strides) == (4, 2, 2, 2)
    assert c.drop_path_rate == pytest.approx(0.1)
    assert c.hidden_dropout_prob == 0.0 and c.attention_probs_dropout_prob == 0.0


def test_b0_encoder_parameter_count_equals_transformers() -> None:
    model = create_model(SegFormerConfig(variant="b0", pretrained="none", head="mlp"), 19)
    reference = SegformerModel(
        SegformerConfig(
            hidden_sizes=[32, 64, 160, 256],
            depths=[2, 2, 2, 2],
            num_attention_heads=[1, 2, 5, 8],
            sr_ratios=[8, 4, 2, 1],
        )
    )
    assert n_params(model.encoder) == n_params(reference)


# SegFormer Table 2 (ADE20K, 150 classes): SegFormer-B0..B5 total size in M parameters.
PUBLISHED_TOTAL_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}
# SegFormer Table 1: decoder size in M (these fix C = 256 for B0/B1 and 768 for B2..B5).
PUBLISHED_DECODER_M = {"b0": 0.4, "b1": 0.6, "b2": 3.3, "b3": 3.3, "b4": 3.3, "b5": 3.3}


@pytest.mark.parametrize("variant", sorted(PUBLISHED_TOTAL_M))
def test_segformer_sizes_match_the_paper(variant: str) -> None:
    # On the meta device: shapes only, so even B5 builds in milliseconds.
    with torch.device("meta"):
        model = create_model(SegFormerConfig(variant=variant, pretrained="none", head="mlp"), 150)
    decoder = n_params(model.decode_head) + n_params(model.classifier)
    assert round(n_params(model) / 1e6, 1) == PUBLISHED_TOTAL_M[variant]
    assert round(decoder / 1e6, 1) == PUBLISHED_DECODER_M[variant]


@pytest.mark.parametrize(("variant", "mlp_width"), [("b0", 256), ("b1", 256), ("b5", 768)])
def test_published_head_widths(variant: str, mlp_width: int) -> None:
    with torch.device("meta"):
        mlp = create_model(SegFormerConfig(variant=variant, pretrained="none", head="mlp"), 19)
        daf = create_model(SegFormerConfig(variant=variant, pretrained="none"), 19)
    assert isinstance(mlp.decode_head, SegFormerMLPHead)
    assert [e.proj.out_features for e in mlp.decode_head.embeds] == [mlp_width] * 4
    assert isinstance(daf.decode_head, DAFormerHead)
    assert [e.proj.out_features for e in daf.decode_head.embeds] == [256] * 4
    assert daf.decode_head.fusion.branches[0][0].in_channels == 4 * 256
    assert daf.classifier.in_channels == 256


def test_daformer_fusion_is_a_depthwise_separable_aspp() -> None:
    model = create_model(tiny_cfg(head="daformer", head_channels=24), num_classes=3)
    head = model.decode_head
    cin = 4 * 24
    # embeddings: a linear layer per stage, no norm or activation
    assert all(list(e.children()) == [e.proj] for e in head.embeds)
    assert all(isinstance(e, PixelLinear) for e in head.embeds)
    fusion = head.fusion
    assert fusion.dilations == (1, 6, 12, 18)
    assert len(fusion.branches) == 4  # no image-pooling branch
    rate1 = fusion.branches[0]
    assert rate1[0].kernel_size == (1, 1) and rate1[0].groups == 1
    assert isinstance(rate1[1], nn.BatchNorm2d) and isinstance(rate1[2], nn.ReLU)
    for branch, d in zip(fusion.branches[1:], (6, 12, 18), strict=True):
        assert isinstance(branch, DepthwiseSeparableConv)
        dw, pw = branch.depthwise[0], branch.pointwise[0]
        assert (dw.kernel_size, dw.dilation, dw.padding) == ((3, 3), (d, d), (d, d))
        assert dw.groups == dw.in_channels == dw.out_channels == cin
        assert (pw.kernel_size, pw.groups, pw.in_channels, pw.out_channels) == ((1, 1), 1, cin, 24)
        for block in (branch.depthwise, branch.pointwise):
            assert isinstance(block[1], nn.BatchNorm2d) and isinstance(block[2], nn.ReLU)
    bottleneck = fusion.bottleneck[0]
    assert (bottleneck.kernel_size, bottleneck.groups) == ((3, 3), 1)
    assert (bottleneck.in_channels, bottleneck.out_channels) == (4 * 24, 24)


def test_fusion_dilations_are_configurable() -> None:
    model = create_model(tiny_cfg(fusion_dilations=(1, 3)), num_classes=2)
    assert model.decode_head.fusion.dilations == (1, 3)
    assert model.decode_head.fusion.branches[1].depthwise[0].dilation == (3, 3)
    assert model(torch.randn(2, 3, 32, 32))["logits"].shape == (2, 2, 32, 32)


# --------------------------------------------------------------------------- pretrained folders

_LEGACY_NAMES = (  # transformers 4.x names (as in nvidia/mit-b*) -> 5.x names
    ("attention.self.query", "attention.q_proj"),
    ("attention.self.key", "attention.k_proj"),
    ("attention.self.value", "attention.v_proj"),
    ("attention.self.sr", "attention.sequence_reduction.sequence_reduction"),
    ("attention.self.layer_norm", "attention.sequence_reduction.layer_norm"),
    ("attention.output.dense", "attention.o_proj"),
    ("mlp.dense1", "mlp.fc1"),
    ("mlp.dense2", "mlp.fc2"),
    ("layer_norm_1", "layernorm_before"),
    ("layer_norm_2", "layernorm_after"),
)


def _legacy_name(key: str) -> str:
    key = re.sub(r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", key)
    key = re.sub(r"stages\.(\d+)\.blocks\.", r"encoder.block.\1.", key)
    key = re.sub(r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1", key)
    for old, new in _LEGACY_NAMES:
        key = key.replace(new, old)
    return "segformer." + key


def _save_encoder(folder: Path, kind: str = "model") -> dict[str, torch.Tensor]:
    """Save a random tiny MiT in ``folder``; returns the encoder's own state dict."""
    torch.manual_seed(7)
    if kind == "segmentation":
        full = SegformerForSemanticSegmentation(mit_config("tiny"))
        full.save_pretrained(folder)
        return full.segformer.state_dict()
    encoder = SegformerModel(mit_config("tiny"))
    state = encoder.state_dict()
    if kind == "model":
        encoder.save_pretrained(folder)
    else:  # "legacy": a SegformerForImageClassification of 4.x, as nvidia/mit-b5 on the hub
        # (save_pretrained above writes the 4.x names too; here they also carry the
        # "segformer." prefix and an ImageNet classifier beside the encoder)
        folder.mkdir(parents=True)
        legacy = {_legacy_name(k): v.contiguous() for k, v in state.items()}
        legacy |= {"classifier.weight": torch.zeros(10, 128), "classifier.bias": torch.zeros(10)}
        save_file(legacy, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = mit_config("tiny").to_dict() | {
            "architectures": ["SegformerForImageClassification"]
        }
        (folder / "config.json").write_text(json.dumps(config))
    return state


@pytest.mark.parametrize("kind", ["model", "segmentation", "legacy"])
def test_pretrained_folder_loads_the_encoder(tmp_path: Path, kind: str) -> None:
    saved = _save_encoder(tmp_path / "mit", kind)
    model = create_model(tiny_cfg(pretrained=str(tmp_path / "mit")), num_classes=3)
    assert model.pretrained_source == str(tmp_path / "mit")
    got = model.encoder.state_dict()
    assert got.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(got[key], value), key
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_pretrained_of_another_variant_is_config_error(tmp_path: Path) -> None:
    _save_encoder(tmp_path / "tiny")
    with pytest.raises(ConfigError, match=r"model\.pretrained.*MiT-b0.*hidden_sizes"):
        create_model(SegFormerConfig(variant="b0", pretrained=str(tmp_path / "tiny")), 3)


def test_pretrained_with_missing_tensors_is_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "mit"
    _save_encoder(folder)
    state = load_file(str(folder / "model.safetensors"))
    # The last stage's tensors (".3." in both the 4.x names save_pretrained writes and 5.x's).
    kept = {k: v for k, v in state.items() if ".3." not in k}
    assert 0 < len(kept) < len(state)
    state = kept
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"model\.pretrained.*lacks"):
        create_model(tiny_cfg(pretrained=str(folder)), num_classes=3)


def test_pretrained_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.pretrained.*does not exist"):
        create_model(tiny_cfg(pretrained=str(tmp_path / "nope")), num_classes=2)
    file = tmp_path / "mit_b5.pth"
    file.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model\.pretrained.*is a file"):
        create_model(tiny_cfg(pretrained=str(file)), num_classes=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model\.pretrained.*no config\.json"):
        create_model(tiny_cfg(pretrained=str(tmp_path / "empty")), num_classes=2)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match=r"model\.pretrained.*'bert'"):
        create_model(tiny_cfg(pretrained=str(tmp_path / "bert")), num_classes=2)


@pytest.mark.parametrize("value", ["none", "None", " NONE "])
def test_pretrained_none_is_random_init(tmp_path: Path, value: str) -> None:
    saved = _save_encoder(tmp_path / "mit")
    model = create_model(tiny_cfg(pretrained=value), num_classes=2)
    assert model.pretrained_source is None
    key = "stages.0.patch_embeddings.proj.weight"
    assert not torch.equal(model.encoder.state_dict()[key], saved[key])


# --------------------------------------------------------------------------- config validation


def _error_locs(data: dict[str, object]) -> list[tuple[object, ...]]:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(ModelConfig).validate_python({"name": "segformer", **data})
    return [err["loc"] for err in info.value.errors()]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({}, "pretrained"),
        ({"pretrained": "  "}, "pretrained"),
        ({"pretrained": "none", "variant": "b6"}, "variant"),
        ({"pretrained": "none", "head": "uper"}, "head"),
        ({"pretrained": "none", "head_channels": 0}, "head_channels"),
        ({"pretrained": "none", "dropout": 1.0}, "dropout"),
        ({"pretrained": "none", "fusion_dilations": []}, "fusion_dilations"),
        ({"pretrained": "none", "fusion_dilations": [1, 6, 6]}, "fusion_dilations"),
        ({"pretrained": "none", "fusion_dilations": [0, 6]}, "fusion_dilations"),
        ({"pretrained": "none", "bogus": 1}, "bogus"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    assert any(key in loc for loc in _error_locs(data))
