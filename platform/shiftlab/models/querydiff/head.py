"""Query refinement and the Mask2Former mask-classification decoder.

The pixel decoder between them (Mask2Former's deformable-attention encoder) is in
``pixel_decoder.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QueryRefiner(nn.Module):
    """Pixel features cross-attend to the projected agent queries (one block per level)."""

    def __init__(self, dim: int, heads: int, levels: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.norm_pix = nn.ModuleList(nn.LayerNorm(dim) for _ in range(levels))
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(levels)
        )

    def forward(self, maps: list[torch.Tensor], queries: torch.Tensor) -> list[torch.Tensor]:
        kv = self.norm_q(self.proj(queries))
        out = []
        for norm, attn, m in zip(self.norm_pix, self.attn, maps, strict=True):
            b, c, h, w = m.shape
            pix = m.flatten(2).transpose(1, 2)
            delta, _ = attn(norm(pix), kv, kv, need_weights=False)
            out.append((pix + delta).transpose(1, 2).reshape(b, c, h, w))
        return out


def sine_position_encoding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of a (B, C, H, W) map's grid -> (B, H*W, dim)."""
    b, _, h, w = x.shape
    half = dim // 2
    y_embed = torch.linspace(0, 2 * math.pi, h + 1, device=x.device)[1:]
    x_embed = torch.linspace(0, 2 * math.pi, w + 1, device=x.device)[1:]
    idx = torch.arange(half, device=x.device)
    freq = 10000 ** (2 * (idx // 2) / half)
    pos_y = y_embed[:, None] / freq
    pos_x = x_embed[:, None] / freq
    pos_y = torch.stack([pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()], dim=2).flatten(1)
    pos_x = torch.stack([pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat(
        [pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1
    )
    if pos.shape[-1] < dim:  # odd dim: pad the last channel
        pos = F.pad(pos, (0, dim - pos.shape[-1]))
    return pos.reshape(1, h * w, dim).expand(b, -1, -1).to(x.dtype)


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each post-norm (Mask2Former order)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim)
        )
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(
        self,
        q: torch.Tensor,
        q_pos: torch.Tensor,
        memory: torch.Tensor,
        mem_pos: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        attended, _ = self.cross(
            q + q_pos, memory + mem_pos, memory, attn_mask=attn_mask, need_weights=False
        )
        q = self.norm_cross(q + attended)
        attended, _ = self.self_attn(q + q_pos, q + q_pos, q, need_weights=False)
        q = self.norm_self(q + attended)
        return self.norm_ffn(q + self.ffn(q))


class MaskDecoder(nn.Module):
    """Mask2Former transformer decoder: per-layer class logits (K+1) and mask logits."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        layers: int,
        num_queries: int,
        num_classes: int,
        masked_attention: bool = True,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.masked_attention = masked_attention
        self.query_in = nn.Linear(dim, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(3, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )

    def _predict(
        self, q: torch.Tensor, mask_features: torch.Tensor, next_size: tuple[int, int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.norm(q)
        class_logits = self.class_embed(out)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
        attn_mask = None
        if self.masked_attention and next_size is not None:
            # Attend only where the current mask prediction is foreground; a query whose mask
            # is empty at this level attends everywhere (else its softmax has no support).
            small = F.interpolate(
                mask_logits.detach(), size=next_size, mode="bilinear", align_corners=False
            )
            blocked = small.flatten(2).sigmoid() < 0.5
            blocked[blocked.all(dim=-1)] = False
            attn_mask = blocked.repeat_interleave(self.heads, dim=0)
        return class_logits, mask_logits, attn_mask

    def forward(
        self, agent_queries: torch.Tensor, mask_features: torch.Tensor, memories: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b = agent_queries.shape[0]
        dim = agent_queries.shape[-1]
        mems, poses, sizes = [], [], []
        for i, m in enumerate(memories):
            sizes.append((int(m.shape[-2]), int(m.shape[-1])))
            poses.append(sine_position_encoding(m, dim))
            mems.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        q = self.query_in(agent_queries)
        q_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        preds = []
        cls, masks, attn_mask = self._predict(q, mask_features, sizes[0])
        preds.append((cls, masks))
        for i, layer in enumerate(self.layers):
            level = i % len(mems)
            q = layer(q, q_pos, mems[level], poses[level], attn_mask)
            cls, masks, attn_mask = self._predict(q, mask_features, sizes[(i + 1) % len(mems)])
            preds.append((cls, masks))
        return preds


def semantic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    size: tuple[int, int],
    upsample_masks: bool = True,
) -> torch.Tensor:
    """Per-pixel class scores (B, K, H, W): sum_q softmax(class_q)[:K] * sigmoid(mask_q).

    ``upsample_masks=True`` is Mask2Former's order (mask logits resized to ``size`` before the
    sigmoid). ``False`` combines at the mask resolution and resizes the K score maps instead:
    nearly the same picture for a fraction of the memory (K maps instead of Q at full size),
    which is what training uses, where these scores are not what the set criterion reads.
    """
    probs = class_logits.softmax(dim=-1)[..., :-1]
    if upsample_masks:
        masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        return torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())
    scores = torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
