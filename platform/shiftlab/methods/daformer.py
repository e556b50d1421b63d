"""The DAFormer UDA recipe (Hoyer et al., CVPR 2022), optionally with MIC (CVPR 2023).

DAFormer = DACS self-training (``ClassMix``: EMA teacher on the clean target, confidence-
weighted pseudo-labels, ClassMix, strong augmentation of the mixed image) plus

- rare-class sampling of source images (``rare_class_sampling``, drawn by ``train.sampling``),
- the thing-class ImageNet feature distance on the source image (Eq. 7-8):
  L_FD = mean over thing pixels p of ||F_theta(x_S)(p) - F_ImageNet(x_S)(p)||_2 on the
  bottleneck features, against a frozen copy of the initial (ImageNet) encoder,
- pseudo-label weight 0 in the top/bottom rows of the target crop (Cityscapes 15 / 120).

MIC adds L_M = CE(student(mask(aug(x_T))), pseudo-label of x_T) weighted by the same pixel
weights (Eq. 3-5). loss = L_S + L_T + lambda_FD L_FD + lambda_M L_M (+ the CARLA-4AGT
alignment terms with two appearances).

The frozen ImageNet reference is rebuilt from the model's own config (``model.pretrained``),
under the seed the trainer builds the student with, so it is the same on a fresh start and on
a resume; it lives on the method, outside the trained model, so it is in neither the training
checkpoint (``state_dict`` holds the teacher only) nor the exported model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.config.base import ModelSection
from shiftlab.config.method import CITYSCAPES_THINGS, DAFormerConfig, FeatureDistanceConfig
from shiftlab.methods.base import class_name_key, split_output, unwrap
from shiftlab.methods.classmix import ClassMix, MixStep
from shiftlab.methods.losses import downscale_label, masked_feature_distance, weighted_cross_entropy
from shiftlab.methods.masking import mask_images
from shiftlab.methods.registry import register_method
from shiftlab.models import create_model
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import derive_seed


def thing_class_ids(cfg: FeatureDistanceConfig, class_names: Sequence[str] | None) -> list[int]:
    """Train ids of the FD's thing classes: the named ones, or DAFormer's Cityscapes things
    that the label space has (train ids 6, 7, 11-18 in Cityscapes' 19 classes)."""
    if class_names is None:
        raise ConfigError("method.fd: thing classes by name need the label space's class names")
    index = {class_name_key(n): i for i, n in enumerate(class_names)}
    if cfg.thing_classes is None:
        ids = [index[class_name_key(n)] for n in CITYSCAPES_THINGS if class_name_key(n) in index]
        if not ids:
            raise ConfigError(
                "method.fd.thing_classes: the label space has none of DAFormer's Cityscapes "
                f"thing classes ({', '.join(CITYSCAPES_THINGS)}); name its thing classes"
            )
        return ids
    unknown = [n for n in cfg.thing_classes if class_name_key(n) not in index]
    if unknown:
        raise ConfigError(
            f"method.fd.thing_classes: unknown classes {unknown} (classes: {', '.join(class_names)})"
        )
    return [index[class_name_key(n)] for n in cfg.thing_classes]


def imagenet_reference(student: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """A frozen, eval-mode copy of the student as built, before any training or resume: its
    encoder holds ``model.pretrained``'s (ImageNet) weights. Built under the trainer's model
    seed (``derive_seed(seed, "init")``), so a random-init model gets its own initial weights."""
    cfg = getattr(unwrap(student), "cfg", None)
    if not isinstance(cfg, ModelSection):
        raise ConfigError("method.fd needs a model built from its config section (model.name)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init") % 2**32)
        reference = create_model(cfg, num_classes)
    return reference.eval().requires_grad_(False)


@register_method("daformer")
class DAFormer(ClassMix):
    """DACS + RCS + thing-class ImageNet FD + border-ignored pseudo-labels (+ MIC)."""

    name = "daformer"
    cfg: DAFormerConfig

    def __init__(self, cfg: DAFormerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.rare_class_sampling = cfg.rcs
        self.fd_on = cfg.fd is not None and cfg.fd.weight > 0
        self.thing_ids = (
            torch.tensor(thing_class_ids(cfg.fd, self.class_names))
            if cfg.fd is not None and self.fd_on
            else torch.zeros(0, dtype=torch.long)
        )
        self.reference: nn.Module | None = None

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        if self.fd_on:
            self.reference = imagenet_reference(model, self.num_classes, self.seed)

    def pixel_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """DAFormer: no pseudo-label loss in the top / bottom rows of the target crop (the
        Cityscapes ego car and rectification border, where pseudo-labels are unreliable)."""
        height = weight.shape[-2]
        top, bottom = self.cfg.pseudo_ignore_top, self.cfg.pseudo_ignore_bottom
        if top > 0:
            weight[..., : min(top, height), :] = 0.0
        if bottom > 0:
            weight[..., max(height - bottom, 0) :, :] = 0.0
        return weight

    def extra_terms(self, model: nn.Module, parts: MixStep, logs: dict[str, float]) -> torch.Tensor:
        total = super().extra_terms(model, parts, logs)
        if self.fd_on:
            assert self.cfg.fd is not None
            total = total + self.cfg.fd.weight * self._feature_distance(parts, logs)
        mic = self.cfg.mic
        if mic is not None and mic.weight > 0:
            total = total + mic.weight * self._masked_consistency(model, parts, logs)
        return total

    def _feature_distance(self, parts: MixStep, logs: dict[str, float]) -> torch.Tensor:
        """L_FD on the source image (both appearances in the CARLA-4AGT variant, summed as
        their CE terms are)."""
        assert self.reference is not None and self.cfg.fd is not None
        layer = self.cfg.fd.layer
        if next(self.reference.parameters()).device != parts.src.device:
            self.reference.to(parts.src.device)
        outs = [parts.out_a] if parts.out_b is None else [parts.out_a, parts.out_b]
        images = parts.src if parts.src_b is None else torch.cat([parts.src, parts.src_b])
        with torch.no_grad():
            ref_all = self.reference(images)
        refs = [ref_all] if parts.src_b is None else list(split_output(ref_all, len(parts.src)))
        total = torch.zeros((), device=parts.src.device)
        for out, ref in zip(outs, refs, strict=True):
            feature = out["features"][layer]
            small = downscale_label(
                parts.label,
                (feature.shape[-2], feature.shape[-1]),
                self.num_classes,
                self.cfg.fd.min_ratio,
                self.ignore_index,
            )
            things = torch.isin(small, self.thing_ids.to(small.device))
            total = total + masked_feature_distance(feature, ref["features"][layer], things)
        logs["fd"] = total.item()
        return total

    def _masked_consistency(
        self, model: nn.Module, parts: MixStep, logs: dict[str, float]
    ) -> torch.Tensor:
        """MIC: the student on the colour-augmented, patch-masked target against the teacher's
        pseudo-labels of the clean target, with the same pixel weights."""
        mic = self.cfg.mic
        assert mic is not None
        image = parts.tgt
        if mic.color_augment:
            image = self._strong(image, parts.step, "mic_strong")
        masked = mask_images(
            image, mic.block_size, mic.mask_ratio, self.generator(parts.step, "mic_mask")
        )
        out = model(masked)
        loss = weighted_cross_entropy(
            out["logits"], parts.pseudo.label, parts.pseudo.weight, self.ignore_index
        )
        logs["mic"] = loss.item()
        return loss
