"""Diffusion guidance of the agent queries: the KL and Huber losses.

With agent queries ``Q (B, Nq, D)`` and diffusion tokens ``D_w, D_s (B, N, C_d)``:

* diffusion tokens are layer-normalised per token (no affine): raw UNet activations have
  block-dependent scales, and a fixed normalisation keeps the softmax targets and the Huber
  target in a stable range without giving the frozen features anything to learn;
* ``S = softmax((W_f Q)(W_w D_w)^T / sqrt(D))``: one affinity, normalised along the axis it is
  summed over in each use — over pixels when queries gather diffusion content (``S·D_w``), over
  queries when pixels are rebuilt from queries (``S^T·Q``), so both are convex combinations;
* ``L_Huber = SmoothL1(Q, S·(W_w D_w))``, target detached: the queries are *taught* the diffusion
  content they attend to; the target cannot move to meet the queries (no trivial solution);
* ``L_KL = KL(softmax(D_s) || softmax(W_n(S^T·Q)))`` over channels per pixel: the queries must
  carry enough of the scene to rebuild the strong-noise diffusion feature distribution. This is
  the loss that trains W_f, W_w, W_n (and S).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kl_guidance_loss(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(pred))`` over the last axis, mean over the rest.

    ``target`` is detached (diffusion features are a fixed teacher). >= 0, and 0 iff the two
    softmax distributions agree.
    """
    log_p = F.log_softmax(target.detach().float(), dim=-1)
    log_q = F.log_softmax(pred.float(), dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)
    return kl.mean()


def huber_guidance_loss(queries: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SmoothL1 (beta 1) between the queries and the detached diffusion target."""
    return F.smooth_l1_loss(queries.float(), target.detach().float())


class GuidanceHead(nn.Module):
    """W_f, W_w, W_n of the guidance; ``forward`` returns ``{"kl", "huber"}``."""

    def __init__(self, dim: int, diffusion_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.w_f = nn.Linear(dim, dim)
        self.w_w = nn.Linear(diffusion_dim, dim)
        self.w_n = nn.Linear(dim, diffusion_dim)

    def affinity(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Logits of S: (B, Nq, N)."""
        return torch.einsum("bqd,bnd->bqn", self.w_f(queries), keys) / math.sqrt(self.dim)

    def forward(
        self, queries: torch.Tensor, d_weak: torch.Tensor, d_strong: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # (B, C_d, h, w) maps -> (B, N, C_d) normalised tokens; the teacher never gets gradient.
        weak = F.layer_norm(d_weak.detach().flatten(2).transpose(1, 2).float(), (d_weak.shape[1],))
        strong = F.layer_norm(
            d_strong.detach().flatten(2).transpose(1, 2).float(), (d_strong.shape[1],)
        )
        q = queries.float()
        keys = self.w_w(weak)  # (B, N, D)
        logits = self.affinity(q, keys)
        gathered = torch.einsum("bqn,bnd->bqd", logits.softmax(dim=-1), keys)
        rebuilt = self.w_n(torch.einsum("bqn,bqd->bnd", logits.softmax(dim=1), q))
        return {
            "kl": kl_guidance_loss(strong, rebuilt),
            "huber": huber_guidance_loss(q, gathered),
        }
