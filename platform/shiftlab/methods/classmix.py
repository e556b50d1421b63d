"""DACS cross-domain mixing with an EMA teacher (and the CARLA-4AGT two-appearance variant)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass
class PseudoLabels:
    """The EMA teacher's reading of the clean target batch."""

    label: torch.Tensor  # (B, H, W) argmax classes
    weight: torch.Tensor  # (B, H, W) per-pixel weight of the target CE
    confidence: float  # DACS's share of pixels above the threshold


@dataclass
class MixStep:
    """What one step of the loss computed, for the terms a subclass adds (DAFormer's FD, MIC)."""

    src: torch.Tensor
    src_b: torch.Tensor | None
    tgt: torch.Tensor
    label: torch.Tensor
    out_a: dict[str, Any]  # the student on the source (appearance a)
    out_b: dict[str, Any] | None  # ... and on appearance b (two-appearance variant)
    pseudo: PseudoLabels
    step: int


@register_method("classmix")
class ClassMix(Method):
    """L_S (source CE) + target_weight * L_T (confidence-weighted CE on the mixed image).

    The EMA teacher (eval mode, no gradients) labels ``target_image``, which the data pipeline
    leaves un-augmented (DACS: the teacher sees the clean target); half the classes of each
    source label are pasted onto the target image and its pseudo-label. Target pixels weigh
    the fraction of confident teacher pixels, pasted source pixels weigh 1. Only the mixed image
    gets DACS's strong augmentation (colour jitter, blur; ``strong_augment``).
    CARLA-4AGT variant (``appearances`` set): ``image_b`` is a second appearance of the source;
    the same mask mixes it with the same target, both mixed images share the mixed label, and
    ``align_weight * L_A(source a, b) + mix_align_weight * L_M(mixed a, b)`` is added.
    """

    name = "classmix"
    cfg: ClassMixConfig

    def __init__(self, cfg: ClassMixConfig, *args: Any, **kwargs: Any) -> None:
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
            raise RuntimeError(f"{self.name}: setup(model) was not called")
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
            raise ValueError(f"{self.name} state needs 'teacher', got keys {sorted(state)}")
        if self.teacher is None:
            self._pending = state  # applied by setup(), which builds the teacher
        else:
            self.teacher.load_state_dict(state["teacher"])
            self._step = int(state.get("step", 0))

    def _strong(self, images: torch.Tensor, step: int, purpose: str = "strong") -> torch.Tensor:
        mean, std = self.input_stats
        return strong_augment(
            images, self.cfg.strong_augment, mean, std, self.generator(step, purpose)
        )

    @torch.no_grad()
    def pseudo_labels(self, tgt: torch.Tensor) -> PseudoLabels:
        """The teacher's argmax on the (clean) target and the per-pixel target weights."""
        assert self.teacher is not None
        label, confidence = pseudo_labels(self.teacher(tgt)["logits"], self.cfg.pseudo_threshold)
        weight = self.pixel_weight(confidence.expand(label.shape).clone())
        return PseudoLabels(label, weight, float(confidence.item()))

    def pixel_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """DACS: every target pixel weighs the batch's confident share (subclasses mask rows)."""
        return weight

    # -- loss --------------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_S + target_weight * L_T (+ lambda_A L_A + lambda_M L_M in the two-appearance
        variant) + whatever ``extra_terms`` adds."""
        src, src_b, tgt, label = self._inputs(batch)
        out_a, out_b, loss_s = self._source_loss(model, src, src_b, label)
        pseudo = self.pseudo_labels(tgt)
        mixed_a, mixed_b, loss_t = self._mixed_loss(model, src, src_b, tgt, label, pseudo, step)
        total = loss_s + self.cfg.target_weight * loss_t
        logs = {
            "loss_s": loss_s.item(),
            "loss_t": loss_t.item(),
            "pseudo_confidence": pseudo.confidence,
        }
        if self.paired:
            total = total + self._alignment(out_a, out_b, mixed_a, mixed_b, step, logs)
        parts = MixStep(src, src_b, tgt, label, out_a, out_b, pseudo, step)
        total = total + self.extra_terms(model, parts, logs)
        logs["loss"] = total.item()
        return total, logs

    def extra_terms(self, model: nn.Module, parts: MixStep, logs: dict[str, float]) -> torch.Tensor:
        """Further loss terms on top of DACS (none here; DAFormer adds FD and MIC)."""
        return torch.zeros((), device=parts.src.device)

    def _inputs(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(source, source appearance b or None, target, source label), checked."""
        if self.teacher is None:
            raise RuntimeError(f"{self.name}: setup(model) was not called")
        src, label = require(batch, "image", self.name), require(batch, "label", self.name)
        tgt = require(batch, "target_image", self.name)
        if tgt.shape[0] != src.shape[0] or tgt.shape[-2:] != src.shape[-2:]:
            raise ValueError(
                f"{self.name}: target_image {tuple(tgt.shape)} must match image {tuple(src.shape)}"
            )
        if next(self.teacher.parameters()).device != src.device:
            self.teacher.to(src.device)
        src_b = require(batch, "image_b", self.name) if self.paired else None
        return src, src_b, tgt, label

    def _source_loss(
        self, model: nn.Module, src: torch.Tensor, src_b: torch.Tensor | None, label: torch.Tensor
    ) -> tuple[dict[str, Any], dict[str, Any] | None, torch.Tensor]:
        """CE on the source (both appearances in one forward in the paired variant)."""
        if src_b is None:
            out_a = model(src)
            return out_a, None, cross_entropy(out_a["logits"], label, None, self.ignore_index)
        out_a, out_b = forward_pair(model, src, src_b)
        loss = cross_entropy(out_a["logits"], label, None, self.ignore_index)
        return out_a, out_b, loss + cross_entropy(out_b["logits"], label, None, self.ignore_index)

    def _mixed_loss(
        self,
        model: nn.Module,
        src: torch.Tensor,
        src_b: torch.Tensor | None,
        tgt: torch.Tensor,
        label: torch.Tensor,
        pseudo: PseudoLabels,
        step: int,
    ) -> tuple[dict[str, Any], dict[str, Any] | None, torch.Tensor]:
        """ClassMix of source into target, confidence-weighted CE on the mixed label."""
        mask, _ = classmix_mask(label, self.generator(step, "classmix"), self.ignore_index)
        mixed_label = torch.where(mask, label, pseudo.label)
        weight = torch.where(mask, torch.ones_like(pseudo.weight), pseudo.weight).detach()

        def mixed_ce(out: dict[str, Any]) -> torch.Tensor:
            return weighted_cross_entropy(out["logits"], mixed_label, weight, self.ignore_index)

        if src_b is None:
            mixed_a = model(self._strong(mix(mask, src, tgt), step))
            return mixed_a, None, mixed_ce(mixed_a)
        # Both appearances get the same strong augmentation (equally seeded generators).
        mixed_a, mixed_b = forward_pair(
            model,
            self._strong(mix(mask, src, tgt), step),
            self._strong(mix(mask, src_b, tgt), step),
        )
        return mixed_a, mixed_b, mixed_ce(mixed_a) + mixed_ce(mixed_b)

    def _alignment(
        self,
        out_a: dict[str, Any],
        out_b: Any,
        mixed_a: dict[str, Any],
        mixed_b: Any,
        step: int,
        logs: dict[str, float],
    ) -> torch.Tensor:
        """lambda_A L_A (source a vs b) + lambda_M L_M (mixed a vs b)."""
        total = torch.zeros((), device=out_a["logits"].device)
        pairs = (
            ("align_source", self.cfg.align_weight, out_a, out_b),
            ("align_mixed", self.cfg.mix_align_weight, mixed_a, mixed_b),
        )
        for name, weight, a, b in pairs:
            if weight > 0:
                term = aligned_features(
                    self.cfg.align, a, b, self.generator(step, name), "method.align"
                )
                total = total + weight * term
                logs[name] = term.item()
        return total
