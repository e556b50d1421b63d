"""The one resize of shiftlab: generation, training and evaluation all call these.

A model meets at test time the pixels it was trained on only if every stage resamples images
the same way. Images are resized with PIL's bicubic filter, which SDGPA's generation scripts
use and which antialiases when it shrinks (its support widens with the scale factor); label
maps with nearest neighbour at pixel centres, so no class is ever invented at a boundary.
Predictions are scored at the label's own size: logits are upsampled (bilinear) to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shiftlab.config.augment import IMAGENET_MEAN, IMAGENET_STD
from shiftlab.config.schema import ExperimentConfig

Size = Sequence[int]  # (H, W)


def resize_image(image: np.ndarray, size: Size | None) -> np.ndarray:
    """HxWx3 uint8 RGB -> (H, W), antialiased bicubic; ``None`` or the same size: unchanged."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    h, w = int(size[0]), int(size[1])
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, size: Size | None) -> np.ndarray:
    """HxW label map (any dtype, kept) -> (H, W), nearest neighbour at pixel centres."""
    if size is None or tuple(label.shape[:2]) == tuple(size):
        return label
    src_h, src_w = label.shape[:2]
    h, w = int(size[0]), int(size[1])
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return label[rows[:, None], cols[None, :]]


def scaled_size(size: Size, scale: float, multiple: int) -> tuple[int, int]:
    """``size * scale`` rounded half-up to a multiple (at least one); 1.0 keeps the size as is."""
    h, w = int(size[0]), int(size[1])
    if scale == 1.0:
        return h, w
    return (
        max(multiple, int(h * scale / multiple + 0.5) * multiple),
        max(multiple, int(w * scale / multiple + 0.5) * multiple),
    )


@dataclass(frozen=True)
class Normalization:
    """How training normalised its inputs (``train.augment``); inference must do the same."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalize: bool = True

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Normalization:
        aug = cfg.train.augment
        return cls(aug.mean, aug.std, bool(aug.normalize))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        mean, std = data["mean"], data["std"]
        return cls((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), bool(data["normalize"]))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "normalize": self.normalize}

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the inputs were normalised with; (0, 1) when they were not."""
        if not self.normalize:
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return tuple(self.mean), tuple(self.std)
