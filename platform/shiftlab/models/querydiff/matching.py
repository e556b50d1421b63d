"""Hungarian matching of predicted masks to target masks (Mask2Former costs).

All costs compare a query's mask logits with a target's binary mask on the same set of points
(Mask2Former's matcher: P uniform random points shared by all masks of an image; with
``num_points=None`` every valid pixel of the mask grid). Optional point weights leave ignored
label pixels out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pairwise_bce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE-with-logits of every (query, target) pair: (Q,P) x (T,P) -> (Q,T).

    ``weights (P,)`` (optional) weigh the points; the mean is then over their total weight.
    """
    pos = F.softplus(-logits)  # -log sigmoid(x): cost where the target is 1
    neg = F.softplus(logits)  # -log(1 - sigmoid(x)): cost where the target is 0
    if weights is None:
        return (pos @ targets.T + neg @ (1.0 - targets).T) / max(logits.shape[1], 1)
    w = weights[None, :]
    total = pos @ (targets * w).T + neg @ ((1.0 - targets) * w).T
    return total / weights.sum().clamp_min(1e-6)


def pairwise_dice(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Dice loss (smoothing 1) of every (query, target) pair: (Q,P) x (T,P) -> (Q,T).

    ``weights (P,)`` (optional) weigh the points (a point of weight 0 takes no part).
    """
    probs = logits.sigmoid()
    if weights is not None:
        # Weigh each point once: in the intersection and in each of the two sums.
        probs = probs * weights[None, :]
        inter = probs @ targets.T
        targets = targets * weights[None, :]
    else:
        inter = probs @ targets.T
    total = probs.sum(dim=1, keepdim=True) + targets.sum(dim=1)[None, :]
    return 1.0 - (2.0 * inter + 1.0) / (total + 1.0)


def matching_cost(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
    point_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Q, T) cost: -p(class) * w_c + BCE * w_m + Dice * w_d (masks on shared points)."""
    probs = class_logits.float().softmax(dim=-1)
    cost_class = -probs[:, target_classes]
    logits = mask_logits.float()
    targets = target_masks.float()
    return (
        class_weight * cost_class
        + mask_weight * pairwise_bce(logits, targets, point_weights)
        + dice_weight * pairwise_dice(logits, targets, point_weights)
    )


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment: (query indices, target indices), by target order."""
    matrix = cost.detach().float().cpu().numpy()
    if not np.isfinite(matrix).all():
        # A NaN/inf cost would make scipy raise; treat it as "worst possible" instead.
        finite = matrix[np.isfinite(matrix)]
        matrix = np.nan_to_num(
            matrix, nan=1e6, posinf=1e6, neginf=finite.min() if finite.size else 0
        )
    from scipy.optimize import linear_sum_assignment  # only QueryDiff runs need scipy

    rows, cols = linear_sum_assignment(matrix)
    order = np.argsort(cols)
    return torch.as_tensor(rows[order], dtype=torch.long), torch.as_tensor(
        cols[order], dtype=torch.long
    )
