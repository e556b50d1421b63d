"""Mask2Former set criterion for semantic segmentation.

Targets: every class present in an image's label map is one binary mask. Ignored pixels (255)
belong to no target and are left out of the mask losses and costs (they are neither positive
nor negative): each point is weighted by the bilinearly sampled "labelled" map, and its target
is the class fraction among its labelled neighbours. That is how the losses treat "unknown"
rather than calling it background (Mask2Former's semantic targets make ignored pixels
negatives of every mask). With no ignored pixel in an image this is exactly Mask2Former's
unweighted form.

Points (Mask2Former's criterion and matcher, after PointRend; ``num_points`` 12544 = 112 x 112,
``oversample_ratio`` 3, ``importance_sample_ratio`` 0.75):

* matching: per image and decoder layer, ``num_points`` uniform random points in [0, 1]^2 shared
  by all predicted and target masks;
* losses: per matched mask, ``int(oversample_ratio * num_points)`` uniform candidates, of which
  the ``int(importance_sample_ratio * num_points)`` most uncertain (uncertainty ``-|logit|`` of
  the predicted mask there) are kept, then ``num_points`` minus those uniform random points;
* point values: bilinear ``grid_sample`` (``align_corners=False``, zero padding) of the
  stride-4 mask logits and of the full-resolution target masks.

Every draw comes from the step's generator (the method passes one per step), in a fixed order.
``num_points=None`` instead uses every valid pixel of the stride-4 mask grid (labels resized by
nearest neighbour) for matching and losses alike: exact and deterministic, for small inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
class _Target:
    """One image's target masks."""

    classes: torch.Tensor  # (T,) long
    # Grid mode: (T, P) at the valid mask-grid pixels ``index``. Point mode: (T, H, W) float
    # masks at label resolution, and ``valid`` (1, H, W) float (None: no pixel is ignored).
    masks: torch.Tensor
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (``align_corners=False``, zero padding) of ``maps (N, h, w)`` at xy
    coords in [0, 1]: ``coords (P, 2)`` shared by all maps, or ``(N, P, 2)`` one set per map
    -> ``(N, P)``."""
    grid = (coords * 2.0 - 1.0).to(maps.dtype)
    if grid.dim() == 2:
        sampled = F.grid_sample(maps[None], grid[None, None], mode="bilinear", align_corners=False)
        return sampled[0, :, 0, :]
    sampled = F.grid_sample(maps[:, None], grid[:, None], mode="bilinear", align_corners=False)
    return sampled[:, 0, 0, :]


def uniform_points(
    count: int, num_points: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``(count, num_points, 2)`` uniform random xy in [0, 1)."""
    return torch.rand(count, num_points, 2, generator=generator, device=device)


@torch.no_grad()
def importance_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask2Former's (PointRend's) uncertain points of ``logits (M, h, w)`` -> ``(M, P, 2)``.

    Draws ``int(oversample_ratio * P)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * P)`` with the highest uncertainty ``-|logit|`` (first in the
    result), then draws the remaining points uniformly (last). Draw order: candidates, rest.
    """
    m = logits.shape[0]
    candidates = uniform_points(m, int(num_points * oversample_ratio), generator, logits.device)
    uncertainty = -point_sample(logits, candidates).abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    rest = uniform_points(m, num_points - num_uncertain, generator, logits.device)
    return torch.cat([chosen, rest], dim=1)


def _labelled_target(goal: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A point's target among its *labelled* neighbours: bilinear samples of a class mask count
    ignored neighbours as 0, so divide by the sampled labelled fraction (the point weight)."""
    return goal / valid.clamp_min(1e-6) * (valid > 0), valid


def _device_generator(
    generator: torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """Draw on the data's device: a device generator seeded from the (CPU) step generator."""
    if generator is None or generator.device == device or device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _mask_losses(
    pred: torch.Tensor, goal: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-mask point BCE (mean over points) and Dice (smoothing 1) of (M, P) pairs."""
    bce = F.binary_cross_entropy_with_logits(pred, goal, reduction="none")
    probs = pred.sigmoid()
    if weights is None:
        bce = bce.mean(dim=1)
        inter, total = (probs * goal).sum(1), probs.sum(1) + goal.sum(1)
    else:
        bce = (bce * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-6)
        # Each sum weighs a point once (weight 1 everywhere: Mask2Former's Dice).
        inter = (weights * probs * goal).sum(1)
        total = (weights * probs).sum(1) + (weights * goal).sum(1)
    dice = 1.0 - (2.0 * inter + 1.0) / (total + 1.0)
    return bce.sum(), dice.sum()


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
        num_points: int | None = 12544,
        deep_supervision: bool = True,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        if oversample_ratio < 1.0 or not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(
                f"oversample_ratio must be >= 1 and importance_sample_ratio in [0, 1], got "
                f"{oversample_ratio}, {importance_sample_ratio}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.w = weights or CriterionWeights()
        self.num_points = num_points
        self.deep_supervision = deep_supervision
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    # -- targets ----------------------------------------------------------------------------

    def _classes(self, values: torch.Tensor) -> torch.Tensor:
        classes = torch.unique(values)
        return classes[(classes < self.num_classes) & (classes != self.ignore_index)]

    def _target(self, label: torch.Tensor, grid: tuple[int, int]) -> _Target:
        if self.num_points is None:
            small = F.interpolate(label[None, None].float(), size=grid, mode="nearest")[0, 0].long()
            flat = small.flatten()
            index = torch.nonzero(flat != self.ignore_index).squeeze(1)
            classes = self._classes(flat[index])
            masks = (flat[index][None, :] == classes[:, None]).float()
            return _Target(classes=classes, masks=masks, index=index)
        label = label.long()
        classes = self._classes(label)
        masks = (label[None] == classes[:, None, None]).float()
        ignored = label == self.ignore_index
        valid = (~ignored).float()[None] if bool(ignored.any()) else None
        return _Target(classes=classes, masks=masks, valid=valid)

    # -- points -----------------------------------------------------------------------------

    def _match(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        tgt: _Target,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hungarian assignment of one image's queries (Q) to its targets (T)."""
        with torch.no_grad():
            weights = None
            if tgt.index is not None:
                pred, goal = mask_logits.flatten(1)[:, tgt.index], tgt.masks
            else:
                coords = uniform_points(1, self.num_points or 0, generator, mask_logits.device)[0]
                pred, goal = point_sample(mask_logits, coords), point_sample(tgt.masks, coords)
                if tgt.valid is not None:
                    goal, weights = _labelled_target(goal, point_sample(tgt.valid, coords))
                    weights = weights[0]
            cost = matching_cost(
                class_logits,
                pred,
                tgt.classes,
                goal,
                self.w.class_weight,
                self.w.mask_weight,
                self.w.dice_weight,
                weights,
            )
        rows, cols = hungarian_match(cost)
        return rows.to(mask_logits.device), cols.to(mask_logits.device)

    def _pair_points(
        self,
        mask_logits: torch.Tensor,
        tgt: _Target,
        rows: torch.Tensor,
        cols: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(prediction, target, point weights) of the matched pairs on their loss points."""
        if tgt.index is not None:
            return mask_logits.flatten(1)[rows][:, tgt.index].float(), tgt.masks[cols], None
        matched = mask_logits[rows]
        coords = importance_points(
            matched.detach(),
            self.num_points or 0,
            self.oversample_ratio,
            self.importance_sample_ratio,
            generator,
        )
        pred = point_sample(matched, coords).float()
        with torch.no_grad():
            goal = point_sample(tgt.masks[cols], coords).float()
            weights = None
            if tgt.valid is not None:
                valid = point_sample(tgt.valid.expand(len(cols), -1, -1), coords).float()
                goal, weights = _labelled_target(goal, valid)
        return pred, goal, weights

    # -- losses -----------------------------------------------------------------------------

    def _layer_losses(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[_Target],
        num_masks: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        b, q, _ = class_logits.shape
        target_classes = torch.full(
            (b, q), self.num_classes, dtype=torch.long, device=class_logits.device
        )
        bce_sum = class_logits.new_zeros((), dtype=torch.float32)
        dice_sum = class_logits.new_zeros((), dtype=torch.float32)
        for i, tgt in enumerate(targets):
            if tgt.classes.numel() == 0:
                continue
            rows, cols = self._match(class_logits[i], mask_logits[i], tgt, generator)
            target_classes[i, rows] = tgt.classes[cols]
            pred, goal, weights = self._pair_points(mask_logits[i], tgt, rows, cols, generator)
            bce, dice = _mask_losses(pred, goal, weights)
            bce_sum, dice_sum = bce_sum + bce, dice_sum + dice
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
        device = mask_logits.device
        gen = _device_generator(generator, device)
        grid = (mask_logits.shape[-2], mask_logits.shape[-1])
        targets = [self._target(label, grid) for label in labels.to(device)]
        num_masks = _average_num_masks(sum(t.classes.numel() for t in targets), device)
        parts = self._layer_losses(class_logits, mask_logits, targets, num_masks, gen)
        total = parts["loss_ce"] + parts["loss_mask"] + parts["loss_dice"]
        if self.deep_supervision:
            aux_total = class_logits.new_zeros((), dtype=torch.float32)
            aux_outputs: Any = outputs.get("aux_outputs", [])
            for aux in aux_outputs:
                layer = self._layer_losses(
                    aux["class_logits"], aux["mask_logits"], targets, num_masks, gen
                )
                aux_total = aux_total + layer["loss_ce"] + layer["loss_mask"] + layer["loss_dice"]
            parts["loss_aux"] = aux_total
            total = total + aux_total
        return total, parts
