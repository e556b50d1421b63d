"""The streaming confusion matrix against an independent per-class computation."""

from __future__ import annotations

import numpy as np
import torch

from shiftlab.evaluate.metrics import ConfusionMatrix


def reference_iou(preds, gts, k, ignore=255):
    """Straightforward set-based IoU over all pixels of all images (no confusion matrix)."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        ious.append(None if union == 0 else inter / union)
    acc = np.mean(pred == gt)
    present = [v for v in ious if v is not None]
    return ious, float(np.mean(present)), float(acc)


def test_matches_independent_computation_over_batches():
    rng = np.random.default_rng(0)
    k = 6
    cm = ConfusionMatrix(k)
    preds, gts = [], []
    for _ in range(5):
        gt = rng.integers(0, k - 1, (13, 17))  # class k-1 never in gt
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, k - 1, gt.shape))
        pred[pred == 255] = 0
        preds.append(pred)
        gts.append(gt)
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    ious, miou, acc = reference_iou(preds, gts, k)
    m = cm.compute()
    assert m.per_class_iou[k - 1] is None  # absent in gt and prediction: excluded from the mean
    for a, b in zip(m.per_class_iou, ious, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert abs(a - b) < 1e-12
    assert abs(m.miou - miou) < 1e-12
    assert abs(m.pixel_accuracy - acc) < 1e-12


def test_class_predicted_but_absent_in_gt_counts_with_iou_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    m = cm.compute()
    assert m.per_class_iou == [0.5, None, 0.0]
    assert abs(m.miou - 0.25) < 1e-12


def test_invalid_predictions_are_misses():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([7, 1]), torch.tensor([0, 1]))
    m = cm.compute()
    assert m.per_class_iou == [0.0, 1.0]
    assert m.pixel_accuracy == 0.5


def test_merge_equals_single_stream():
    rng = np.random.default_rng(1)
    a, b, whole = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    for i in range(4):
        p, g = torch.from_numpy(rng.integers(0, 4, 50)), torch.from_numpy(rng.integers(0, 4, 50))
        (a if i % 2 else b).update(p, g)
        whole.update(p, g)
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)
