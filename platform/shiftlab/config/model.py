"""Model configs: one class per architecture, a union discriminated on ``name``.

To add an architecture, define its config class (``name: Literal["..."]``) and append it to
``MODEL_CONFIG_TYPES``; ``ModelConfig`` is rebuilt from that tuple.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field, field_validator

from shiftlab.config.base import ModelSection, check_pretrained_value
from shiftlab.config.querydiff import QueryDiffModelConfig
from shiftlab.config.segformer import SegFormerConfig


class DeepLabV3PlusConfig(ModelSection):
    """DeepLabV3+ on a timm backbone (ASPP on the deepest stage, stride-4 low-level skip)."""

    name: Literal["deeplabv3plus"] = "deeplabv3plus"
    # Any timm model that supports `features_only` with a stride-4 stage (resnet18/50/101, ...).
    backbone: str = "resnet50"
    # Passed to timm as `output_stride`: dilation replaces striding in the last stage(s).
    # The SDGPA reference runs at 32; 16 is the usual DeepLab setting.
    output_stride: Literal[8, 16, 32] = 16
    # Local backbone weights: a state-dict file (.pth/.pt/.bin/.safetensors) or a directory
    # holding one (a timm/Hugging Face model folder); `none` asks for random initialisation.
    # Required: a run never starts from random weights because a path was forgotten.
    pretrained: str
    # Kept as configured at every output stride (the reference does not rescale them).
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    low_level_channels: int = Field(default=48, ge=1, le=1024)
    decoder_channels: int = Field(default=256, ge=1, le=2048)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_given(cls, value: str) -> str:
        return check_pretrained_value(value)

    @field_validator("aspp_rates")
    @classmethod
    def _rates_positive(cls, rates: tuple[int, ...]) -> tuple[int, ...]:
        if not rates or any(r < 1 for r in rates):
            raise ValueError("aspp_rates must be a non-empty list of positive dilation rates")
        return rates


# Every model config class; the union below is built from it (append new architectures here).
MODEL_CONFIG_TYPES: tuple[type[ModelSection], ...] = (
    DeepLabV3PlusConfig,
    QueryDiffModelConfig,
    SegFormerConfig,
)


def _discriminated(types: tuple[type[ModelSection], ...]) -> object:
    # A one-member Union collapses to the member itself, and pydantic rejects a discriminator
    # on a non-union, so the discriminator is only attached when there is a choice to make.
    if len(types) == 1:
        return types[0]
    return Annotated[Union[types], Field(discriminator="name")]  # noqa: UP007


if TYPE_CHECKING:
    # What code may rely on of any model config; pydantic validates the union below.
    ModelConfig = ModelSection
else:
    ModelConfig = _discriminated(MODEL_CONFIG_TYPES)
