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


class BrightnessContrastConfig(Section):
    """Brightness shifted by U(lo, hi) of the full range, contrast scaled by U(1-c, 1+c).

    The off-road recipe biases brightness darker, (-0.3, 0.1), because its test scenes are
    darker than its training scenes (mean RGB [123,105,94] vs [149,130,107]).
    """

    p: float = Field(default=0.4, ge=0.0, le=1.0)
    brightness: tuple[float, float] = (-0.3, 0.1)
    contrast: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> BrightnessContrastConfig:
        lo, hi = self.brightness
        if not -1.0 <= lo <= hi <= 1.0:
            raise ValueError(f"brightness must satisfy -1 <= lo <= hi <= 1, got {self.brightness}")
        return self


class ClaheConfig(Section):
    """Contrast-limited adaptive histogram equalisation of the lightness channel."""

    p: float = Field(default=0.2, ge=0.0, le=1.0)
    clip_limit: float = Field(default=4.0, gt=0.0, le=40.0)
    tile_grid: int = Field(default=8, ge=1, le=64)


class BlurConfig(Section):
    """Gaussian blur with an odd kernel size drawn from ``kernel`` (inclusive)."""

    p: float = Field(default=0.15, ge=0.0, le=1.0)
    kernel: tuple[int, int] = (3, 5)

    @model_validator(mode="after")
    def _odd(self) -> BlurConfig:
        lo, hi = self.kernel
        if lo < 1 or hi < lo or lo % 2 == 0 or hi % 2 == 0:
            raise ValueError(f"kernel must be odd sizes lo <= hi, got {self.kernel}")
        return self


class AugmentConfig(Section):
    """Train-time augmentation of a dict of same-size views and their label.

    Order: resize -> (random resized crop | random crop with ignore padding) -> h-flip
    (all shared) -> brightness/contrast, CLAHE, blur (per view, if set) -> colour jitter
    (independent per view unless ``shared_jitter``) -> normalise. An unlabelled target image
    (cross-domain mixing) gets its own geometry draw and no photometric step.
    """

    resize: tuple[int, int] | None = None  # (H, W); SDGPA (512, 1024)
    # (H, W) the unlabelled target image (cross-domain mixing) is resized to instead of
    # `resize`, before its own random crop and flip (DAFormer: GTA5 sources at 720x1280,
    # Cityscapes targets at 512x1024). None: `resize`. The target never gets the photometric
    # steps: the EMA teacher labels the clean image (DACS); mixed images get the method's own
    # strong augmentation.
    target_resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None  # (H, W); SDGPA (384, 768)
    # RandomResizedCrop: area fraction and aspect-ratio ranges; output size is `crop`.
    rrc_scale: tuple[float, float] | None = None  # off-road (0.5, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(default=0.5, ge=0.0, le=1.0)
    color_jitter: ColorJitterConfig | None = Field(default_factory=ColorJitterConfig)
    shared_jitter: bool = False
    # Off-road extras, drawn per view before the colour jitter (all off by default).
    brightness_contrast: BrightnessContrastConfig | None = None
    clahe: ClaheConfig | None = None
    blur: BlurConfig | None = None
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _valid(self) -> AugmentConfig:
        for key in ("resize", "crop", "target_resize"):
            size = getattr(self, key)
            if size is not None and (size[0] < 1 or size[1] < 1):
                raise ValueError(f"{key} must be positive (H, W), got {size}")
        if self.rrc_scale is not None:
            lo, hi = self.rrc_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"rrc_scale must satisfy 0 < lo <= hi <= 1, got {self.rrc_scale}")
            if self.crop is None:
                raise ValueError("rrc_scale needs crop (the output size)")
        if self.target_resize is not None and self.crop is None:
            raise ValueError(
                "target_resize needs crop: the target's crop must match the source's size"
            )
        lo, hi = self.rrc_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"rrc_ratio must satisfy 0 < lo <= hi, got {self.rrc_ratio}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be > 0")
        return self
