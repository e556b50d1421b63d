"""Streaming confusion matrix and the Cityscapes metrics (mIoU, per-class IoU, pixel accuracy).

IoU = TP / (TP + FP + FN), accumulated over the whole set (one matrix, not a mean of per-image
IoUs). Classes whose union is empty (absent in both ground truth and prediction) are excluded
from the mean, as in the Cityscapes evaluation. Predictions outside 0..K-1 count as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

# Characters MLflow accepts in a metric name; class names like "traffic light" keep theirs.
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w\-. :/]")


@dataclass
class SegMetrics:
    miou: float
    per_class_iou: list[float | None]  # None where the union is empty
    pixel_accuracy: float
    num_pixels: int

    def named(self, class_names: tuple[str, ...] | list[str]) -> dict[str, float | None]:
        return dict(zip(class_names, self.per_class_iou, strict=True))


def class_key(class_name: str) -> str:
    """A class name as it appears in metric keys (``.../iou/<class>``)."""
    return _NOT_IN_METRIC_NAMES.sub("_", class_name)


def subset_mious(
    per_class: Mapping[str, float | None], subsets: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """The mean IoU of each named class subset (``LabelSpace.subsets``, e.g. cityscapes16's
    ``miou13``), over its classes that occur, as the mIoU is; a subset none of whose classes
    occurs is left out."""
    out = {}
    for name, classes in subsets.items():
        present = [v for c in classes if (v := per_class.get(c)) is not None]
        if present:
            out[name] = float(sum(present) / len(present))
    return out


def metric_keys(
    prefix: str,
    miou: float,
    pixel_accuracy: float,
    per_class: Mapping[str, float | None],
    subset_miou: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """``<prefix>/miou``, ``<prefix>/pixel_accuracy`` and ``<prefix>/iou/<class>`` for every
    class that occurs (in the labels or the predictions), and ``<prefix>/<subset>`` for each
    subset mIoU given (``subset_mious``): what MLflow, Tune and compare see."""
    keys = {f"{prefix}/miou": float(miou), f"{prefix}/pixel_accuracy": float(pixel_accuracy)}
    for name, value in (subset_miou or {}).items():
        keys[f"{prefix}/{name}"] = float(value)
    for name, iou in per_class.items():
        if iou is not None:
            keys[f"{prefix}/iou/{class_key(name)}"] = float(iou)
    return keys


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; an extra last column collects invalid predictions."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} != label shape {tuple(gt.shape)}"
            )
        device = self.matrix.device
        gt = gt.to(device=device, dtype=torch.int64).reshape(-1)
        pred = pred.to(device=device, dtype=torch.int64).reshape(-1)
        valid = (gt != self.ignore_index) & (gt >= 0) & (gt < self.num_classes)
        gt, pred = gt[valid], pred[valid]
        k = self.num_classes
        pred = torch.where((pred >= 0) & (pred < k), pred, torch.full_like(pred, k))
        self.matrix += torch.bincount(gt * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def compute(self) -> SegMetrics:
        m = self.matrix.double()
        tp = m.diagonal()[: self.num_classes] if m.shape[1] > self.num_classes else m.diagonal()
        gt_total = m.sum(dim=1)  # TP + FN (invalid predictions are misses)
        pred_total = m[:, : self.num_classes].sum(dim=0)  # TP + FP
        union = gt_total + pred_total - tp
        per_class: list[float | None] = [
            (tp[i] / union[i]).item() if union[i] > 0 else None for i in range(self.num_classes)
        ]
        present = [v for v in per_class if v is not None]
        total = m.sum().item()
        return SegMetrics(
            miou=float(sum(present) / len(present)) if present else 0.0,
            per_class_iou=per_class,
            pixel_accuracy=float(tp.sum().item() / total) if total else 0.0,
            num_pixels=int(total),
        )
