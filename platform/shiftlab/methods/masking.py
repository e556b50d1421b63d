"""MIC's patch masking of target images (Hoyer et al., CVPR 2023, Sec. 3.2): seeded, exact.

The image is cut into ``block`` x ``block`` patches (the last row and column may be smaller
when the size is not a multiple); ``round(ratio * patches)`` of them, drawn per image from the
caller's generator, are masked. MIC draws each patch independently with probability ``ratio``
(the same share in expectation); an exact count makes a step's mask reproducible and its ratio
known.
"""

from __future__ import annotations

import math

import torch


def block_mask(
    batch: int, height: int, width: int, block: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 1, H, W) float mask: 0 on masked patches, 1 elsewhere."""
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    patches = rows * cols
    masked = round(ratio * patches)
    keep = torch.ones(batch, patches)
    for i in range(batch):
        keep[i, torch.randperm(patches, generator=generator)[:masked]] = 0.0
    grid = keep.view(batch, 1, rows, cols)
    full = grid.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    return full[:, :, :height, :width]


def mask_images(
    images: torch.Tensor, block: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Normalised ``(B, 3, H, W)`` images with masked patches set to 0, the mean colour (MIC
    multiplies the normalised image by the mask)."""
    b, _, h, w = images.shape
    return images * block_mask(b, h, w, block, ratio, generator).to(images.device, images.dtype)
