"""Mask2Former set criterion for semantic segmentation.

Targets: every class present in an image's label map is one binary mask. Ignored pixels (255)
belong to no target and are left out of the mask losses (they are neither positive nor
negative), which is how the losses treat "unknown" rather than calling it background.

Points: the mask losses and costs compare predictions and targets on a set of points per
image. ``num_points=None`` uses every valid pixel of the stride-4 mask grid (labels resized by
nearest neighbour); otherwise ``num_points`` valid label pixels are drawn uniformly (seeded) at
full label resolution and the mask logits are bilinearly sampled there (Mask2Former's
``point_sample``; its importance sampling is not reproduced). The same points serve the matching
and the loss of every decoder layer in one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shiftlab.models.querydiff.matching import hungarian_match, matching_cost


@dataclass(frozen=True)
class CriterionWeights:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1


@dataclass
class _ImagePoints:
    """One image's targets and sampling points."""

    classes: torch.Tensor  # (T,) long
    masks: torch.Tensor  # (T, P) float
    # Either flat indices into the mask grid (full mode) or (P, 2) xy in [0, 1] (point mode).
    index: torch.Tensor | None
    coords: torch.Tensor | None


def point_sample(mask_logits: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (Q, h, w) logits at (P, 2) normalised xy coords -> (Q, P)."""
    grid = (coords * 2.0 - 1.0).view(1, 1, -1, 2).to(mask_logits.dtype)
    sampled = F.grid_sample(mask_logits.unsqueeze(0), grid, mode="bilinear", align_corners=False)
    return sampled[0, :, 0, :]


def _average_num_masks(local: int, device: torch.device) -> float:
    """Target masks per worker, averaged over DDP workers (>= 1), as Mask2Former normalises:
    every worker divides by the same number, so each mask weighs the same on every worker."""
    count = torch.tensor(float(local), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return max(float(count), 1.0)


class SetCriterion:
    """``criterion(outputs, labels, generator) -> (total, parts)`` for the model's outputs."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        weights: CriterionWeights | None = None,
        num_points: int | None = None,
        deep_supervision: bool = True,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.w = weights or CriterionWeights()
        self.num_points = num_points
        self.deep_supervision = deep_supervision

    # -- targets ----------------------------------------------------------------------------

    def _points(
        self, label: torch.Tensor, grid: tuple[int, int], generator: torch.Generator | None
    ) -> _ImagePoints:
        if self.num_points is None:
            small = F.interpolate(label[None, None].float(), size=grid, mode="nearest")[0, 0].long()
            flat = small.flatten()
            index = torch.nonzero(flat != self.ignore_index).squeeze(1)
            values = flat[index]
            coords = None
        else:
            h, w = label.shape
            flat = label.flatten().long()
            valid = torch.nonzero(flat != self.ignore_index).squeeze(1)
            if valid.numel() > 0:
                pick = torch.randint(
                    valid.numel(), (self.num_points,), generator=generator, device="cpu"
                ).to(valid.device)
                valid = valid[pick]
            values = flat[valid]
            ys = torch.div(valid, w, rounding_mode="floor")
            xs = valid - ys * w
            coords = torch.stack([(xs.float() + 0.5) / w, (ys.float() + 0.5) / h], dim=1)
            index = None
        classes = torch.unique(values)
        classes = classes[classes < self.num_classes]
        masks = (values[None, :] == classes[:, None]).float()
        return _ImagePoints(classes=classes, masks=masks, index=index, coords=coords)

    # -- losses -----------------------------------------------------------------------------

    def _layer_losses(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[_ImagePoints],
        num_masks: float,
    ) -> dict[str, torch.Tensor]:
        b, q, _ = class_logits.shape
        target_classes = torch.full(
            (b, q), self.num_classes, dtype=torch.long, device=class_logits.device
        )
        bce_sum = class_logits.new_zeros(())
        dice_sum = class_logits.new_zeros(())
        for i, tgt in enumerate(targets):
            if tgt.classes.numel() == 0:
                continue
            if tgt.index is not None:
                pred = mask_logits[i].flatten(1)[:, tgt.index]
            else:
                assert tgt.coords is not None
                pred = point_sample(mask_logits[i], tgt.coords)
            with torch.no_grad():
                cost = matching_cost(
                    class_logits[i], pred, tgt.classes, tgt.masks,
                    self.w.class_weight, self.w.mask_weight, self.w.dice_weight,
                )
            rows, cols = hungarian_match(cost)
            rows = rows.to(class_logits.device)
            cols = cols.to(class_logits.device)
            target_classes[i, rows] = tgt.classes[cols]
            matched = pred[rows].float()
            goal = tgt.masks[cols]
            bce_sum = bce_sum + F.binary_cross_entropy_with_logits(
                matched, goal, reduction="none"
            ).mean(dim=1).sum()
            probs = matched.sigmoid()
            dice = 1.0 - (2.0 * (probs * goal).sum(1) + 1.0) / (probs.sum(1) + goal.sum(1) + 1.0)
            dice_sum = dice_sum + dice.sum()
        class_w = class_logits.new_ones(self.num_classes + 1, dtype=torch.float32)
        class_w[-1] = self.w.no_object_weight
        ce = F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight=class_w)
        return {
            "loss_ce": ce * self.w.class_weight,
            "loss_mask": bce_sum / num_masks * self.w.mask_weight,
            "loss_dice": dice_sum / num_masks * self.w.dice_weight,
        }

    def __call__(
        self,
        outputs: dict[str, object],
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        class_logits = outputs["class_logits"]
        mask_logits = outputs["mask_logits"]
        assert isinstance(class_logits, torch.Tensor) and isinstance(mask_logits, torch.Tensor)
        grid = (mask_logits.shape[-2], mask_logits.shape[-1])
        targets = [self._points(label, grid, generator) for label in labels.to(mask_logits.device)]
        num_masks = _average_num_masks(sum(t.classes.numel() for t in targets), mask_logits.device)
        parts = self._layer_losses(class_logits, mask_logits, targets, num_masks)
        total = parts["loss_ce"] + parts["loss_mask"] + parts["loss_dice"]
        if self.deep_supervision:
            aux_total = class_logits.new_zeros((), dtype=torch.float32)
            for aux in outputs.get("aux_outputs", []):  # type: ignore[union-attr]
                layer = self._layer_losses(aux["class_logits"], aux["mask_logits"], targets, num_masks)
                aux_total = aux_total + layer["loss_ce"] + layer["loss_mask"] + layer["loss_dice"]
            parts["loss_aux"] = aux_total
            total = total + aux_total
        return total, parts
