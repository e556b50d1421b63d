"""A frozen DINOv2-architecture ViT (timm) refined by Rein-style low-rank token adapters.

Per block, a set of learnable tokens (``tokens = A @ B``, ``A: T x r``, ``B: r x C``) refines the
block's patch features: each feature attends to the tokens, and the attended token content is
added back residually. The ViT's own weights never train (they are not even handed to the
optimizer); only the adapters, and everything after the backbone, learn.

Besides the refined features, every adapter also reports its *token states* for the image: the
tokens after attending to that block's features. These image-dependent states are the material
the agent queries are built from (``agent.py``).
"""

from __future__ import annotations

import logging
import math

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from shiftlab.config.querydiff import QueryDiffModelConfig
from shiftlab.models.weights import read_state_dict, resolve_weight_file
from shiftlab.utils.errors import ConfigError

log = logging.getLogger(__name__)


class ReinAdapter(nn.Module):
    """Learnable low-rank tokens that refine one block's patch features."""

    def __init__(self, dim: int, num_tokens: int, rank: int) -> None:
        super().__init__()
        # Each factor ~ N(0, s^2) with r * s^4 = 2 / (T + C): the product A @ B then has the
        # Xavier variance of a full T x C token matrix (the Rein initialisation).
        std = (2.0 / (rank * (num_tokens + dim))) ** 0.25
        self.token_a = nn.Parameter(torch.randn(num_tokens, rank) * std)
        self.token_b = nn.Parameter(torch.randn(rank, dim) * std)
        self.token_to_feat = nn.Linear(dim, dim)
        self.delta = nn.Linear(dim, dim)
        # Zero output projection: at initialisation the adapted ViT computes exactly the frozen
        # ViT's features, so pretrained behaviour is the starting point.
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)
        self.scale = dim**-0.5

    def tokens(self) -> torch.Tensor:
        return self.token_a @ self.token_b

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B,N,C)`` patch tokens -> (refined feats, token states (B,T,C))."""
        tokens = self.tokens()
        logits = torch.einsum("bnc,tc->bnt", feats, tokens) * self.scale
        # Features attend to tokens (softmax over tokens) -> the refinement.
        delta = torch.einsum("bnt,tc->bnc", logits.softmax(dim=-1), self.token_to_feat(tokens))
        refined = feats + self.delta(delta + feats)
        # Tokens attend to features (softmax over pixels) -> what each token saw in this image.
        states = tokens + torch.einsum("bnt,bnc->btc", logits.softmax(dim=1), feats)
        return refined, states


def _load_vit_weights(vit: nn.Module, path: str) -> None:
    file = resolve_weight_file(path)
    state = read_state_dict(file)
    # timm's filter converts the official DINOv2 layout (mask_token, w12/w3) and resamples the
    # positional embedding (and the patch embedding when patch_size is overridden).
    state = checkpoint_filter_fn(state, vit)
    own = vit.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("head")]
    if missing:
        raise ConfigError(
            f"model.pretrained: {file} lacks {len(missing)} of the ViT's {len(own)} tensors "
            f"(first: {', '.join(missing[:5])}); is it a checkpoint of a different backbone?"
        )
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"model.pretrained: {file}: tensor {k} has shape {tuple(state[k].shape)}, "
            f"the ViT needs {tuple(own[k].shape)}"
        )
    vit.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("querydiff: loaded ViT weights from %s", file)


class AdaptedViT(nn.Module):
    """Frozen timm ViT + one ReinAdapter per block.

    ``forward(x)`` returns the adapted patch-grid maps of ``feature_blocks`` (B,C,h,w) and the
    token states of every block, shallow -> deep.
    """

    def __init__(self, cfg: QueryDiffModelConfig) -> None:
        super().__init__()
        try:
            self.vit = timm.create_model(
                cfg.backbone,
                pretrained=False,
                img_size=cfg.img_size,
                dynamic_img_size=True,
                dynamic_img_pad=True,
                num_classes=0,
                **cfg.backbone_kwargs,
            )
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"model.backbone: cannot build {cfg.backbone!r}: {exc}") from exc
        if not hasattr(self.vit, "blocks") or not hasattr(self.vit, "_pos_embed"):
            raise ConfigError(f"model.backbone: {cfg.backbone!r} is not a timm VisionTransformer")
        depth = len(self.vit.blocks)
        if cfg.feature_blocks[-1] >= depth:
            raise ConfigError(
                f"model.feature_blocks: {list(cfg.feature_blocks)} but {cfg.backbone} has "
                f"{depth} blocks (0..{depth - 1})"
            )
        if cfg.pretrained:
            _load_vit_weights(self.vit, cfg.pretrained)
        else:
            log.warning(
                "querydiff: model.pretrained is not set; the frozen ViT keeps its RANDOM "
                "initialisation (only useful for tests)"
            )
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.embed_dim: int = self.vit.embed_dim
        self.depth = depth
        self.feature_blocks = tuple(cfg.feature_blocks)
        self.adapters = nn.ModuleList(
            ReinAdapter(self.embed_dim, cfg.adapter_tokens, cfg.adapter_rank) for _ in range(depth)
        )

    def train(self, mode: bool = True) -> AdaptedViT:
        super().train(mode)
        # The frozen ViT always runs as in inference (no drop-path / dropout noise).
        self.vit.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        vit = self.vit
        tokens = vit.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
        grid = tokens.shape[1:3]
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        prefix = vit.num_prefix_tokens
        maps: list[torch.Tensor] = []
        states: list[torch.Tensor] = []
        for i, (block, adapter) in enumerate(zip(vit.blocks, self.adapters, strict=True)):
            tokens = block(tokens)
            patches, state = adapter(tokens[:, prefix:])
            tokens = torch.cat([tokens[:, :prefix], patches], dim=1)
            states.append(state)
            if i in self.feature_blocks:
                b, n, c = patches.shape
                maps.append(patches.transpose(1, 2).reshape(b, c, grid[0], grid[1]))
        return maps, states


class MultiScaleNeck(nn.Module):
    """Patch-grid maps -> strides 4/8/16/32 (deconv x2 twice / deconv / identity / max-pool).

    Each map is first resized to the stride-16 grid of the input (the patch size is 14, not 16)
    and projected to ``dim`` channels, so the resampling runs on the narrow width.
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        groups = math.gcd(32, dim)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_dim, dim, 1, bias=False), nn.GroupNorm(groups, dim))
            for _ in range(4)
        )
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.GroupNorm(groups, dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )
        self.up8 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down32 = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, maps: list[torch.Tensor], image_hw: tuple[int, int]) -> list[torch.Tensor]:
        size16 = (math.ceil(image_hw[0] / 16), math.ceil(image_hw[1] / 16))
        resized = [
            proj(F.interpolate(m, size=size16, mode="bilinear", align_corners=False))
            for proj, m in zip(self.proj, maps, strict=True)
        ]
        return [self.up4(resized[0]), self.up8(resized[1]), resized[2], self.down32(resized[3])]
