"""`shiftlab score`: mIoU of a folder of predicted train-id PNGs against a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.cli.common import add_dataset_args, emit, open_from_args
from shiftlab.data.formats import DatasetReader
from shiftlab.data.io import read_label_raw
from shiftlab.data.label_spaces import LabelSpace
from shiftlab.utils.errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="score predicted train-id PNGs (<id>.png) against ground truth"
    )
    add_dataset_args(p)
    p.add_argument(
        "--predictions", required=True, type=Path, help="folder of <id>.png train-id maps"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_score)


def check_prediction_values(path: Path, pred: np.ndarray, space: LabelSpace) -> None:
    """Train ids 0..K-1 (and 255, ignore) only: anything else would silently count as misses."""
    values = np.unique(pred)
    bad = [int(v) for v in values if v >= space.num_classes and v != space.ignore_index]
    if not bad:
        return
    raw = set(space.value_to_class)
    hint = (
        "; they look like raw label ids (e.g. Cityscapes labelIds): save train ids instead, "
        "as `shiftlab evaluate` writes them"
        if all(v in raw for v in bad)
        else ""
    )
    shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    raise DataError(
        f"{path}: prediction values {shown} are outside label space {space.name!r} "
        f"(train ids 0..{space.num_classes - 1}, 255 = ignore){hint}"
    )


def score_predictions(reader: DatasetReader, predictions: Path) -> dict[str, Any]:
    # torch is imported by the command that needs it: every `shiftlab` command parses its
    # arguments with this module loaded, and most never touch torch.
    import torch

    from shiftlab.evaluate.metrics import ConfusionMatrix

    if not predictions.is_dir():
        raise DataError(f"{predictions}: predictions folder not found")
    space = reader.label_space
    cm = ConfusionMatrix(space.num_classes, space.ignore_index)
    samples = reader.samples()
    for sample in samples:
        if sample.label is None:
            raise DataError(
                f"sample {sample.id!r}: split {reader.split!r} of {reader.root} has no labels to score against"
            )
        gt = reader.read_label(sample)
        path = predictions / f"{sample.id}.png"
        if not path.is_file():
            raise DataError(f"{path}: missing prediction for sample {sample.id!r}")
        pred = read_label_raw(path)
        check_prediction_values(path, pred, space)
        if pred.shape != gt.shape:
            raise DataError(
                f"{path}: prediction size {pred.shape[1]}x{pred.shape[0]} does not match the label "
                f"{sample.label} size {gt.shape[1]}x{gt.shape[0]}"
            )
        cm.update(torch.from_numpy(pred.astype("int64")), torch.from_numpy(gt))
    m = cm.compute()
    return {
        "miou": m.miou,
        "per_class": m.named(space.class_names),
        "pixel_accuracy": m.pixel_accuracy,
        "num_samples": len(samples),
        "num_pixels": m.num_pixels,
        "label_space": space.name,
    }


def run_score(args: argparse.Namespace) -> int:
    result = score_predictions(open_from_args(args), args.predictions)
    lines = [
        f"mIoU {result['miou']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}  ({result['num_samples']} images)"
    ]
    lines += [
        f"  {n:<16} {'-' if v is None else f'{v:.4f}'}" for n, v in result["per_class"].items()
    ]
    emit(result, args.json, "\n".join(lines))
    return 0
