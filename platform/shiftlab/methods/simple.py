"""Single-view supervised recipes: the source-only baseline and the off-road loss."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.config.method import OffroadConfig, SourceOnlyConfig
from shiftlab.methods.base import Batch, Method, class_weight_vector, require
from shiftlab.methods.losses import cross_entropy, dice_loss
from shiftlab.methods.registry import register_method


@register_method("source_only")
class SourceOnly(Method):
    """CE on the source view: the baseline every adaptation method is compared with."""

    name = "source_only"
    cfg: SourceOnlyConfig

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        return {"image": self.cfg.source_view}

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(require(batch, "image", self.name))
        ce = cross_entropy(
            out["logits"], require(batch, "label", self.name), None, self.ignore_index
        )
        return ce, {"loss": ce.item(), "ce": ce.item()}


@register_method("offroad")
class Offroad(Method):
    """Off-road DeepLabV3+ recipe: ce_weight * class-weighted CE + dice_weight * soft Dice."""

    name = "offroad"
    cfg: OffroadConfig

    def __init__(self, cfg: OffroadConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        # Validated at build time so a misspelt class name fails before any training.
        self.class_weights = class_weight_vector(
            cfg.class_weights, self.class_names, "method.class_weights"
        )
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(
                f"{len(self.class_weights)} class names for a {self.num_classes}-class model"
            )

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        return {"image": self.cfg.source_view}

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(require(batch, "image", self.name))
        label = require(batch, "label", self.name)
        logits = out["logits"]
        ce = cross_entropy(logits, label, self.class_weights, self.ignore_index)
        dice = dice_loss(logits, label, self.ignore_index, smooth=self.cfg.dice_smooth)
        total = self.cfg.ce_weight * ce + self.cfg.dice_weight * dice
        return total, {"loss": total.item(), "ce": ce.item(), "dice": dice.item()}
