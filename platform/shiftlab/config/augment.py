"""Paired augmentation: geometry shared by all views of a sample, colour jitter per view."""

from __future__ import annotations

from pydantic import Field, model_validator

from shiftlab.config.base import Section

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ColorJitterConfig(Section):
    """Factors drawn per view: brightness/contrast/saturation U(1-x, 1+x), hue U(-h, h).

    Defaults are SDGPA's (0.5, 0.5, 0.5, 0.3), applied to every image.
    """

    p: float = Field(default=1.0, ge=0.0, le=1.0)
    brightness: float = Field(default=0.5, ge=0.0, le=1.0)
    contrast: float = Field(default=0.5, ge=0.0, le=1.0)
    saturation: float = Field(default=0.5, ge=0.0, le=1.0)
    hue: float = Field(default=0.3, ge=0.0, le=0.5)


class AugmentConfig(Section):
    """Train-time augmentation of a dict of same-size views and their label.

    Order: resize -> (random resized crop | random crop with ignore padding) -> h-flip
    (all shared) -> colour jitter (independent per view unless ``shared_jitter``) -> normalise.
    """

    resize: tuple[int, int] | None = None  # (H, W); SDGPA (512, 1024)
    crop: tuple[int, int] | None = None  # (H, W); SDGPA (384, 768)
    # RandomResizedCrop: area fraction and aspect-ratio ranges; output size is `crop`.
    rrc_scale: tuple[float, float] | None = None  # off-road (0.5, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(default=0.5, ge=0.0, le=1.0)
    color_jitter: ColorJitterConfig | None = Field(default_factory=ColorJitterConfig)
    shared_jitter: bool = False
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _valid(self) -> AugmentConfig:
        for key in ("resize", "crop"):
            size = getattr(self, key)
            if size is not None and (size[0] < 1 or size[1] < 1):
                raise ValueError(f"{key} must be positive (H, W), got {size}")
        if self.rrc_scale is not None:
            lo, hi = self.rrc_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"rrc_scale must satisfy 0 < lo <= hi <= 1, got {self.rrc_scale}")
            if self.crop is None:
                raise ValueError("rrc_scale needs crop (the output size)")
        lo, hi = self.rrc_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"rrc_ratio must satisfy 0 < lo <= hi, got {self.rrc_ratio}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be > 0")
        return self
