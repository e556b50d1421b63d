"""A frozen DINOv2-architecture ViT (timm) refined by Rein's layer-shared low-rank adapters.

Rein ("Stronger, Fewer, & Superior", Wei et al., CVPR 2024; ``LoRAReins`` in its code, which
QueryDiff reuses with token length 100 and rank 16) keeps ONE adapter module for the whole ViT:

* per layer ``l`` only a low-rank token set ``tokens_l = A_l @ B_l`` (``A: (L, T, r)``,
  ``B: (L, r, C)``) is learned;
* the two MLPs ``token_to_feat`` and ``delta`` (C x C each) are shared by every layer.

After block ``l`` each patch feature ``f`` attends to ``tokens_l`` (softmax over tokens, scaled by
``C ** -0.5``) and is refined by ``f + scale * delta(sum_t a_t * token_to_feat(tokens_l[t]) + f)``,
where the sum leaves out token 0 (it only takes part in the softmax, as in Rein's code). The
ViT's own weights never train (they are not even handed to the optimizer).

Besides the refined features, the adapter also reports per layer its *token states* for the
image: the tokens after attending to that layer's features (softmax over pixels). These
image-dependent states are the material the agent queries are built from (``agent.py``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from shiftlab.config.querydiff import QueryDiffModelConfig
from shiftlab.models.weights import pretrained_weights, read_state_dict, resolve_weight_file
from shiftlab.utils.errors import ConfigError

log = logging.getLogger(__name__)


class Reins(nn.Module):
    """Rein's adapters for a whole ViT: per-layer low-rank tokens, layer-shared MLPs.

    Trainable parameters: ``L*T*r + L*r*C + 2*(C*C + C)`` (+1 for the learnable scale when
    ``zero_init`` is off): 2.53M for ViT-L (L=24, C=1024, T=100, r=16); only the tokens grow
    with the depth. (Rein's ~3M also counts its token->query head, replaced here by ``agent.py``.)

    ``zero_init=True`` is Rein's ``zero_mlp_delta_f`` mode: ``delta`` starts at zero and the
    scale is the constant 1, so the adapted ViT starts as exactly the frozen ViT.
    ``zero_init=False`` is Rein's default: Kaiming-initialised ``delta`` and a learnable scale
    starting at 1e-3.
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_tokens: int,
        rank: int,
        patch_size: int,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.tokens_a = nn.Parameter(torch.empty(num_layers, num_tokens, rank))
        self.tokens_b = nn.Parameter(torch.empty(num_layers, rank, dim))
        # Rein's uniform bound for the low-rank factors: sqrt(6 / (3 p^2 + sqrt(C r))).
        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + math.sqrt(dim * rank)))
        nn.init.uniform_(self.tokens_a, -bound, bound)
        nn.init.uniform_(self.tokens_b, -bound, bound)
        self.token_to_feat = nn.Linear(dim, dim)
        self.delta = nn.Linear(dim, dim)
        self.attn_scale = dim**-0.5
        self.scale: nn.Parameter | float
        if zero_init:
            nn.init.zeros_(self.delta.weight)
            nn.init.zeros_(self.delta.bias)
            self.scale = 1.0
        else:
            self.scale = nn.Parameter(torch.tensor(1e-3))

    def tokens(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s (T, C) learnable tokens."""
        return self.tokens_a[layer] @ self.tokens_b[layer]

    def forward(self, feats: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B,N,C)`` patch tokens after block ``layer`` -> (refined feats, token states
        (B,T,C))."""
        tokens = self.tokens(layer)
        logits = torch.einsum("bnc,tc->bnt", feats, tokens) * self.attn_scale
        attn = logits.softmax(dim=-1)
        # Token 0 is in the softmax but contributes no content (Rein's ``attn[:, :, 1:]``).
        delta = torch.einsum("bnt,tc->bnc", attn[..., 1:], self.token_to_feat(tokens[1:]))
        refined = feats + self.delta(delta + feats) * self.scale
        # Tokens attend to features (softmax over pixels) -> what each token saw in this image.
        states = tokens + torch.einsum("bnt,bnc->btc", logits.softmax(dim=1), feats)
        return refined, states


def _load_vit_weights(vit: Any, path: str) -> None:
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
    """Frozen timm ViT + one layer-shared ``Reins`` adapter (``self.adapters``).

    ``forward(x)`` returns the adapted patch-grid maps of ``feature_blocks`` (B,C,h,w) and the
    token states of every block, shallow -> deep.
    """

    def __init__(self, cfg: QueryDiffModelConfig) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(cfg.backbone_kwargs)
        try:
            # A timm VisionTransformer (typed loosely: its blocks are read as attributes).
            vit: Any = timm.create_model(
                cfg.backbone,
                pretrained=False,
                img_size=cfg.img_size,
                dynamic_img_size=True,
                dynamic_img_pad=True,
                num_classes=0,
                **kwargs,
            )
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"model.backbone: cannot build {cfg.backbone!r}: {exc}") from exc
        if getattr(vit, "blocks", None) is None or getattr(vit, "_pos_embed", None) is None:
            raise ConfigError(f"model.backbone: {cfg.backbone!r} is not a timm VisionTransformer")
        depth = len(vit.blocks)
        if cfg.feature_blocks[-1] >= depth:
            raise ConfigError(
                f"model.feature_blocks: {list(cfg.feature_blocks)} but {cfg.backbone} has "
                f"{depth} blocks (0..{depth - 1})"
            )
        # `none`: the frozen ViT keeps its random initialisation (tests, CPU demos).
        weights = pretrained_weights(cfg.pretrained)
        if weights is not None:
            _load_vit_weights(vit, weights)
        vit.requires_grad_(False)
        vit.eval()
        self.vit = vit
        self.embed_dim: int = vit.embed_dim
        self.depth = depth
        self.feature_blocks = tuple(cfg.feature_blocks)
        self.adapters = Reins(
            depth,
            self.embed_dim,
            cfg.adapter_tokens,
            cfg.adapter_rank,
            patch_size=int(vit.patch_embed.patch_size[0]),
            zero_init=cfg.adapter_zero_init,
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
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            # Only the patch tokens are adapted (Rein splits the class token off).
            patches, state = self.adapters(tokens[:, prefix:], i)
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
