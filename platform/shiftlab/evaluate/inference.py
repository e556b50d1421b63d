"""Test-time inference: resize, multi-scale + flip TTA, sliding windows, absent-class suppression.

``predict_logits`` turns a normalised image batch into class scores at the batch's own size:

1. optional resize of the input to ``cfg.size`` (SDGPA evaluates at 512x1024);
2. one pass per scale (x flip): scale 1.0 runs at the (resized) size as it is, any other scale
   at that size times the factor rounded to a multiple of ``cfg.scale_multiple`` (32: the
   network's total stride, as in the off-road report);
3. every pass optionally as a sliding window (overlapping windows averaged with a count map);
4. every pass's **logits** are bilinearly resized back to the input's original size and
   averaged (the off-road report sums/averages logits, not probabilities; the mean has the same
   argmax as the sum and a magnitude that does not grow with the number of passes);
5. classes named in ``cfg.absent_classes`` get logits of -inf, so they are never predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.config.augment import IMAGENET_MEAN, IMAGENET_STD
from shiftlab.config.run import EvaluateConfig
from shiftlab.utils.errors import ConfigError


def image_to_tensor(
    images: Sequence[np.ndarray] | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """HxWx3 uint8 RGB image(s) of one size -> float32 (B,3,H,W), scaled to [0,1] and normalised."""
    batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if normalize:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - m) / s
    return x


def scaled_size(size: tuple[int, int], scale: float, multiple: int) -> tuple[int, int]:
    """``size * scale`` rounded to the nearest multiple (at least one multiple); 1.0 is kept as is."""
    if scale == 1.0:
        return size
    # half-up rounding (Python's round() rounds halves to even, which surprises in 2.5 -> 2)
    return tuple(max(multiple, int(s * scale / multiple + 0.5) * multiple) for s in size)  # type: ignore[return-value]


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


def sliding_logits(
    model: nn.Module,
    x: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int] | None,
    num_classes: int,
) -> torch.Tensor:
    """Logits of ``x`` from overlapping windows, each pixel the mean over the windows covering it.

    A window larger than the image is clipped to it; the default stride is two thirds of the
    window (a third of overlap, the usual mmseg slide setting).
    """
    del num_classes  # the output is sized by the model; kept for a uniform signature
    b, _, h, w = x.shape
    wh, ww = min(window[0], h), min(window[1], w)
    sh, sw = stride if stride is not None else (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    total: torch.Tensor | None = None
    count = x.new_zeros(1, 1, h, w)
    for top in _window_starts(h, wh, sh):
        for left in _window_starts(w, ww, sw):
            logits = _model_logits(model, x[:, :, top : top + wh, left : left + ww])
            if total is None:  # sized by the model's output (a class-count mismatch is reported later)
                total = x.new_zeros(b, logits.shape[1], h, w)
            total[:, :, top : top + wh, left : left + ww] += logits
            count[:, :, top : top + wh, left : left + ww] += 1
    assert total is not None
    return total / count


def _single_pass(model: nn.Module, x: torch.Tensor, cfg: EvaluateConfig, num_classes: int) -> torch.Tensor:
    if cfg.window is not None:
        return sliding_logits(model, x, cfg.window, cfg.window_stride, num_classes)
    return _model_logits(model, x)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    cfg: EvaluateConfig,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """(B,K,H,W) float32 logits for a normalised (B,3,H,W) batch, at the batch's own H x W.

    ``class_names`` resolves ``cfg.absent_classes``; suppressed classes have logits of -inf.
    The model should be in eval mode (the caller decides; `evaluate_model` does it).
    """
    orig = (images.shape[-2], images.shape[-1])
    base = images
    if cfg.size is not None and tuple(cfg.size) != orig:
        base = F.interpolate(images, size=tuple(cfg.size), mode="bilinear", align_corners=False)
    base_size = (base.shape[-2], base.shape[-1])
    total: torch.Tensor | None = None
    passes = 0
    for scale in cfg.scales:
        size = scaled_size(base_size, scale, cfg.scale_multiple)
        x = base if size == base_size else F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        if cfg.flip:
            # image and mirror image in one forward pass (one batch of 2B): fewer launches
            both = _single_pass(model, torch.cat([x, torch.flip(x, dims=[3])]), cfg, num_classes)
            logits = both[: x.shape[0]] + torch.flip(both[x.shape[0] :], dims=[3])
            passes += 2
        else:
            logits = _single_pass(model, x, cfg, num_classes)
            passes += 1
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


def predict(
    model: nn.Module,
    images: torch.Tensor,
    cfg: EvaluateConfig,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """(B,H,W) int64 train ids: the argmax of ``predict_logits``."""
    return predict_logits(model, images, cfg, num_classes, class_names).argmax(dim=1)
