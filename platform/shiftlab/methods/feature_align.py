"""CARLA-4AGT domain generalisation: two appearances of one scene, features aligned."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.config.method import AlignmentConfig, FeatureAlignConfig
from shiftlab.methods.base import Batch, Method, Output, check_layers, paired_ce
from shiftlab.methods.losses import alignment_loss
from shiftlab.methods.registry import register_method


def aligned_features(
    cfg: AlignmentConfig, out_a: Output, out_b: Output, generator: torch.Generator, key: str
) -> torch.Tensor:
    """The configured alignment loss between two forward outputs' ``features``."""
    check_layers(cfg.layers, out_a["features"], f"{key}.layers")
    return alignment_loss(
        out_a["features"],
        out_b["features"],
        cfg.metric,
        cfg.layers,
        cfg.weights(),
        cfg.mmd_samples,
        cfg.mmd_bandwidths,
        generator,
    )


@register_method("feature_align")
class FeatureAlign(Method):
    """loss = CE(a) + CE(b) + align_weight * sum_l w_l L(f_l^a, f_l^b).

    ``image`` / ``image_b`` are two distinct appearances of the same scene (pixel-aligned,
    shared label), drawn by the trainer from ``pair_views``.
    """

    name = "feature_align"
    cfg: FeatureAlignConfig

    def __init__(self, cfg: FeatureAlignConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.pair_views = list(cfg.appearances)

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        # The defaults; the trainer replaces them per sample with a draw from pair_views.
        return {"image": self.cfg.appearances[0], "image_b": self.cfg.appearances[1]}

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out_a, out_b, total, logs = paired_ce(model, batch, self.name, self.ignore_index)
        if self.cfg.align_weight > 0:
            align = aligned_features(
                self.cfg.align, out_a, out_b, self.generator(step, "align"), "method.align"
            )
            total = total + self.cfg.align_weight * align
            logs["align"] = align.item()
        logs["loss"] = total.item()
        return total, logs
