"""DACS's strong augmentation of mixed images: colour jitter and Gaussian blur, seeded.

The mixed images are model inputs, normalised with the training's mean/std: they are mapped
back to [0, 1] for the photometric operations (torchvision's tensor functions) and normalised
again. Every random draw comes from the caller's generator, so a step's augmentation is fixed
by (seed, step), and two calls with equally seeded generators (the two appearances of the
CARLA-4AGT variant) apply identical transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftlab.config.method import StrongAugmentConfig

BLUR_SIGMA = (0.15, 1.15)


def blur_kernel_size(height: int, width: int) -> int:
    """An odd kernel of about a tenth of the short side, at least 3."""
    k = max(3, round(0.1 * min(height, width)))
    return k if k % 2 == 1 else k + 1


def strong_augment(
    images: torch.Tensor,
    cfg: StrongAugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Augment each image of a normalised ``(B, 3, H, W)`` batch; identity when disabled."""
    if not cfg.enabled or (cfg.color_jitter_p == 0 and cfg.blur_p == 0):
        return images
    import torchvision.transforms.v2.functional as F

    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    k = blur_kernel_size(*images.shape[-2:])
    out = []
    for image in images:
        u = torch.rand(7, generator=generator).tolist()  # a fixed number of draws per image
        x = (image * s + m).clamp(0.0, 1.0)
        if u[0] < cfg.color_jitter_p:
            st = cfg.color_jitter_strength
            x = F.adjust_brightness(x, 1.0 + (2 * u[1] - 1) * st)
            x = F.adjust_contrast(x, 1.0 + (2 * u[2] - 1) * st)
            x = F.adjust_saturation(x, 1.0 + (2 * u[3] - 1) * st)
            x = F.adjust_hue(x, (2 * u[4] - 1) * st)
        if u[5] < cfg.blur_p:
            sigma = BLUR_SIGMA[0] + u[6] * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
            x = F.gaussian_blur(x, [k, k], [sigma, sigma])
        out.append((x.clamp(0.0, 1.0) - m) / s)
    return torch.stack(out)
