"""SegFormer config: a MiT encoder (B0..B5) with SegFormer's all-MLP head or DAFormer's head.

The encoder hyper-parameters of each variant are fixed tables in ``shiftlab.models.segformer``
(the published ones); this section only chooses among them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from shiftlab.config.base import ModelSection, check_pretrained_value

MiTVariant = Literal["b0", "b1", "b2", "b3", "b4", "b5", "tiny"]


class SegFormerConfig(ModelSection):
    """A Mix Transformer encoder and a decode head, built through ``transformers``.

    ``head: mlp`` is SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021); ``head: daformer``
    is DAFormer's context-aware fusion (Hoyer et al., CVPR 2022, ``daformer_sepaspp``).
    """

    name: Literal["segformer"] = "segformer"
    # b0..b5: the published MiT encoders; tiny: a few-thousand-parameter random encoder for
    # CPU tests and demos (no published weights exist for it).
    variant: MiTVariant = "b5"
    # Required: a local folder written by `save_pretrained` holding a SegFormer/MiT encoder
    # (e.g. nvidia/mit-b5 downloaded elsewhere), or `none` for an explicit random init.
    # Nothing is ever downloaded.
    pretrained: str
    head: Literal["mlp", "daformer"] = "daformer"
    # Width of the decoder. None: the published width (MLP head: 256 for b0/b1, 768 for
    # b2..b5; DAFormer head: 256; tiny: 32).
    head_channels: int | None = Field(default=None, ge=1, le=4096)
    # Dropout before the 1x1 classifier (channel-wise, as mmseg's decode heads).
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Dilations of DAFormer's depthwise-separable ASPP fusion (rate 1 is a 1x1 conv there).
    fusion_dilations: tuple[int, ...] = (1, 6, 12, 18)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_named(cls, value: str) -> str:
        return check_pretrained_value(value)

    @field_validator("fusion_dilations")
    @classmethod
    def _dilations_valid(cls, rates: tuple[int, ...]) -> tuple[int, ...]:
        if not rates or any(r < 1 for r in rates) or len(set(rates)) != len(rates):
            raise ValueError(
                f"fusion_dilations must be distinct positive dilation rates, got {list(rates)}"
            )
        return rates
