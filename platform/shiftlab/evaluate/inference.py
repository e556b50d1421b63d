"""Test-time inference: resize, multi-scale + flip TTA, sliding windows, absent-class suppression.

``predict_logits`` turns a batch of uint8 images into class scores at the images' own size:

1. every pass resizes the images with `shiftlab.data.transforms.resize_image` (the resize of
   generation and training) to ``cfg.size`` (SDGPA evaluates at 512x1024; None: their own
   size) times the pass's scale, rounded to a multiple of ``cfg.scale_multiple`` (32, the
   network's total stride, as in the off-road report; scale 1.0 is used as is);
2. a flip pass runs with its image in the same forward (a batch of 2B);
3. a pass may run as overlapping sliding windows, batched ``cfg.window_batch`` at a time and
   averaged with a count map;
4. every pass's **logits** are bilinearly resized back to the images' size and averaged (the
   off-road report sums logits, not probabilities; the mean has the sum's argmax and a
   magnitude that does not grow with the number of passes);
5. classes in ``cfg.absent_classes`` get logits of -inf, so they are never predicted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.config.run import EvaluateConfig
from shiftlab.data.transforms import Normalization, resize_image, scaled_size
from shiftlab.utils.errors import ConfigError

__all__ = [
    "Normalization",
    "absent_class_indices",
    "image_to_tensor",
    "predict_logits",
    "scaled_size",
]


def image_to_tensor(
    images: Sequence[np.ndarray] | np.ndarray,
    norm: Normalization = Normalization(),
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """HxWx3 uint8 RGB image(s) of one size -> float32 (B,3,H,W), scaled to [0,1] and normalised."""
    batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if norm.normalize:
        m = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - m) / s
    return x


def absent_class_indices(names: Sequence[str], class_names: Sequence[str] | None) -> list[int]:
    """Class names of ``evaluate.absent_classes`` -> indices; unknown names are config errors."""
    if not names:
        return []
    if class_names is None:
        raise ConfigError("evaluate.absent_classes needs the label space's class names")
    out = []
    for name in names:
        if name not in class_names:
            raise ConfigError(
                f"evaluate.absent_classes: no class {name!r} in the label space "
                f"(classes: {', '.join(class_names)})"
            )
        out.append(list(class_names).index(name))
    if len(set(out)) == len(class_names):
        raise ConfigError("evaluate.absent_classes names every class: nothing could be predicted")
    return sorted(set(out))


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every stride, plus one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out["logits"] if isinstance(out, dict) else out
    if logits.shape[-2:] != x.shape[-2:]:
        # The contract is logits at the input size; be lenient with models that return less.
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def sliding_logits(
    model: nn.Module,
    x: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int] | None,
    window_batch: int = 8,
) -> torch.Tensor:
    """Logits of ``x`` from overlapping windows, each pixel the mean over the windows covering it.

    A window larger than the image is clipped to it; the default stride is two thirds of the
    window (a third of overlap, the usual mmseg slide setting). ``window_batch`` windows (of
    every image of the batch) go through the model in one forward.
    """
    b, _, h, w = x.shape
    wh, ww = min(window[0], h), min(window[1], w)
    sh, sw = (
        stride if stride is not None else (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    )
    boxes = [(t, left) for t in _window_starts(h, wh, sh) for left in _window_starts(w, ww, sw)]
    total: torch.Tensor | None = None
    count = x.new_zeros(1, 1, h, w)
    for group in _chunks(boxes, max(1, window_batch)):
        crops = torch.cat([x[:, :, t : t + wh, left : left + ww] for t, left in group])
        logits = _model_logits(model, crops)
        if total is None:  # sized by the model's output (a class-count mismatch is reported later)
            total = x.new_zeros(b, logits.shape[1], h, w)
        for i, (t, left) in enumerate(group):
            total[:, :, t : t + wh, left : left + ww] += logits[i * b : (i + 1) * b]
            count[:, :, t : t + wh, left : left + ww] += 1
    assert total is not None
    return total / count


def _forward(model: nn.Module, x: torch.Tensor, cfg: EvaluateConfig) -> torch.Tensor:
    if cfg.window is not None:
        return sliding_logits(model, x, cfg.window, cfg.window_stride, cfg.window_batch)
    return _model_logits(model, x)


def _scale_pass(model: nn.Module, x: torch.Tensor, cfg: EvaluateConfig) -> tuple[torch.Tensor, int]:
    """Summed logits of one scale (image and, with flip, its mirror in one forward) and the
    number of passes they hold."""
    if not cfg.flip:
        return _forward(model, x, cfg), 1
    both = _forward(model, torch.cat([x, torch.flip(x, dims=[3])]), cfg)
    n = x.shape[0]
    return both[:n] + torch.flip(both[n:], dims=[3]), 2


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Sequence[np.ndarray],
    cfg: EvaluateConfig,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    norm: Normalization = Normalization(),
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(B,K,H,W) float32 logits for uint8 HxWx3 images of one size, at that size.

    ``class_names`` resolves ``cfg.absent_classes``; suppressed classes have logits of -inf.
    The model should be in eval mode (the caller decides; `evaluate_model` does it).
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    orig = tuple(images[0].shape[:2])
    base = tuple(cfg.size) if cfg.size is not None else orig
    total: torch.Tensor | None = None
    passes = 0
    for scale in cfg.scales:
        size = scaled_size(base, scale, cfg.scale_multiple)
        x = image_to_tensor([resize_image(im, size) for im in images], norm, torch.device(device))
        logits, n = _scale_pass(model, x, cfg)
        passes += n
        if logits.shape[-2:] != orig:
            logits = F.interpolate(logits, size=orig, mode="bilinear", align_corners=False)
        total = logits if total is None else total + logits
    assert total is not None
    if total.shape[1] != num_classes:
        raise ConfigError(
            f"the model predicts {total.shape[1]} classes but the label space has {num_classes}"
        )
    total = total / passes
    absent = absent_class_indices(cfg.absent_classes, class_names)
    if absent:
        total[:, absent] = float("-inf")
    return total
