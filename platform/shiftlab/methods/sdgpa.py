"""SDGPA progressive adaptation (and ZoDi's similarity term)."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.config.method import SDGPAConfig
from shiftlab.methods.base import Batch, Method, paired_ce
from shiftlab.methods.losses import zodi_similarity
from shiftlab.methods.registry import register_method


@register_method("sdgpa")
class SDGPA(Method):
    """Stage 1 trains on (source, intermediate) pairs, stage 2 on (target, intermediate).

    Both views of a pair share the label: loss CE(a) + CE(b) [+ w * -cos(GAP(f_a), GAP(f_b))
    on the deepest feature stage]. The trainer rebuilds the optimizer between stages.
    """

    name = "sdgpa"
    cfg: SDGPAConfig

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        first = self.cfg.source_view if stage == "stage1" else self.cfg.target_view
        return {"image": first, "image_b": self.cfg.intermediate_view}

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out_a, out_b, total, logs = paired_ce(model, batch, self.name, self.ignore_index)
        if self.cfg.zodi_weight > 0:
            sim = zodi_similarity(out_a["features"][-1], out_b["features"][-1])
            total = total + self.cfg.zodi_weight * sim
            logs["zodi_sim"] = sim.item()
        logs["loss"] = total.item()
        return total, logs
