"""SegFormer: a Mix Transformer (MiT) encoder with SegFormer's all-MLP head or DAFormer's head.

Encoder: ``transformers``' ``SegformerModel``, built from the published MiT-B0..B5 tables below
(SegFormer, Xie et al. NeurIPS 2021; the same values as NVlabs' ``mix_transformer.py``, DAFormer's
copy of it and the ``nvidia/mit-b*`` configs): overlapping patch embeddings with patch sizes
7/3/3/3 and strides 4/2/2/2 (feature strides 4/8/16/32), Mix-FFN ratio 4, efficient attention
with sequence-reduction ratios 8/4/2/1, stochastic depth rising linearly to 0.1.

Heads (both end in a 1x1 classifier behind channel dropout, as mmseg's decode heads):

- ``mlp``: SegFormer's all-MLP decoder. Each stage is embedded to C channels by a per-pixel
  linear layer, upsampled to 1/4, the four are concatenated deep -> shallow (4C) and fused by a
  1x1 conv + BN + ReLU. C = 256 for B0 and B1, 768 for B2..B5 (NVlabs configs, the
  ``nvidia/segformer-b*`` checkpoints; Table 1 of the paper lists decoder sizes of 0.4M/0.6M for
  B0/B1 and 3.3M for B2..B5, which are those widths).
- ``daformer``: DAFormer's context-aware fusion (``daformer_sepaspp_mitb5``). Each stage is
  embedded to 256 channels by a per-pixel linear layer with no norm or activation, upsampled
  to 1/4 and concatenated shallow -> deep (1024 channels), then fused by an ASPP without image
  pooling: rate 1 is a 1x1 conv, rates 6/12/18 are depthwise-separable 3x3 convs (depthwise and
  pointwise each followed by BN + ReLU, as mmcv's ``DepthwiseSeparableConvModule``); the
  branches are concatenated and reduced by a *regular* 3x3 conv + BN + ReLU to 256 channels
  (DAFormer's ``ASPPWrapper.bottleneck`` is a plain ``ConvModule``, not a separable one).

The input is expected normalised with the ImageNet mean/std, as the MiT weights were trained.
"""

from __future__ import annotations

import itertools
import json
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.config.segformer import SegFormerConfig
from shiftlab.models.registry import register_model
from shiftlab.models.weights import pretrained_weights
from shiftlab.utils.errors import ConfigError

if TYPE_CHECKING:
    from transformers import SegformerConfig, SegformerModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiTSpec:
    """The per-variant hyper-parameters of a MiT encoder (four stages each)."""

    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int]
    # SegFormer's all-MLP decoder width C for this encoder.
    mlp_head_channels: int


_HEADS = (1, 2, 5, 8)
_SR = (8, 4, 2, 1)
MIT_VARIANTS: dict[str, MiTSpec] = {
    "b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2), _HEADS, _SR, 256),
    "b1": MiTSpec((64, 128, 320, 512), (2, 2, 2, 2), _HEADS, _SR, 256),
    "b2": MiTSpec((64, 128, 320, 512), (3, 4, 6, 3), _HEADS, _SR, 768),
    "b3": MiTSpec((64, 128, 320, 512), (3, 4, 18, 3), _HEADS, _SR, 768),
    "b4": MiTSpec((64, 128, 320, 512), (3, 8, 27, 3), _HEADS, _SR, 768),
    "b5": MiTSpec((64, 128, 320, 512), (3, 6, 40, 3), _HEADS, _SR, 768),
    # Not published: the smallest encoder that keeps every structural feature (CPU tests, demo).
    "tiny": MiTSpec((16, 32, 64, 128), (1, 1, 1, 1), (1, 1, 2, 4), _SR, 32),
}
# Shared by every variant.
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
MLP_RATIOS = (4, 4, 4, 4)
DROP_PATH_RATE = 0.1
# MiT uses LayerNorm(eps=1e-6). transformers 5 records it in the config but its modules use
# nn.LayerNorm's default 1e-5 (a numerical difference of no practical weight).
LAYER_NORM_EPS = 1e-6
# DAFormer's embedding and fusion width (embed_dims=256, channels=256), for every encoder.
DAFORMER_CHANNELS = 256

# Config keys that fix the encoder's structure; a pretrained folder must agree on every one.
_ARCH_KEYS = (
    "num_channels",
    "num_encoder_blocks",
    "hidden_sizes",
    "depths",
    "num_attention_heads",
    "sr_ratios",
    "patch_sizes",
    "strides",
    "mlp_ratios",
)


def mit_config(variant: str) -> SegformerConfig:
    """The ``transformers`` config of the MiT encoder ``variant`` (b0..b5 or tiny)."""
    # transformers is imported where a MiT encoder is built: a DeepLab run (every Ray Train
    # worker imports the model families) does not pay its ~1 s import.
    from transformers import SegformerConfig

    spec = MIT_VARIANTS[variant]
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        hidden_sizes=list(spec.hidden_sizes),
        depths=list(spec.depths),
        num_attention_heads=list(spec.num_heads),
        sr_ratios=list(spec.sr_ratios),
        patch_sizes=list(PATCH_SIZES),
        strides=list(STRIDES),
        mlp_ratios=list(MLP_RATIOS),
        drop_path_rate=DROP_PATH_RATE,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=LAYER_NORM_EPS,
        # Every stage, the last included, is returned as a (B, C, H, W) map.
        reshape_last_stage=True,
    )


# --------------------------------------------------------------------------- pretrained encoder


def _read_folder_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(
            f"model.pretrained: {folder} has no config.json; expected a folder written by "
            "save_pretrained (config.json + model.safetensors)"
        )
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model.pretrained: {file} is not a readable JSON file: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("model_type") != "segformer":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise ConfigError(
            f"model.pretrained: {folder} holds a {kind!r} model, not a SegFormer/MiT encoder"
        )
    return raw


def _as_list(value: object) -> object:
    # config.json holds lists, a SegformerConfig may hold tuples: compare them as lists.
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_architecture(raw: dict[str, Any], variant: str, folder: Path) -> None:
    """Refuse a folder whose encoder is not MiT-``variant`` (before any weight is read)."""
    from transformers import SegformerConfig

    expected, defaults = mit_config(variant), SegformerConfig()
    diffs = []
    for key in _ARCH_KEYS:
        # A key absent from config.json takes transformers' default, as from_pretrained would.
        theirs = raw.get(key, getattr(defaults, key))
        ours = getattr(expected, key)
        if _as_list(theirs) != _as_list(ours):
            diffs.append(f"{key} {_as_list(theirs)} (MiT-{variant}: {_as_list(ours)})")
    if diffs:
        raise ConfigError(
            f"model.pretrained: {folder} does not hold a MiT-{variant} encoder "
            f"(model.variant): {'; '.join(diffs)}"
        )


def load_mit_encoder(path: str, variant: str) -> SegformerModel:
    """The MiT-``variant`` encoder stored in the local folder ``path`` (never downloads).

    The folder may hold a ``SegformerModel`` or a model around one (``SegformerForSemantic
    Segmentation``, ``SegformerForImageClassification`` as nvidia/mit-b*): transformers strips
    the ``segformer.`` prefix and renames the 4.x parameter names. Every encoder tensor must be
    present; extra tensors (a decode head, a classifier) are ignored.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"model.pretrained: {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(
            f"model.pretrained: {folder} is a file; expected a folder written by save_pretrained"
        )
    _check_architecture(_read_folder_config(folder), variant, folder)
    from transformers import SegformerModel

    try:
        loaded: Any = SegformerModel.from_pretrained(
            str(folder),
            config=mit_config(variant),  # our dropout / drop-path settings, same structure
            local_files_only=True,
            dtype=torch.float32,  # transformers 5 would otherwise keep the checkpoint's dtype
            output_loading_info=True,
        )
        encoder, info = loaded  # (model, loading info) with output_loading_info
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.pretrained: cannot load an encoder from {folder}: {exc}") from exc
    _check_loading_info(info, folder)
    return encoder


def _check_loading_info(info: dict[str, Any], folder: Path) -> None:
    # from_pretrained only warns about missing tensors and initialises them randomly; a
    # half-loaded encoder must be an error instead.
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        raise ConfigError(
            f"model.pretrained: {folder} lacks or mis-shapes {len(bad)} encoder tensors "
            f"(first: {', '.join(bad[:5])})"
        )
    unused = sorted(info.get("unexpected_keys") or ())
    if unused:
        log.info(
            "pretrained %s: ignored %d tensors outside the encoder (e.g. %s)",
            folder,
            len(unused),
            unused[0],
        )


def build_encoder(cfg: SegFormerConfig) -> tuple[SegformerModel, str | None]:
    """The MiT encoder and the folder its weights came from (None: random init)."""
    from transformers import SegformerModel

    path = pretrained_weights(cfg.pretrained)
    if path is None:
        log.info(
            "model.pretrained is none: the MiT-%s encoder starts from random weights", cfg.variant
        )
        return SegformerModel(mit_config(cfg.variant)), None
    return load_mit_encoder(path, cfg.variant), str(Path(path).expanduser())


# --------------------------------------------------------------------------- decode heads


def _conv_bn_relu(
    cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    # No conv bias in front of BatchNorm (mmcv ConvModule's bias="auto").
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PixelLinear(nn.Module):
    """A linear layer applied at every pixel (SegFormer's "MLP" embedding, ``proj``).

    Equivalent to a 1x1 conv; kept as ``nn.Linear`` so published head weights keep their layout.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, -1, h, w)


def _embed_at_quarter(
    features: Sequence[torch.Tensor], embeds: nn.ModuleList
) -> list[torch.Tensor]:
    """Embed every stage and resize it to the stride-4 (first) stage's size."""
    size = features[0].shape[-2:]
    out = []
    for feature, embed in zip(features, embeds, strict=True):
        e = embed(feature)
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        out.append(e)
    return out


class SegFormerMLPHead(nn.Module):
    """SegFormer's all-MLP decoder up to the classifier: embed to C, 1/4, concat, 1x1 fuse."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(PixelLinear(c, channels) for c in in_channels)
        self.fuse = _conv_bn_relu(channels * len(in_channels), channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        embedded = _embed_at_quarter(features, self.embeds)
        # The original code concatenates deep -> shallow (c4, c3, c2, c1).
        return self.fuse(torch.cat(embedded[::-1], dim=1))


class DepthwiseSeparableConv(nn.Module):
    """Dilated depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.depthwise = _conv_bn_relu(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise = _conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SeparableASPP(nn.Module):
    """DAFormer's fusion: depthwise-separable ASPP (no image pooling) + 3x3 bottleneck."""

    def __init__(self, cin: int, cout: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        # As mmseg's DepthwiseSeparableASPPModule: rate 1 stays a plain 1x1 conv.
        self.branches = nn.ModuleList(
            _conv_bn_relu(cin, cout, 1) if d == 1 else DepthwiseSeparableConv(cin, cout, d)
            for d in self.dilations
        )
        self.bottleneck = _conv_bn_relu(cout * len(self.dilations), cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer's context-aware fusion up to the classifier: embed, 1/4, concat, separable ASPP."""

    def __init__(self, in_channels: Sequence[int], channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(PixelLinear(c, channels) for c in in_channels)
        self.fusion = SeparableASPP(channels * len(in_channels), channels, dilations)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fusion(torch.cat(_embed_at_quarter(features, self.embeds), dim=1))


def head_channels(cfg: SegFormerConfig) -> int:
    """The decoder width: ``cfg.head_channels`` or the published one for the head/encoder."""
    if cfg.head_channels is not None:
        return cfg.head_channels
    spec = MIT_VARIANTS[cfg.variant]
    if cfg.head == "mlp" or cfg.variant == "tiny":
        return spec.mlp_head_channels
    return DAFORMER_CHANNELS


def _init_head(decoder: nn.Module, classifier: nn.Conv2d) -> None:
    # mmcv's ConvModule init (Kaiming normal, fan_out, ReLU) and mmseg's conv_seg init
    # (normal, std 0.01); BatchNorm and the linear embeddings keep PyTorch's defaults, as there.
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.normal_(classifier.weight, std=0.01)
    if classifier.bias is not None:
        nn.init.zeros_(classifier.bias)


# --------------------------------------------------------------------------- the model


class SegFormer(nn.Module):
    """MiT encoder + decode head (``mlp`` or ``daformer``) + 1x1 classifier.

    ``forward`` returns ``logits`` at the input size, ``features`` (the four MiT stages at
    strides 4/8/16/32, shallow -> deep) and ``decoder`` (the pre-classifier map at 1/4).

    Parameter groups: ``encoder`` = the MiT; ``decoder`` = the embeddings and the fusion;
    ``head`` = the final 1x1 classifier. DAFormer's lr x10 applies to mmseg's whole
    ``decode_head``, i.e. to ``decoder`` *and* ``head`` here (set lr_mult 10 on both).
    """

    def __init__(self, cfg: SegFormerConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        spec = MIT_VARIANTS[cfg.variant]
        self.encoder, self.pretrained_source = build_encoder(cfg)
        self.feature_channels = list(spec.hidden_sizes)
        self.feature_strides = list(itertools.accumulate(STRIDES, operator.mul))
        width = head_channels(cfg)
        if cfg.head == "mlp":
            self.decode_head: nn.Module = SegFormerMLPHead(spec.hidden_sizes, width)
        else:
            self.decode_head = DAFormerHead(spec.hidden_sizes, width, cfg.fusion_dilations)
        # Channel dropout (nn.Dropout2d), as mmseg's BaseDecodeHead before conv_seg.
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        _init_head(self.decode_head, self.classifier)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        out = self.encoder(pixel_values=x, output_hidden_states=True)
        features = list(out.hidden_states)
        decoder = self.decode_head(features)
        logits = self.classifier(self.dropout(decoder))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features, "decoder": decoder}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": list(self.decode_head.parameters()),
            "head": list(self.classifier.parameters()),
        }


@register_model("segformer")
def build_segformer(cfg: SegFormerConfig, num_classes: int) -> SegFormer:
    return SegFormer(cfg, num_classes)
