"""Validation inside training: every rank scores its share of each val set, matrices summed.

Each image is counted once (ranks take every world-th sample, no padding), so the mIoU is the
same as a single-process evaluation of the whole set with the same settings.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.formats import open_dataset
from shiftlab.data.transforms import Normalization
from shiftlab.evaluate.evaluator import checkpoint_datasets, stream_confusion
from shiftlab.evaluate.metrics import metric_keys, subset_mious


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def validate(model: nn.Module, cfg: ExperimentConfig, device: torch.device) -> dict[str, float]:
    """``val/<set>/miou``, ``val/<set>/pixel_accuracy``, ``val/<set>/iou/<class>`` (and
    ``val/<set>/<subset>`` for the label space's subsets, e.g. ``miou13``) per val set and the
    sets' mean ``val_miou``."""
    rank, world = _rank_and_world()
    # The bare model: DDP's forward syncs buffers collectively, and ranks may hold different
    # numbers of validation images.
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    norm = Normalization.from_config(cfg)
    metrics: dict[str, float] = {}
    mious = []
    for spec, _ in checkpoint_datasets(cfg, list(cfg.data.val)):
        reader = open_dataset(spec)
        cm = stream_confusion(
            net,
            reader,
            cfg.evaluate.for_dataset(spec.evaluate),
            device=device,
            norm=norm,
            samples=reader.samples()[rank::world],
        )
        if world > 1:
            dist.all_reduce(cm.matrix)
        result = cm.compute()
        space = reader.label_space
        per_class = result.named(space.class_names)
        metrics.update(
            metric_keys(
                f"val/{spec.display_name}",
                result.miou,
                result.pixel_accuracy,
                per_class,
                subset_mious(per_class, space.subsets),
            )
        )
        mious.append(result.miou)
    if mious:
        metrics["val_miou"] = float(sum(mious) / len(mious))
    return metrics
