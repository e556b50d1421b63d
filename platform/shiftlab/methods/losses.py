"""Loss functions of the adaptation methods (pure torch, no state)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255


def cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Pixel CE, class-weighted mean over valid pixels (torch's weighted-mean convention).

    A batch whose pixels are all ``ignore_index`` gives 0 (connected to the graph) instead of
    torch's NaN, so one unlabelled crop cannot poison a run.
    """
    if not (label != ignore_index).any():
        return logits.sum() * 0.0
    weight = class_weights.to(logits.device, logits.dtype) if class_weights is not None else None
    return F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index)


def dice_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    ignore_index: int = IGNORE,
    class_weights: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Multi-class soft Dice: 1 - weighted mean over classes of (2|P.T| + s) / (|P| + |T| + s).

    Ignore pixels are removed from both the prediction and the target sums.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (label != ignore_index).unsqueeze(1).to(probs.dtype)  # (B,1,H,W)
    safe = torch.where(label == ignore_index, torch.zeros_like(label), label)
    target = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    probs = probs * valid
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth).clamp_min(1e-12)
    if class_weights is None:
        return 1.0 - dice.mean()
    w = class_weights.to(dice.device, dice.dtype)
    return 1.0 - (w * dice).sum() / w.sum().clamp_min(1e-12)


# ---------------------------------------------------------------- feature alignment


def _check_pair(fa: torch.Tensor, fb: torch.Tensor) -> None:
    if fa.shape != fb.shape:
        raise ValueError(
            f"aligned features differ in shape: {tuple(fa.shape)} vs {tuple(fb.shape)}"
        )


def cosine_alignment(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of 1 - cos(fa(p), fb(p)), channels on dim 1 (views pixel-aligned)."""
    _check_pair(fa, fb)
    return (1.0 - F.cosine_similarity(fa.float(), fb.float(), dim=1, eps=1e-8)).mean()


def l2_alignment(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """||fa - fb||^2 / N with N the number of elements (scale-free across layer widths)."""
    _check_pair(fa, fb)
    return F.mse_loss(fa.float(), fb.float())


def _pixels(f: torch.Tensor) -> torch.Tensor:
    return f.float().permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # (B*H*W, C)


def mmd_alignment(
    fa: torch.Tensor,
    fb: torch.Tensor,
    samples: int = 256,
    bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Biased MMD^2 between the pixel-feature distributions of two views.

    Kernel: sum over bandwidths of exp(-d^2 / (m * sigma^2)), sigma^2 the mean pairwise squared
    distance of the pooled samples (detached, so the bandwidth is not optimised away).
    The same pixel positions are sampled from both views (they are pixel-aligned).
    """
    _check_pair(fa, fb)
    xa, xb = _pixels(fa), _pixels(fb)
    n = xa.shape[0]
    if n > samples:
        idx = torch.randperm(n, generator=generator, device="cpu")[:samples].to(xa.device)
        xa, xb = xa[idx], xb[idx]
    pooled = torch.cat([xa, xb], dim=0)
    d2 = torch.cdist(pooled, pooled).pow(2)
    m = xa.shape[0]
    scale = d2.detach().sum() / max(pooled.shape[0] * (pooled.shape[0] - 1), 1)
    scale = scale.clamp_min(1e-12)
    kernel = torch.stack([torch.exp(-d2 / (scale * b)) for b in bandwidths]).sum(dim=0)
    kxx, kyy, kxy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    return (kxx.mean() + kyy.mean() - 2.0 * kxy.mean()).clamp_min(0.0)


def alignment_loss(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    metric: str,
    layers: Sequence[int],
    layer_weights: Sequence[float],
    mmd_samples: int = 256,
    mmd_bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """sum_l w_l * L(f_l^a, f_l^b) over the selected feature indices."""
    total: torch.Tensor | None = None
    for layer, weight in zip(layers, layer_weights, strict=True):
        fa, fb = feats_a[layer], feats_b[layer]
        if metric == "cosine":
            term = cosine_alignment(fa, fb)
        elif metric == "l2":
            term = l2_alignment(fa, fb)
        elif metric == "mmd":
            term = mmd_alignment(fa, fb, mmd_samples, mmd_bandwidths, generator)
        else:
            raise ValueError(f"unknown alignment metric {metric!r}")
        total = weight * term if total is None else total + weight * term
    assert total is not None, "no layers to align"
    return total


def zodi_similarity(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """ZoDi's term -cos(GAP(fa), GAP(fb)), mean over the batch (-1 when identical)."""
    _check_pair(fa, fb)
    ga = fa.float().mean(dim=(2, 3))
    gb = fb.float().mean(dim=(2, 3))
    return -F.cosine_similarity(ga, gb, dim=1, eps=1e-8).mean()


# ---------------------------------------------------------------- cross-domain mixing


def classmix_mask(
    label: torch.Tensor, generator: torch.Generator, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DACS ClassMix: per image, half of the classes present in the source label (rounded up).

    Returns a bool mask (B,H,W), True where the source pixel is pasted, and the chosen classes
    per image. The choice comes from ``generator`` so it is reproducible.
    """
    masks, chosen_all = [], []
    for lab in label:
        classes = torch.unique(lab)
        classes = classes[classes != ignore_index]
        n = classes.numel()
        pick = torch.randperm(n, generator=generator, device="cpu")[: (n + 1) // 2]
        chosen = classes[pick.to(classes.device)]
        masks.append(torch.isin(lab, chosen))
        chosen_all.append(chosen)
    return torch.stack(masks), chosen_all


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where mask, ``b`` elsewhere; mask (B,H,W) broadcast over channels if needed."""
    m = mask
    while m.dim() < a.dim():
        m = m.unsqueeze(1)
    return torch.where(m, a, b)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student, for parameters and float buffers.

    Integer buffers (BatchNorm's num_batches_tracked) are copied.
    """
    for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
        p_t.mul_(alpha).add_(p_s.detach(), alpha=1.0 - alpha)
    for b_t, b_s in zip(teacher.buffers(), student.buffers(), strict=True):
        if b_t.dtype.is_floating_point:
            b_t.mul_(alpha).add_(b_s.detach(), alpha=1.0 - alpha)
        else:
            b_t.copy_(b_s)


def ema_alpha(step: int, alpha: float) -> float:
    """DAFormer's warm-up: min(1 - 1/(step+1), alpha); the teacher follows closely at first."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def pseudo_labels(
    teacher_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax pseudo-labels and DACS's confidence weight.

    The weight is the fraction of pixels of the batch whose max softmax probability exceeds
    ``threshold`` (a scalar tensor), applied to every target pixel.
    """
    probs = teacher_logits.float().softmax(dim=1)
    conf, pseudo = probs.max(dim=1)
    weight = (conf > threshold).float().mean()
    return pseudo, weight


def weighted_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Per-pixel weighted CE, averaged over the valid (non-ignore) pixels."""
    ce = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="none")
    valid = (label != ignore_index).to(ce.dtype)
    return (ce * pixel_weight * valid).sum() / valid.sum().clamp_min(1.0)


# ---------------------------------------------------------------- ImageNet feature distance


def downscale_label(
    label: torch.Tensor,
    size: tuple[int, int],
    num_classes: int,
    min_ratio: float,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """DAFormer's label downscaling for the feature distance: each cell of the ``size`` grid
    takes its majority class (ignore counted as a class of its own) when that class covers at
    least ``min_ratio`` of the cell, else ``ignore_index``. (B,H,W) -> (B,h,w).

    DAFormer average-pools the one-hot label with a kernel of the integer scale factor; an
    adaptive pool is the same on divisible sizes and also covers the others.
    """
    safe = torch.where(label == ignore_index, torch.full_like(label, num_classes), label)
    one_hot = F.one_hot(safe.long(), num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.adaptive_avg_pool2d(one_hot, size)
    ratio, cls = share.max(dim=1)
    keep = (cls < num_classes) & (ratio >= min_ratio)
    return torch.where(keep, cls, torch.full_like(cls, ignore_index))


def masked_feature_distance(
    feature: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over the ``mask``ed pixels of ||f(p) - f_ref(p)||_2 (DAFormer Eq. 7-8).

    ``feature`` / ``reference``: (B,C,h,w); ``mask``: (B,h,w) bool. No masked pixel gives 0,
    connected to the graph (DAFormer's mean over an empty set would be NaN).
    """
    _check_pair(feature, reference)
    dist = (feature.float() - reference.float().detach()).norm(p=2, dim=1)
    if not mask.any():
        return feature.sum() * 0.0
    return dist[mask].mean()
