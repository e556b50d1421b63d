"""QueryDiff training recipe: Mask2Former set criterion + weighted diffusion-guidance losses.

The model computes the guidance losses itself (they need its agent queries and the frozen
diffusion features) and returns them unweighted in ``guidance_losses``; this method weighs them
(``kl_weight``, ``huber_weight``) and adds the set criterion (class CE, mask BCE, Dice, with deep
supervision over every decoder layer; Mask2Former's point sampling: uniform points for the
matching, importance-sampled points for the mask losses, drawn from the step's generator).
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.config.querydiff import QueryDiffMethodConfig
from shiftlab.methods.base import Batch, Method, require, unwrap
from shiftlab.methods.registry import register_method
from shiftlab.models.querydiff.criterion import CriterionWeights, SetCriterion
from shiftlab.utils.errors import ConfigError


@register_method("querydiff")
class QueryDiffMethod(Method):
    """Single-stage supervised training on the source view (domain generalisation)."""

    name = "querydiff"
    cfg: QueryDiffMethodConfig

    def __init__(self, cfg: QueryDiffMethodConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.criterion = SetCriterion(
            self.num_classes,
            ignore_index=self.ignore_index,
            weights=CriterionWeights(
                class_weight=cfg.class_weight,
                mask_weight=cfg.mask_weight,
                dice_weight=cfg.dice_weight,
                no_object_weight=cfg.no_object_weight,
            ),
            num_points=cfg.num_points,
            deep_supervision=cfg.deep_supervision,
            oversample_ratio=cfg.oversample_ratio,
            importance_sample_ratio=cfg.importance_sample_ratio,
        )

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        return {"image": self.cfg.source_view}

    def setup(self, model: nn.Module) -> None:
        # The set criterion needs the mask-classification outputs; fail before training
        # rather than at the first batch when the model is not a QueryDiff.
        inner = unwrap(model)
        if not hasattr(inner, "decoder") or not hasattr(inner, "agent"):
            raise ConfigError(
                "method.name: querydiff needs model.name: querydiff (mask-classification "
                f"outputs), got {type(inner).__name__}"
            )

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(require(batch, "image", self.name))
        label = require(batch, "label", self.name)
        total, parts = self.criterion(out, label, self.generator(step, "points"))
        logged = {k: float(v.detach()) for k, v in parts.items()}
        guidance = out.get("guidance_losses")
        if guidance:
            kl, huber = guidance["kl"], guidance["huber"]
            total = total + self.cfg.kl_weight * kl + self.cfg.huber_weight * huber
            logged.update(kl=float(kl.detach()), huber=float(huber.detach()))
        logged["loss"] = float(total.detach())
        return total, logged
