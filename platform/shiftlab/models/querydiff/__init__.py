"""QueryDiff (ICML 2025): agent queries with diffusion-model guidance, built from the paper.

``build_querydiff(cfg, num_classes)`` is registered as model ``querydiff``; the loss side lives
in ``criterion.py`` (Mask2Former set criterion) and ``shiftlab.methods.querydiff``.
"""

from __future__ import annotations

from shiftlab.config.querydiff import QueryDiffModelConfig
from shiftlab.models.querydiff.criterion import CriterionWeights, SetCriterion
from shiftlab.models.querydiff.model import QueryDiff
from shiftlab.models.registry import register_model


@register_model("querydiff")
def build_querydiff(cfg: QueryDiffModelConfig, num_classes: int) -> QueryDiff:
    return QueryDiff(cfg, num_classes)


__all__ = ["CriterionWeights", "QueryDiff", "SetCriterion", "build_querydiff"]
