"""DAFormer's rare-class sampling (RCS) of source images, seeded, per DDP rank, resumable.

DAFormer (Hoyer et al., CVPR 2022, Sec. 3.4, Eq. 6) samples a class c with
P(c) = exp((1 - f_c) / T) / sum_c' exp((1 - f_c') / T), f_c the share of all labelled source
pixels that belong to c, T = 0.01; then a source image uniformly among those holding more than
3,000 pixels of c (its crop is redrawn until it holds enough of c, see ``TrainDataset``). Rare
classes are seen far more often, which stabilises the self-training of classes the teacher
would otherwise never predict.

Each epoch every rank draws its own ``num_samples`` items from a generator seeded by
``(seed, stage, epoch, rank)``: no rank needs another's draws, a resumed epoch redraws exactly
the same items, and every rank runs as many steps (as with ``DistributedSampler``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shiftlab.config.method import RareClassSamplingConfig
from shiftlab.data.class_stats import ClassStats
from shiftlab.utils.errors import DataError
from shiftlab.utils.seeding import rng_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RcsDraw:
    """One drawn source item: the sample's index, the class it was drawn for, and the draw's
    number in the epoch (unique over ranks, so two draws of one image get distinct crops)."""

    index: int
    cls: int
    draw: int


def rare_class_probabilities(
    class_pixels: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """(classes, P(class)) over the classes with labelled pixels: softmax((1 - f_c) / T)."""
    pixels = np.asarray(class_pixels, dtype=np.float64)
    classes = np.flatnonzero(pixels > 0)
    if classes.size == 0:
        raise DataError("rare-class sampling: the source labels hold no labelled pixel")
    freq = pixels[classes] / pixels[classes].sum()
    logits = (1.0 - freq) / temperature
    weights = np.exp(logits - logits.max())  # stable softmax
    return classes, weights / weights.sum()


class RareClassSampler:
    """Yields ``RcsDraw`` items: ``num_samples`` per epoch for this rank."""

    def __init__(
        self,
        stats: ClassStats,
        cfg: RareClassSamplingConfig,
        num_samples: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        classes, probs = rare_class_probabilities(stats.class_pixels(), cfg.temperature)
        pools = {int(c): stats.samples_with(int(c), cfg.min_pixels) for c in classes}
        keep = np.asarray([pools[int(c)].size > 0 for c in classes])
        if not keep.any():
            raise DataError(
                f"rare-class sampling: no source image holds more than {cfg.min_pixels} pixels "
                "of any class (lower method.rcs.min_pixels)"
            )
        if not keep.all():
            # DAFormer requires an image per class; a class without one is left out here.
            log.info(
                "rare-class sampling: classes %s have no image with > %d pixels; not drawn",
                classes[~keep].tolist(),
                cfg.min_pixels,
            )
        self.classes = classes[keep]
        self.probs = probs[keep] / probs[keep].sum()
        self.pools = {int(c): pools[int(c)] for c in self.classes}
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[RcsDraw]:
        rng = rng_for(self.seed, "rcs", self.epoch, self.rank)
        for i in range(self.num_samples):
            cls = int(self.classes[rng.choice(self.classes.size, p=self.probs)])
            pool = self.pools[cls]
            index = int(pool[rng.integers(pool.size)])
            yield RcsDraw(index=index, cls=cls, draw=i * self.world_size + self.rank)
