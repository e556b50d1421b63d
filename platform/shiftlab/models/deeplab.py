"""DeepLabV3+ on a timm ``features_only`` backbone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.config.model import DeepLabV3PlusConfig
from shiftlab.models.registry import register_model
from shiftlab.models.weights import load_backbone_weights, pretrained_weights
from shiftlab.utils.errors import ConfigError

log = logging.getLogger(__name__)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's global-context branch: GAP -> 1x1 conv -> ReLU -> broadcast back.

    No BatchNorm here: on a 1x1 map BatchNorm has a single value per channel when a worker's
    batch is 1 and raises in training mode, which DDP runs with small per-worker batches hit.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """1x1 branch + one dilated 3x3 branch per rate + image pooling, fused by a 1x1 conv."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(cin, cout, 1)]
        branches += [_conv_bn_relu(cin, cout, 3, dilation=r) for r in rates]
        branches.append(ImagePooling(cin, cout))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            _conv_bn_relu(cout * len(branches), cout, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """ASPP on the deepest stage, decoder fusing the stride-4 stage, 1x1 classifier.

    ``forward`` returns ``logits`` at the input size, ``features`` (the backbone stages from
    stride 4 to the deepest, shallow -> deep) and ``decoder`` (the pre-classifier map).
    """

    def __init__(self, cfg: DeepLabV3PlusConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            self.backbone = timm.create_model(
                cfg.backbone, pretrained=False, features_only=True, output_stride=cfg.output_stride
            )
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ConfigError(f"model.backbone: {exc}") from exc
        except (TypeError, AssertionError, ValueError) as exc:
            raise ConfigError(
                f"model.backbone: {cfg.backbone!r} cannot be built with features_only and "
                f"output_stride={cfg.output_stride}: {exc}"
            ) from exc
        info: Any = self.backbone.feature_info  # timm's FeatureInfo
        reductions, channels = info.reduction(), info.channels()
        # Stages finer than stride 4 (the stem) are not useful to the decoder or alignment.
        self.keep = [i for i, r in enumerate(reductions) if r >= 4]
        if not self.keep or reductions[self.keep[0]] != 4:
            raise ConfigError(
                f"model.backbone: {cfg.backbone!r} has no stride-4 stage (reductions {reductions})"
            )
        low_ch, high_ch = channels[self.keep[0]], channels[self.keep[-1]]
        dc = cfg.decoder_channels

        self.aspp = ASPP(high_ch, dc, cfg.aspp_rates, cfg.dropout)
        self.low_proj = _conv_bn_relu(low_ch, cfg.low_level_channels, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(dc + cfg.low_level_channels, dc, 3),
            _conv_bn_relu(dc, dc, 3),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Conv2d(dc, num_classes, 1))
        self.num_classes = num_classes
        self.feature_channels = [channels[i] for i in self.keep]
        self.feature_strides = [reductions[i] for i in self.keep]

        # `none` is an explicit random initialisation (tagged pretrained=false in MLflow).
        weights = pretrained_weights(cfg.pretrained)
        self.pretrained_source = (
            str(load_backbone_weights(self.backbone, weights)) if weights else None
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        stages = self.backbone(x)
        features = [stages[i] for i in self.keep]
        low, high = features[0], features[-1]
        context = self.aspp(high)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        decoder = self.fuse(torch.cat([context, self.low_proj(low)], dim=1))
        logits = self.head(decoder)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features, "decoder": decoder}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        decoder = [*self.aspp.parameters(), *self.low_proj.parameters(), *self.fuse.parameters()]
        return {
            "encoder": list(self.backbone.parameters()),
            "decoder": decoder,
            "head": list(self.head.parameters()),
        }


@register_model("deeplabv3plus")
def build_deeplabv3plus(cfg: DeepLabV3PlusConfig, num_classes: int) -> DeepLabV3Plus:
    return DeepLabV3Plus(cfg, num_classes)
