"""QueryDiff configs (ICML 2025): the model section and the method section.

The model holds the architecture and the diffusion-guidance branch; the method holds every loss
weight. The guidance losses are computed by the model (they need its internal agent queries and
the diffusion features) but returned *unweighted*; the method weighs them, so each weight has
exactly one home and a Tune search space sweeps it in the method section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shiftlab.config.base import MethodSection, ModelSection, Section, check_pretrained_value

DiffusionDType = Literal["float32", "float16", "bfloat16"]


class QueryDiffDiffusionConfig(Section):
    """The frozen diffusion model whose UNet decoder features guide the agent queries."""

    # A local Stable Diffusion 2 directory with unet/, vae/, text_encoder/, tokenizer/ (and
    # optionally scheduler/). Nothing is downloaded.
    model_dir: str | None = None
    # A tiny random-weight UNet + VAE built in code (tests, demo). Exclusive with model_dir.
    tiny: bool = False
    # (weak, strong): D_w is taken at the first timestep, D_s at the second (paper: 0 and 100).
    timesteps: tuple[int, int] = (0, 100)
    # Indices of UNet decoder up-blocks whose outputs are captured (concatenated on channels at
    # the coarsest captured resolution). SD-2: block 1 (1280 ch, latent/2) + 2 (640 ch, latent).
    up_blocks: tuple[int, ...] = (1, 2)
    # on_the_fly: run VAE + UNet every step; cached: one file per augmented input (see
    # models/querydiff/diffusion.py for the key), computed on a miss.
    features: Literal["on_the_fly", "cached"] = "on_the_fly"
    cache_dir: str | None = None
    # Storage dtype of cached features (float32 reproduces on-the-fly bit for bit).
    cache_dtype: Literal["float32", "float16"] = "float32"
    # Compute dtype of the UNet/VAE (features are returned in float32).
    dtype: DiffusionDType = "float32"
    # Resize the image to this square size before the VAE (None: the crop's own size; the
    # size must then be a multiple of the VAE x UNet downsampling, 64 for SD-2).
    image_size: int | None = Field(default=None, ge=8, le=2048)
    # Seeds the noise added at each timestep (together with the image content).
    seed: int = 0

    @field_validator("timesteps")
    @classmethod
    def _timesteps_range(cls, ts: tuple[int, int]) -> tuple[int, int]:
        if any(not 0 <= t < 1000 for t in ts):
            raise ValueError(f"timesteps must lie in [0, 1000), got {list(ts)}")
        return ts

    @field_validator("up_blocks")
    @classmethod
    def _blocks_valid(cls, blocks: tuple[int, ...]) -> tuple[int, ...]:
        if not blocks or any(b < 0 for b in blocks) or len(set(blocks)) != len(blocks):
            raise ValueError(f"up_blocks must be distinct non-negative indices, got {list(blocks)}")
        return blocks

    @model_validator(mode="after")
    def _source(self) -> QueryDiffDiffusionConfig:
        if self.tiny and self.model_dir is not None:
            raise ValueError("diffusion: set either model_dir or tiny: true, not both")
        if self.features == "cached" and not self.cache_dir:
            raise ValueError("diffusion.cache_dir is required when diffusion.features is 'cached'")
        return self


class QueryDiffModelConfig(ModelSection):
    """Frozen DINOv2 ViT + Rein adapters, agent queries, diffusion guidance, Mask2Former head."""

    name: Literal["querydiff"] = "querydiff"
    # A timm DINOv2-architecture ViT; `backbone_kwargs` override its shape (tests: depth 4,
    # embed_dim 64, num_heads 2) or e.g. patch_size 16 as in the Rein conversion.
    backbone: str = "vit_large_patch14_dinov2"
    backbone_kwargs: dict[str, int | float | bool] = Field(default_factory=dict)
    # The positional-embedding grid is built for this size and interpolated for others.
    img_size: int = Field(default=512, ge=14, le=4096)
    # Local ViT weights (official DINOv2 .pth or a timm file); `none`: random init (tests).
    pretrained: str
    # Blocks whose (adapted) outputs become the stride 4/8/16/32 features (0-based).
    feature_blocks: tuple[int, int, int, int] = (7, 11, 15, 23)
    # Rein's layer-shared adapters: T tokens per layer of rank r (QueryDiff: 100, 16).
    adapter_tokens: int = Field(default=100, ge=1, le=4096)
    adapter_rank: int = Field(default=16, ge=1, le=1024)
    # True: zero-initialised output MLP with scale 1 (Rein's zero_mlp_delta_f), so training
    # starts from the frozen ViT's features. False: Rein's released default (Kaiming-initialised
    # output MLP, learnable scale starting at 1e-3).
    adapter_zero_init: bool = True
    # Group counts of the agent-query merge, deepest first (reference: 24, 12, 6, 3 for the
    # 24 blocks of ViT-L). None: halve the block count while it stays even and above 3.
    query_groups: tuple[int, ...] | None = None
    num_queries: int = Field(default=100, ge=1, le=1024)
    hidden_dim: int = Field(default=256, ge=8, le=4096)
    num_heads: int = Field(default=8, ge=1, le=64)
    ffn_dim: int = Field(default=2048, ge=8, le=16384)
    decoder_layers: int = Field(default=9, ge=1, le=32)
    # Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over strides
    # 8/16/32 (defaults: 6 layers, 4 points per head and level, FFN 1024; its heads are
    # num_heads) + an FPN step to stride 4. "fpn": a plain top-down FPN (cheaper; not the paper).
    pixel_decoder: Literal["msdeformattn", "fpn"] = "msdeformattn"
    pixel_decoder_layers: int = Field(default=6, ge=1, le=32)
    pixel_decoder_points: int = Field(default=4, ge=1, le=64)
    pixel_decoder_ffn_dim: int = Field(default=1024, ge=8, le=16384)
    masked_attention: bool = True
    # The diffusion-guidance branch (off: a Rein + agent-query Mask2Former without teaching).
    guidance: bool = True
    diffusion: QueryDiffDiffusionConfig = Field(default_factory=QueryDiffDiffusionConfig)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_given(cls, value: str) -> str:
        return check_pretrained_value(value)

    @field_validator("feature_blocks")
    @classmethod
    def _blocks_ordered(cls, blocks: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(b < 0 for b in blocks) or list(blocks) != sorted(set(blocks)):
            raise ValueError(
                f"feature_blocks must be 4 increasing block indices, got {list(blocks)}"
            )
        return blocks

    @model_validator(mode="after")
    def _consistent(self) -> QueryDiffModelConfig:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.query_groups is not None:
            g = self.query_groups
            if any(a % b for a, b in zip(g, g[1:], strict=False)) or list(g) != sorted(
                g, reverse=True
            ):
                raise ValueError(
                    f"query_groups must decrease, each dividing the one before, got {list(g)}"
                )
        if self.guidance and not (self.diffusion.tiny or self.diffusion.model_dir):
            raise ValueError(
                "guidance needs a diffusion model: set diffusion.model_dir (a local SD-2 "
                "directory) or diffusion.tiny: true, or set guidance: false"
            )
        return self


class QueryDiffMethodConfig(MethodSection):
    """Mask2Former set criterion + the two diffusion-guidance losses."""

    name: Literal["querydiff"] = "querydiff"
    source_view: str = "source"
    class_weight: float = Field(default=2.0, ge=0.0, le=100.0)
    mask_weight: float = Field(default=5.0, ge=0.0, le=100.0)
    dice_weight: float = Field(default=5.0, ge=0.0, le=100.0)
    # Weight of the "no object" class in the classification cross-entropy.
    no_object_weight: float = Field(default=0.1, ge=0.0, le=10.0)
    kl_weight: float = Field(default=1.0, ge=0.0, le=100.0)
    huber_weight: float = Field(default=1.0, ge=0.0, le=100.0)
    # Deep supervision: the same losses on every intermediate decoder layer's prediction.
    deep_supervision: bool = True
    # Mask2Former's point losses: the matcher compares masks on num_points uniform random points;
    # each matched mask's losses use num_points importance-sampled points: of
    # oversample_ratio * num_points uniform candidates the importance_sample_ratio * num_points
    # most uncertain ones (|logit| smallest), the rest uniform. Seeded by the run seed and step.
    # None: no sampling, every valid pixel of the stride-4 mask grid (exact; small inputs).
    num_points: int | None = Field(default=12544, ge=16, le=1_000_000)
    oversample_ratio: float = Field(default=3.0, ge=1.0, le=100.0)
    importance_sample_ratio: float = Field(default=0.75, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _some_loss(self) -> QueryDiffMethodConfig:
        if self.class_weight + self.mask_weight + self.dice_weight == 0:
            raise ValueError("class_weight + mask_weight + dice_weight must be > 0")
        return self
