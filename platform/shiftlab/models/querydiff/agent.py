"""Agent queries from the adapters' token states by grouped cross-attention.

The reference builds 100 agent queries from the token sets of the 24 ViT-L blocks, merging them in
stages of 24 -> 12 -> 6 -> 3 groups and finishing with an MLP. The form used here:

* the token states of every block (B, T, C) are projected to the query width D;
* a merge stage maps ``g`` groups to ``g' = g / k``: each new group is the mean of ``k``
  consecutive groups (neighbouring blocks), refined by cross-attention from that mean to all
  ``k * T`` tokens of those groups, then a feed-forward layer (pre-norm, residual);
* the final groups are concatenated on channels per token and an MLP gives (B, T, D);
* if ``T != num_queries`` a linear map over the token axis gives ``num_queries`` queries.

Agent queries therefore depend on the image (each token state has attended to the block's
features), which the per-image diffusion guidance needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shiftlab.utils.errors import ConfigError


def default_groups(depth: int) -> tuple[int, ...]:
    """Halve the block count while it stays even and above 3: 24 -> (24, 12, 6, 3), 4 -> (4, 2)."""
    groups = [depth]
    while groups[-1] > 3 and groups[-1] % 2 == 0:
        groups.append(groups[-1] // 2)
    return tuple(groups)


class MergeStage(nn.Module):
    """``g`` groups of T tokens -> ``g / k`` groups by cross-attention over each k-group window."""

    def __init__(self, dim: int, heads: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, t, d = x.shape
        k = self.factor
        windows = x.reshape(b, g // k, k, t, d)
        query = windows.mean(dim=2).reshape(b * (g // k), t, d)
        keys = self.norm_kv(windows.reshape(b * (g // k), k * t, d))
        attended, _ = self.attn(self.norm_q(query), keys, keys, need_weights=False)
        out = query + attended
        out = out + self.ffn(self.norm_ffn(out))
        return out.reshape(b, g // k, t, d)


class AgentQueryBuilder(nn.Module):
    """Token states of every block -> (B, num_queries, dim) agent queries."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        heads: int,
        depth: int,
        num_tokens: int,
        num_queries: int,
        groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.groups = tuple(groups) if groups is not None else default_groups(depth)
        if self.groups[0] != depth:
            raise ConfigError(
                f"model.query_groups: the first group count must equal the ViT depth ({depth}), "
                f"got {list(self.groups)}"
            )
        self.input = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.stages = nn.ModuleList(
            MergeStage(dim, heads, a // b)
            for a, b in zip(self.groups, self.groups[1:], strict=False)
        )
        last = self.groups[-1]
        self.mlp = nn.Sequential(
            nn.LayerNorm(last * dim), nn.Linear(last * dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.resample = nn.Linear(num_tokens, num_queries) if num_tokens != num_queries else None

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        x = self.input(torch.stack(states, dim=1))  # (B, L, T, D)
        for stage in self.stages:
            x = stage(x)
        b, g, t, d = x.shape
        q = self.mlp(x.permute(0, 2, 1, 3).reshape(b, t, g * d))
        if self.resample is not None:
            q = self.resample(q.transpose(1, 2)).transpose(1, 2)
        return q
