"""Paired train-time augmentation: numpy views in, normalised torch tensors out.

All views of a sample (e.g. a clean image and its edited versions, or two appearances of one
scene) are pixel-aligned, so geometry — resize, crop, flip — is drawn once and applied to every
view and to the label. Colour jitter is drawn per view (SDGPA's independent jitter), so the
model sees the same scene under different photometric conditions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from shiftlab.config.augment import AugmentConfig, ColorJitterConfig
from shiftlab.data.transforms import resize_image, resize_label
from shiftlab.utils.errors import DataError

IGNORE = 255
Box = tuple[int, int, int, int]  # top, left, height, width


def _check(
    views: Mapping[str, np.ndarray], label: np.ndarray | None, sample: str
) -> tuple[int, int]:
    if not views:
        raise ValueError("no views to augment")
    sizes = {}
    for key, img in views.items():
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(
                f"{sample}: view {key!r} is {img.dtype} {img.shape}, expected HxWx3 uint8"
            )
        sizes[key] = img.shape[:2]
    if len(set(sizes.values())) != 1:
        raise DataError(f"{sample}: views differ in size {sizes}; paired views must be aligned")
    size = next(iter(sizes.values()))
    if label is not None and label.shape != size:
        raise DataError(f"{sample}: label is {label.shape}, views are {size}")
    return size


def _resize(img: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    # The resize of generation and evaluation too (antialiased bicubic; nearest for labels).
    return resize_label(img, hw) if nearest else resize_image(img, hw)


def _pad(img: np.ndarray, hw: tuple[int, int], value: int) -> np.ndarray:
    """Pad bottom/right up to at least ``hw``."""
    ph, pw = max(hw[0] - img.shape[0], 0), max(hw[1] - img.shape[1], 0)
    if ph == 0 and pw == 0:
        return img
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, widths, mode="constant", constant_values=value)


def rrc_box(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """torchvision's RandomResizedCrop sampling (10 tries, then a centred fallback)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def jitter_params(
    cfg: ColorJitterConfig, rng: np.random.Generator
) -> list[tuple[str, float]] | None:
    """The ops and factors of one colour jitter draw, in a random order (None: not applied)."""
    if rng.random() >= cfg.p:
        return None
    ops = []
    for op in rng.permutation(4):
        if op == 0 and cfg.brightness > 0:
            ops.append(
                ("brightness", rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness))
            )
        elif op == 1 and cfg.contrast > 0:
            ops.append(("contrast", rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)))
        elif op == 2 and cfg.saturation > 0:
            ops.append(
                ("saturation", rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation))
            )
        elif op == 3 and cfg.hue > 0:
            ops.append(("hue", rng.uniform(-cfg.hue, cfg.hue)))
    return ops


_ADJUST = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


def apply_jitter(img: torch.Tensor, ops: list[tuple[str, float]] | None) -> torch.Tensor:
    """Apply jitter ops to a float (3,H,W) image in [0, 1]."""
    for op, factor in ops or []:
        img = _ADJUST[op](img, float(factor))
    return img


def photometric_extras(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The off-road recipe's brightness/contrast, CLAHE and blur on a uint8 RGB image.

    Each transform consumes the generator only when it is configured, so enabling one never
    changes the draws of a config that does not use it.
    """
    out = img
    bc = cfg.brightness_contrast
    if bc is not None and rng.random() < bc.p:
        shift = rng.uniform(*bc.brightness) * 255.0
        scale = rng.uniform(1.0 - bc.contrast, 1.0 + bc.contrast)
        mean = out.mean()
        out = np.clip((out.astype(np.float32) - mean) * scale + mean + shift, 0, 255).astype(
            np.uint8
        )
    if cfg.clahe is not None and rng.random() < cfg.clahe.p:
        import cv2

        lab = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2LAB)
        grid = (cfg.clahe.tile_grid, cfg.clahe.tile_grid)
        lab[..., 0] = cv2.createCLAHE(clipLimit=cfg.clahe.clip_limit, tileGridSize=grid).apply(
            lab[..., 0]
        )
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if cfg.blur is not None and rng.random() < cfg.blur.p:
        import cv2

        lo, hi = cfg.blur.kernel
        k = int(rng.choice(np.arange(lo, hi + 1, 2)))
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (k, k), 0)
    return out


class PairedAugment:
    """Callable: ``(views, label, rng, sample="") -> {view: (3,H,W) float32, "label": (H,W) int64}``.

    ``label`` may be None (unlabelled target images); then no ``label`` key is returned.
    ``rng`` must be seeded by the caller (``rng_for(seed, epoch, sample_id)``).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    def __call__(
        self,
        views: Mapping[str, np.ndarray],
        label: np.ndarray | None,
        rng: np.random.Generator,
        sample: str = "",
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        _check(views, label, sample or "sample")
        imgs = dict(views)

        # Geometry: one draw for every view and the label.
        if cfg.resize is not None:
            imgs = {k: _resize(v, cfg.resize, nearest=False) for k, v in imgs.items()}
            label = _resize(label, cfg.resize, nearest=True) if label is not None else None
        h, w = next(iter(imgs.values())).shape[:2]
        if cfg.rrc_scale is not None and cfg.crop is not None:
            top, left, ch, cw = rrc_box(h, w, cfg.rrc_scale, cfg.rrc_ratio, rng)
            imgs = {
                k: _resize(v[top : top + ch, left : left + cw], cfg.crop, nearest=False)
                for k, v in imgs.items()
            }
            if label is not None:
                label = _resize(label[top : top + ch, left : left + cw], cfg.crop, nearest=True)
        elif cfg.crop is not None:
            ch, cw = cfg.crop
            # Crop bigger than the image: pad images with black, labels with ignore.
            imgs = {k: _pad(v, cfg.crop, 0) for k, v in imgs.items()}
            label = _pad(label, cfg.crop, IGNORE) if label is not None else None
            h, w = next(iter(imgs.values())).shape[:2]
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            imgs = {k: v[top : top + ch, left : left + cw] for k, v in imgs.items()}
            label = label[top : top + ch, left : left + cw] if label is not None else None
        if cfg.hflip > 0 and rng.random() < cfg.hflip:
            imgs = {k: v[:, ::-1] for k, v in imgs.items()}
            label = label[:, ::-1] if label is not None else None

        # Photometric: an independent draw per view (one shared draw if shared_jitter).
        shared = None
        if cfg.color_jitter is not None and cfg.shared_jitter:
            shared = jitter_params(cfg.color_jitter, rng)
        out: dict[str, torch.Tensor] = {}
        for key, img in imgs.items():
            img = photometric_extras(img, cfg, rng)
            # A writable copy only where needed (PIL's arrays are read-only views).
            t = (
                torch.from_numpy(np.require(img, requirements=["C", "W"]))
                .permute(2, 0, 1)
                .float()
                .div_(255.0)
            )
            if cfg.color_jitter is not None:
                ops = shared if cfg.shared_jitter else jitter_params(cfg.color_jitter, rng)
                t = apply_jitter(t, ops)
            if cfg.normalize:
                t = (t - self.mean) / self.std
            out[key] = t.contiguous()
        if label is not None:
            out["label"] = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        return out


def target_augment_config(cfg: AugmentConfig) -> AugmentConfig:
    """The unlabelled target image's augmentation: the same crop and flip settings, no
    photometric step (DACS's teacher sees the clean target). With ``target_resize`` the caller
    has already resized the image to it (one resize from the file), so no resize is left."""
    return cfg.model_copy(
        update={
            "resize": cfg.resize if cfg.target_resize is None else None,
            "color_jitter": None,
            "brightness_contrast": None,
            "clahe": None,
            "blur": None,
        }
    )


def paired_augment(
    views: Mapping[str, np.ndarray],
    label: np.ndarray | None,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    sample: str = "",
) -> dict[str, torch.Tensor]:
    """Functional form of :class:`PairedAugment`."""
    return PairedAugment(cfg)(views, label, rng, sample)
