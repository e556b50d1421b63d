"""Adaptation-method configs: one class per method, a union discriminated on ``name``.

Every loss weight is a bounded float so that Tune search spaces and overrides that leave the
sensible range fail validation instead of training a useless model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from shiftlab.config.base import MethodSection, Section
from shiftlab.config.querydiff import QueryDiffMethodConfig

AlignMetric = Literal["cosine", "l2", "mmd"]


class AlignmentConfig(Section):
    """Feature alignment between two pixel-aligned views: sum_l w_l * L(f_l^a, f_l^b)."""

    metric: AlignMetric = "cosine"
    # Indices into the model's `features` list (shallow -> deep); negative indices count back.
    layers: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)
    # One weight per layer; None: 1.0 each.
    layer_weights: list[float] | None = None
    # MMD only: pixel features subsampled per layer, and Gaussian bandwidth multipliers of
    # the mean pairwise squared distance.
    mmd_samples: int = Field(default=256, ge=2, le=65536)
    mmd_bandwidths: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0], min_length=1
    )

    @model_validator(mode="after")
    def _weights_match(self) -> AlignmentConfig:
        if self.layer_weights is not None:
            if len(self.layer_weights) != len(self.layers):
                raise ValueError(
                    f"layer_weights has {len(self.layer_weights)} entries but layers has "
                    f"{len(self.layers)}: give one weight per layer"
                )
            if any(w < 0 for w in self.layer_weights):
                raise ValueError("layer_weights must be >= 0")
        if any(b <= 0 for b in self.mmd_bandwidths):
            raise ValueError("mmd_bandwidths must be > 0")
        return self

    def weights(self) -> list[float]:
        return (
            list(self.layer_weights) if self.layer_weights is not None else [1.0] * len(self.layers)
        )


class SourceOnlyConfig(MethodSection):
    """Plain supervised training on the source view (the baseline every method must beat)."""

    name: Literal["source_only"] = "source_only"
    source_view: str = "source"


class SDGPAConfig(MethodSection):
    """SDGPA progressive adaptation: stage 1 (source, intermediate), stage 2 (target, intermediate)."""

    generated_modes: ClassVar[frozenset[str]] = frozenset({"intermediate", "target"})

    name: Literal["sdgpa"] = "sdgpa"
    stage1_epochs: int = Field(default=100, ge=0)
    stage2_epochs: int = Field(default=100, ge=0)
    source_view: str = "source"
    intermediate_view: str = "intermediate"
    target_view: str = "target"
    # ZoDi's similarity term w * (-cos(GAP(layer4_a), GAP(layer4_b))): 0.1 in ZoDi, 0 in SDGPA.
    zodi_weight: float = Field(default=0.0, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _some_epochs(self) -> SDGPAConfig:
        if self.stage1_epochs + self.stage2_epochs == 0:
            raise ValueError("stage1_epochs + stage2_epochs must be > 0")
        return self

    def stage_epochs(self, epochs: int = 0) -> dict[str, int]:
        """SDGPA's own stage lengths (train.epochs does not apply)."""
        return {"stage1": self.stage1_epochs, "stage2": self.stage2_epochs}


class FeatureAlignConfig(MethodSection):
    """CARLA-4AGT domain generalisation: CE on two appearances + lambda * feature alignment."""

    name: Literal["feature_align"] = "feature_align"
    # The trainer draws two distinct appearances per sample from this list.
    appearances: list[str] = Field(min_length=2)
    align_weight: float = Field(default=0.1, ge=0.0, le=100.0)
    align: AlignmentConfig = Field(default_factory=AlignmentConfig)

    @model_validator(mode="after")
    def _distinct(self) -> FeatureAlignConfig:
        if len(set(self.appearances)) != len(self.appearances):
            raise ValueError(f"appearances must be distinct, got {self.appearances}")
        return self


class StrongAugmentConfig(Section):
    """DACS's photometric augmentation of each mixed image (its labels are untouched): with
    probability ``color_jitter_p`` a colour jitter of strength ``color_jitter_strength``
    (brightness, contrast, saturation factors in 1 ± s, hue shift in ± s), with probability
    ``blur_p`` a Gaussian blur (sigma in [0.15, 1.15], kernel about a tenth of the short side).
    """

    enabled: bool = True
    color_jitter_strength: float = Field(default=0.2, ge=0.0, le=0.5)
    color_jitter_p: float = Field(default=0.2, ge=0.0, le=1.0)
    blur_p: float = Field(default=0.5, ge=0.0, le=1.0)


class ClassMixConfig(MethodSection):
    """DACS: EMA-teacher pseudo-labels on target, ClassMix source into target.

    With two or more ``appearances`` it is the CARLA-4AGT UDA variant: a second source
    appearance is mixed with the same mask, and alignment terms are added.
    """

    needs_target_images: ClassVar[bool] = True

    name: Literal["classmix"] = "classmix"
    source_view: str = "source"
    target_view: str = "target"
    ema_alpha: float = Field(default=0.999, ge=0.0, le=1.0)
    pseudo_threshold: float = Field(default=0.968, ge=0.0, le=1.0)
    target_weight: float = Field(default=1.0, ge=0.0, le=10.0)
    strong_augment: StrongAugmentConfig = Field(default_factory=StrongAugmentConfig)
    # CARLA-4AGT variant (empty: plain DACS).
    appearances: list[str] = Field(default_factory=list)
    align_weight: float = Field(default=0.0, ge=0.0, le=100.0)  # lambda_A (source a vs b)
    mix_align_weight: float = Field(default=0.0, ge=0.0, le=100.0)  # lambda_M (mixed a vs b)
    align: AlignmentConfig = Field(default_factory=AlignmentConfig)

    @model_validator(mode="after")
    def _variant(self) -> ClassMixConfig:
        if len(self.appearances) == 1:
            raise ValueError("appearances needs at least two entries (or none for plain DACS)")
        if len(set(self.appearances)) != len(self.appearances):
            raise ValueError(f"appearances must be distinct, got {self.appearances}")
        if not self.appearances and (self.align_weight > 0 or self.mix_align_weight > 0):
            raise ValueError("align_weight / mix_align_weight need two or more appearances")
        return self


class RareClassSamplingConfig(Section):
    """DAFormer's rare-class sampling (RCS, Hoyer et al. CVPR 2022, Eq. 6): a class c is drawn
    with P(c) = softmax((1 - f_c) / temperature) over the source classes (f_c: the class's share
    of all labelled source pixels), then a source image uniformly among those holding more than
    ``min_pixels`` pixels of c; its random crop is redrawn (up to ``crop_tries`` times) until it
    holds more than ``min_pixels * min_crop_ratio`` pixels of c. DAFormer: 0.01, 3000, 0.5, 10.
    """

    temperature: float = Field(default=0.01, gt=0.0, le=100.0)
    min_pixels: int = Field(default=3000, ge=0)
    min_crop_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    crop_tries: int = Field(default=10, ge=1, le=100)


# DAFormer's thing classes for the ImageNet feature distance: Cityscapes train ids 6, 7, 11-18.
CITYSCAPES_THINGS: tuple[str, ...] = (
    "traffic light",
    "traffic sign",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)


class FeatureDistanceConfig(Section):
    """DAFormer's thing-class ImageNet feature distance (Sec. 3.3, Eq. 7-8): the L2 distance
    between the bottleneck features of the trained encoder and of a frozen copy of its initial
    (ImageNet) weights on the source image, averaged over the feature pixels whose downscaled
    label is a thing class. ``weight`` is lambda_FD (0.005).
    """

    weight: float = Field(default=0.005, ge=0.0, le=10.0)
    # Class names; None: DAFormer's Cityscapes things (CITYSCAPES_THINGS) that the label space
    # has (cityscapes16 lacks truck and train). A name the label space lacks is an error.
    thing_classes: list[str] | None = Field(default=None, min_length=1)
    # A feature cell keeps the label covering at least this share of it (else ignored).
    min_ratio: float = Field(default=0.75, ge=0.0, le=1.0)
    # Which `features` entry is the bottleneck (the deepest stage).
    layer: int = -1


class MICConfig(Section):
    """Masked image consistency (MIC, Hoyer et al. CVPR 2023, Eq. 3-5): the student sees the
    target image colour-augmented (its own draw of ``strong_augment``, MIC's
    ``separatetrgaug``) with ``mask_ratio`` of its ``block_size`` x ``block_size`` patches set
    to the mean colour, and is trained against the teacher's pseudo-label of the clean image
    with the same confidence weights; ``weight`` is lambda_M (1). MIC draws every patch
    independently (ratio 0.7 in expectation); here exactly round(ratio * patches) per image.
    """

    weight: float = Field(default=1.0, ge=0.0, le=10.0)
    mask_ratio: float = Field(default=0.7, ge=0.0, lt=1.0)
    block_size: int = Field(default=64, ge=1, le=4096)
    color_augment: bool = True


class DAFormerConfig(ClassMixConfig):
    """The DAFormer UDA recipe (Hoyer et al. CVPR 2022) on top of DACS, in one place:

    - self-training (DACS): EMA teacher alpha 0.999 fed the *clean* target image, pseudo-labels
      weighted by the share of pixels with confidence > 0.968, ClassMix of half the source
      classes, colour jitter + blur of the mixed image (``ClassMixConfig``);
    - rare-class sampling of source images (``rcs``; None: uniform);
    - thing-class ImageNet feature distance (``fd``; None: off);
    - pseudo-label weight 0 in the top ``pseudo_ignore_top`` and bottom
      ``pseudo_ignore_bottom`` rows of the target crop (Cityscapes: 15 and 120, the ego car
      and rectification border; 0 elsewhere);
    - optionally MIC's masked image consistency (``mic``; None: off).

    The optimiser (AdamW 6e-5, head x10, wd 0.01, 1,500-iteration warm-up, poly 1.0, 40k
    iterations) and the network (SegFormer MiT-B5 + DAFormer head) are the experiment's
    ``optim`` and ``model`` sections (experiments/_daformer_base.yaml). With ``appearances``
    it is the CARLA-4AGT UDA variant built on DAFormer (L_S + L_T + lambda_A L_A + lambda_M L_M
    plus the terms above).
    """

    name: Literal["daformer"] = "daformer"  # type: ignore[assignment]
    rcs: RareClassSamplingConfig | None = Field(default_factory=RareClassSamplingConfig)
    fd: FeatureDistanceConfig | None = Field(default_factory=FeatureDistanceConfig)
    pseudo_ignore_top: int = Field(default=0, ge=0)
    pseudo_ignore_bottom: int = Field(default=0, ge=0)
    mic: MICConfig | None = None


class OffroadConfig(MethodSection):
    """The off-road recipe: ce_weight * weighted CE + dice_weight * soft Dice."""

    name: Literal["offroad"] = "offroad"
    source_view: str = "source"
    ce_weight: float = Field(default=0.5, ge=0.0, le=10.0)
    dice_weight: float = Field(default=0.5, ge=0.0, le=10.0)
    # Per-class CE weights by class name (classes not named: 1.0).
    class_weights: dict[str, float] = Field(default_factory=dict)
    dice_smooth: float = Field(default=1.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _positive(self) -> OffroadConfig:
        bad = {k: v for k, v in self.class_weights.items() if not 0.0 <= v <= 100.0}
        if bad:
            raise ValueError(f"class_weights must lie in [0, 100], got {bad}")
        if self.ce_weight + self.dice_weight == 0:
            raise ValueError("ce_weight + dice_weight must be > 0")
        return self


# Every method config class; the union below is built from it (append new methods here).
METHOD_CONFIG_TYPES: tuple[type[MethodSection], ...] = (
    SourceOnlyConfig,
    SDGPAConfig,
    FeatureAlignConfig,
    ClassMixConfig,
    DAFormerConfig,
    OffroadConfig,
    QueryDiffMethodConfig,
)

if TYPE_CHECKING:
    # What code may rely on of any method config; pydantic validates the union below.
    MethodConfig = MethodSection
else:
    MethodConfig = Annotated[Union[METHOD_CONFIG_TYPES], Field(discriminator="name")]  # noqa: UP007
