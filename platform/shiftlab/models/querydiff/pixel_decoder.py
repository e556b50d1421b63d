"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder + one FPN step.

Published facts reproduced (Deformable DETR, Zhu et al., ICLR 2021; Mask2Former, Cheng et al.,
CVPR 2022, ``MSDeformAttnPixelDecoder``; QueryDiff/Rein use the same decoder through mmdet):

* ``MSDeformAttn``: every query samples ``points`` locations per head and level around its
  reference point; the sampling offsets (in pixels of each level) and the attention weights
  (softmax over levels x points, per head) are linear functions of the query. Initialisation:
  offset weights 0 and bias on a ring of ``heads`` directions, point ``k`` at distance ``k + 1``
  (direction scaled so its larger coordinate is 1); attention weights 0 (uniform); value and
  output projections Xavier-uniform, biases 0.
* The encoder runs on the stride 8/16/32 levels: per-level 1x1 conv + GroupNorm(32), sine
  positional embedding (normalised, 2*pi) plus a learned level embedding, each layer
  self deformable attention then FFN (ReLU), both post-norm with residual, no dropout.
  Defaults 6 layers, 8 heads, 4 points, FFN 1024; reference points are the pixel centres.
* Stride 4 gets a lateral 1x1 conv + GN, the upsampled (bilinear) stride-8 output added, then
  a 3x3 conv + GN + ReLU; a 1x1 conv turns it into the mask features.
* The decoder runs in float32 (Mask2Former disables autocast there).

The sampling itself is ``grid_sample`` (bilinear, zero padding, ``align_corners=False``): the
pure PyTorch form of the reference kernel, not its CUDA kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.config.querydiff import QueryDiffModelConfig
from shiftlab.models.querydiff.head import sine_position_encoding

Shapes = list[tuple[int, int]]


def _groups(dim: int) -> int:
    # GroupNorm(32) as published; gcd keeps narrow test widths valid.
    return math.gcd(32, dim)


def _c2_xavier(conv: nn.Conv2d) -> None:
    """Detectron2's ``c2_xavier_fill`` (Mask2Former's FPN and mask-feature convs)."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def deform_attn_sample(
    value: torch.Tensor, shapes: Shapes, locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted bilinear samples: ``value (B,S,M,D)`` (levels flattened and concatenated),
    ``locations (B,Q,M,L,P,2)`` xy in [0,1], ``weights (B,Q,M,L,P)`` -> ``(B,Q,M*D)``."""
    b, _, heads, d = value.shape
    q, points = locations.shape[1], locations.shape[4]
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1], align_corners=False
    out = value.new_zeros(b * heads, d, q)
    per_level = value.split([h * w for h, w in shapes], dim=1)
    for level, (v, (h, w)) in enumerate(zip(per_level, shapes, strict=True)):
        v = v.permute(0, 2, 3, 1).reshape(b * heads, d, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(b * heads, q, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = weights[:, :, :, level].transpose(1, 2).reshape(b * heads, 1, q, points)
        # Accumulating level by level keeps one level's samples alive at a time.
        out = out + (sampled * weight).sum(dim=-1)
    return out.view(b, heads * d, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), pure PyTorch."""

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        ring = torch.stack([theta.cos(), theta.sin()], dim=-1)
        ring = ring / ring.abs().max(dim=-1, keepdim=True).values
        # Head h, level l, point k starts at (k + 1) * direction_h pixels from the reference.
        scale = torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = ring.view(self.heads, 1, 1, 2) * scale.expand(1, self.levels, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, source: torch.Tensor, shapes: Shapes
    ) -> torch.Tensor:
        """``query (B,Q,C)``, ``reference (B|1,Q,L,2)`` xy in [0,1] (top-left 0, bottom-right 1),
        ``source (B,S,C)`` the levels' pixels flattened and concatenated -> ``(B,Q,C)``."""
        b, q, _ = query.shape
        m, lv, p = self.heads, self.levels, self.points
        value = self.value_proj(source).view(b, source.shape[1], m, self.dim // m)
        offsets = self.sampling_offsets(query).view(b, q, m, lv, p, 2)
        weights = self.attention_weights(query).view(b, q, m, lv * p).softmax(dim=-1)
        # Offsets are in pixels of each level: normalise by that level's (w, h).
        size = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / size[None, None, None, :, None]
        out = deform_attn_sample(value, shapes, locations, weights.view(b, q, m, lv, p))
        return self.output_proj(out)


class DeformEncoderLayer(nn.Module):
    """Self deformable attention + FFN, each residual then LayerNorm (post-norm)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.attn = MSDeformAttn(dim, levels, heads, points)
        self.norm_attn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim)
        )
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: Shapes
    ) -> torch.Tensor:
        src = self.norm_attn(src + self.attn(src + pos, reference, src, shapes))
        return self.norm_ffn(src + self.ffn(src))


def reference_points(shapes: Shapes, device: torch.device) -> torch.Tensor:
    """Pixel centres ``((j + 0.5) / w, (i + 0.5) / h)`` of every level -> (1, S, L, 2); with no
    padding (valid ratio 1) a pixel's reference point is the same on every level."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))
    return torch.cat(refs, dim=0)[None, :, None, :].expand(-1, -1, len(shapes), -1)


def _conv_gn(dim: int, kernel: int, bias: bool, relu: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, bias=bias)
    layers: list[nn.Module] = [conv, nn.GroupNorm(_groups(dim), dim)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """Strides 4/8/16/32 maps (``dim`` channels each) -> (mask features at stride 4, memories
    at strides 32/16/8 for the transformer decoder), as Mask2Former's pixel decoder."""

    def __init__(
        self, dim: int, heads: int, layers: int = 6, points: int = 4, ffn_dim: int = 1024
    ) -> None:
        super().__init__()
        self.levels = 3  # strides 32, 16, 8 (deep -> shallow, Mask2Former's order)
        self.input_proj = nn.ModuleList(_conv_gn(dim, 1, bias=True) for _ in range(self.levels))
        self.level_embed = nn.Parameter(torch.empty(self.levels, dim))
        self.layers = nn.ModuleList(
            DeformEncoderLayer(dim, heads, self.levels, points, ffn_dim) for _ in range(layers)
        )
        self.lateral = _conv_gn(dim, 1, bias=False)
        self.output = _conv_gn(dim, 3, bias=False, relu=True)
        self.mask_features = nn.Conv2d(dim, dim, 1)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Mask2Former: Xavier for every matrix of the encoder, then the deformable attention's
        # own initialisation; N(0, 1) level embeddings; Xavier input projections.
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        layers: Any = self.layers  # EncoderLayer modules
        for layer in layers:
            layer.attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        projections: Any = self.input_proj  # (Conv2d, GroupNorm) pairs
        for proj in projections:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        lateral: Any = self.lateral
        output: Any = self.output
        for conv in (lateral[0], output[0], self.mask_features):
            _c2_xavier(conv)

    def encode(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The deformable encoder on (stride 32, 16, 8) maps -> the same maps, encoded."""
        srcs, poses, shapes = [], [], []
        for i, m in enumerate(maps):
            shapes.append((int(m.shape[-2]), int(m.shape[-1])))
            srcs.append(self.input_proj[i](m).flatten(2).transpose(1, 2))
            poses.append(sine_position_encoding(m, m.shape[1]) + self.level_embed[i])
        src, pos = torch.cat(srcs, dim=1), torch.cat(poses, dim=1)
        ref = reference_points(shapes, src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        b, _, c = src.shape
        out = src.split([h * w for h, w in shapes], dim=1)
        return [
            o.transpose(1, 2).reshape(b, c, h, w) for o, (h, w) in zip(out, shapes, strict=True)
        ]

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(device_type=maps[0].device.type, enabled=False):
            maps = [m.float() for m in maps]
            memories = self.encode([maps[3], maps[2], maps[1]])
            lateral = self.lateral(maps[0])
            up = F.interpolate(
                memories[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            return self.mask_features(self.output(lateral + up)), memories


class FPNPixelDecoder(nn.Module):
    """A plain FPN alternative (``pixel_decoder: fpn``): top-down sum + 3x3 conv per level,
    same outputs as the Mask2Former pixel decoder. Cheaper; not what the paper uses."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.smooth = nn.ModuleList(_conv_gn(dim, 3, bias=False, relu=True) for _ in range(4))
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs: list[torch.Tensor] = []
        top: torch.Tensor | None = None
        for level in (3, 2, 1, 0):  # deep -> shallow
            x = maps[level]
            if top is not None:
                x = x + F.interpolate(top, size=x.shape[-2:], mode="bilinear", align_corners=False)
            top = self.smooth[level](x)
            outs.append(top)
        return self.mask_proj(outs[3]), outs[:3]


def build_pixel_decoder(cfg: QueryDiffModelConfig) -> nn.Module:
    """The pixel decoder ``cfg.pixel_decoder`` names, at width ``cfg.hidden_dim``."""
    if cfg.pixel_decoder == "fpn":
        return FPNPixelDecoder(cfg.hidden_dim)
    return MSDeformAttnPixelDecoder(
        cfg.hidden_dim,
        cfg.num_heads,
        layers=cfg.pixel_decoder_layers,
        points=cfg.pixel_decoder_points,
        ffn_dim=cfg.pixel_decoder_ffn_dim,
    )
