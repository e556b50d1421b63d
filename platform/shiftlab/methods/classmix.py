"""DACS cross-domain mixing with an EMA teacher (and the CARLA-4AGT two-appearance variant)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from shiftlab.config.method import ClassMixConfig
from shiftlab.methods.base import Batch, Method, forward_pair, require, unwrap
from shiftlab.methods.feature_align import aligned_features
from shiftlab.methods.losses import (
    classmix_mask,
    cross_entropy,
    ema_alpha,
    ema_update,
    mix,
    pseudo_labels,
    weighted_cross_entropy,
)
from shiftlab.methods.registry import register_method
from shiftlab.methods.strong_augment import strong_augment


@register_method("classmix")
class ClassMix(Method):
    """L_S (source CE) + target_weight * L_T (confidence-weighted CE on the mixed image).

    The EMA teacher (eval mode, no gradients) labels ``target_image``; half the classes of
    each source label are pasted onto the target image and its pseudo-label. Target pixels
    weigh the fraction of confident teacher pixels, pasted source pixels weigh 1. The mixed
    image gets DACS's strong augmentation (colour jitter, blur; ``strong_augment``).
    CARLA-4AGT variant (``appearances`` set): ``image_b`` is a second appearance of the source;
    the same mask mixes it with the same target, both mixed images share the mixed label, and
    ``align_weight * L_A(source a, b) + mix_align_weight * L_M(mixed a, b)`` is added.
    """

    name = "classmix"
    cfg: ClassMixConfig

    def __init__(self, cfg: ClassMixConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.pair_views = list(cfg.appearances) if cfg.appearances else None
        self.teacher: nn.Module | None = None
        self._pending: Mapping[str, Any] | None = None
        self._step = 0

    @property
    def paired(self) -> bool:
        return bool(self.cfg.appearances)

    def views(self, stage: str) -> dict[str, str]:
        self._check_stage(stage)
        if self.paired:
            views = {"image": self.cfg.appearances[0], "image_b": self.cfg.appearances[1]}
        else:
            views = {"image": self.cfg.source_view}
        # Unlabelled target images: from data.target_unlabelled when configured.
        views["target_image"] = self.cfg.target_view
        return views

    # -- teacher -----------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        self.teacher = copy.deepcopy(unwrap(model))
        self.teacher.eval().requires_grad_(False)
        if self._pending is not None:
            self.teacher.load_state_dict(self._pending["teacher"])
            self._step = int(self._pending.get("step", 0))
            self._pending = None

    def after_step(self, model: nn.Module) -> None:
        if self.teacher is None:
            raise RuntimeError("classmix: setup(model) was not called")
        ema_update(self.teacher, unwrap(model), ema_alpha(self._step, self.cfg.ema_alpha))
        self._step += 1

    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"teacher": self.teacher.state_dict(), "step": self._step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if "teacher" not in state:
            raise ValueError(f"classmix state needs 'teacher', got keys {sorted(state)}")
        if self.teacher is None:
            self._pending = state  # applied by setup(), which builds the teacher
        else:
            self.teacher.load_state_dict(state["teacher"])
            self._step = int(state.get("step", 0))

    def _strong(self, mixed: torch.Tensor, step: int) -> torch.Tensor:
        mean, std = self.input_stats
        return strong_augment(
            mixed, self.cfg.strong_augment, mean, std, self.generator(step, "strong")
        )

    # -- loss --------------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.teacher is None:
            raise RuntimeError("classmix: setup(model) was not called")
        src = require(batch, "image", self.name)
        label = require(batch, "label", self.name)
        tgt = require(batch, "target_image", self.name)
        if tgt.shape[0] != src.shape[0] or tgt.shape[-2:] != src.shape[-2:]:
            raise ValueError(
                f"classmix: target_image {tuple(tgt.shape)} must match image {tuple(src.shape)}"
            )
        if next(self.teacher.parameters()).device != src.device:
            self.teacher.to(src.device)
        logs: dict[str, float] = {}

        # Source loss (both appearances in one forward in the paired variant).
        if self.paired:
            src_b = require(batch, "image_b", self.name)
            out_a, out_b = forward_pair(model, src, src_b)
            ce_a = cross_entropy(out_a["logits"], label, None, self.ignore_index)
            ce_b = cross_entropy(out_b["logits"], label, None, self.ignore_index)
            loss_s = ce_a + ce_b
        else:
            out_a = model(src)
            loss_s = cross_entropy(out_a["logits"], label, None, self.ignore_index)
        total = loss_s
        logs["loss_s"] = loss_s.item()

        # Pseudo-labels from the teacher, and the mixed image(s).
        with torch.no_grad():
            pseudo, confidence = pseudo_labels(
                self.teacher(tgt)["logits"], self.cfg.pseudo_threshold
            )
        mask, _ = classmix_mask(label, self.generator(step, "classmix"), self.ignore_index)
        mixed_label = torch.where(mask, label, pseudo)
        pixel_weight = torch.where(mask, torch.ones_like(confidence), confidence).detach()
        logs["pseudo_confidence"] = confidence.item()

        if self.paired:
            # Both appearances get the same strong augmentation (equally seeded generators).
            mixed_out_a, mixed_out_b = forward_pair(
                model,
                self._strong(mix(mask, src, tgt), step),
                self._strong(mix(mask, src_b, tgt), step),
            )
            loss_t = weighted_cross_entropy(
                mixed_out_a["logits"], mixed_label, pixel_weight, self.ignore_index
            ) + weighted_cross_entropy(
                mixed_out_b["logits"], mixed_label, pixel_weight, self.ignore_index
            )
        else:
            mixed_out_a = model(self._strong(mix(mask, src, tgt), step))
            loss_t = weighted_cross_entropy(
                mixed_out_a["logits"], mixed_label, pixel_weight, self.ignore_index
            )
        total = total + self.cfg.target_weight * loss_t
        logs["loss_t"] = loss_t.item()

        if self.paired and self.cfg.align_weight > 0:
            l_a = aligned_features(
                self.cfg.align, out_a, out_b, self.generator(step, "align_source"), "method.align"
            )
            total = total + self.cfg.align_weight * l_a
            logs["align_source"] = l_a.item()
        if self.paired and self.cfg.mix_align_weight > 0:
            l_m = aligned_features(
                self.cfg.align,
                mixed_out_a,
                mixed_out_b,
                self.generator(step, "align_mixed"),
                "method.align",
            )
            total = total + self.cfg.mix_align_weight * l_m
            logs["align_mixed"] = l_m.item()
        logs["loss"] = total.item()
        return total, logs
