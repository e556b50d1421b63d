"""Training and validation datasets of an experiment.

A training sample is the labelled source sample, joined by sample id with its generated views
(a shiftlab dataset directory, when the experiment has a ``generate`` section), plus one
unlabelled target image for cross-domain mixing. Every random choice (the appearance pair, the
target partner, the augmentation) is seeded by ``(seed, epoch, sample id)`` (and the draw's
number under rare-class sampling), so a resumed epoch sees exactly the samples and
augmentations it would have seen without the interruption, no matter which worker or loader
process draws the sample. The target image gets its own geometry draw (resize, crop, flip) and
no photometric step: DACS's EMA teacher labels the clean target, and only the mixed image is
strongly augmented (by the method).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from shiftlab.config.method import RareClassSamplingConfig
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.class_stats import ClassStats, cached_class_stats
from shiftlab.data.formats import (
    DatasetReader,
    Sample,
    label_space_name,
    open_dataset,
    open_dataset_args,
)
from shiftlab.data.label_spaces import get_label_space
from shiftlab.data.transforms import resize_image
from shiftlab.methods import build_method
from shiftlab.train.augment import PairedAugment, target_augment_config
from shiftlab.train.sampling import RareClassSampler, RcsDraw
from shiftlab.utils.errors import ConfigError, DataError
from shiftlab.utils.seeding import rng_for

log = logging.getLogger(__name__)

# The batch key whose images come from data.target_unlabelled (see Method.views).
TARGET_KEY = "target_image"
# The view name that means "the source sample's own image" when the reader has no such view.
SOURCE_VIEW = "source"

# What a training sampler yields to the dataset: an index, or a rare-class draw.
ItemKey = int | RcsDraw
EpochSampler = DistributedSampler | RareClassSampler


class TrainDataset(Dataset):
    """The training samples of one stage of a method.

    ``views`` maps batch keys to view names (``Method.views(stage)``); ``pair_views`` (the
    method's, or None) asks for two distinct views per sample and epoch in ``image`` /
    ``image_b``; ``rcs`` (the method's ``rare_class_sampling``) makes ``sampler()`` draw
    source images by rare-class sampling. Items are dicts of tensors: one float (3,H,W) image
    per batch key and the int64 (H,W) ``label``.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        views: Mapping[str, str],
        pair_views: Sequence[str] | None = None,
        generated: str | Path | None = None,
        rcs: RareClassSamplingConfig | None = None,
    ) -> None:
        self.seed = cfg.seed
        self.views = dict(views)
        self.pair_views = list(pair_views) if pair_views else None
        self.rcs = rcs
        self.epoch = 0
        self.augment = PairedAugment(cfg.train.augment)
        self.target_augment = PairedAugment(target_augment_config(cfg.train.augment))
        self.target_size = cfg.train.augment.target_resize
        self.source: DatasetReader = open_dataset(cfg.data.source)
        self.samples: list[Sample] = self.source.samples()
        self.generated: DatasetReader | None = None
        self.generated_by_id: dict[str, Sample] = {}
        wanted = {v for k, v in self.views.items() if k != TARGET_KEY} | set(self.pair_views or [])
        own = set(self.samples[0].views) | {SOURCE_VIEW}
        # Generated views are joined only when the method reads one the source lacks (a
        # generate section does not change what e.g. source_only trains on).
        if generated is not None and not wanted <= own:
            self.generated = open_dataset_args("shiftlab", generated)
            self.generated_by_id = {s.id: s for s in self.generated.samples()}
            missing = [s.id for s in self.samples if s.id not in self.generated_by_id]
            if missing:
                raise DataError(
                    f"{generated}: generated set has no views for {len(missing)} source "
                    f"sample(s), e.g. {missing[:5]} (generated from another source?)"
                )
        self.target: DatasetReader | None = None
        self.target_samples: list[Sample] = []
        if TARGET_KEY in self.views:
            if cfg.data.target_unlabelled is None:
                raise ConfigError(
                    f"method.name: {cfg.method.name!r} needs unlabelled target images "
                    "(set data.target_unlabelled)"
                )
            self.target = open_dataset(cfg.data.target_unlabelled)
            self.target_samples = self.target.samples()
        self._check_views()

    # -- view resolution ---------------------------------------------------------------------
    def available_views(self, sample: Sample) -> list[str]:
        names = set(sample.views) | {SOURCE_VIEW}
        gen = self.generated_by_id.get(sample.id)
        if gen is not None:
            names |= set(gen.views)
        return sorted(names)

    def _check_views(self) -> None:
        """Fail before training when a method asks for a view no dataset provides."""
        first = self.samples[0]
        have = self.available_views(first)
        wanted = {v for k, v in self.views.items() if k != TARGET_KEY} | set(self.pair_views or [])
        missing = sorted(wanted - set(have))
        if missing:
            raise ConfigError(
                f"method views {missing} are not in the training data (sample {first.id!r} of "
                f"{self.source.root} has views {have}); check method appearances/views, "
                "data.source.condition and the generate section"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def view_plan(self, index: int) -> dict[str, str]:
        """Batch key -> view name for one sample this epoch (pairs drawn here)."""
        sample = self.samples[index]
        plan = {k: v for k, v in self.views.items() if k != TARGET_KEY}
        if self.pair_views:
            rng = rng_for(self.seed, "pair", self.epoch, sample.id)
            a, b = rng.choice(len(self.pair_views), size=2, replace=False)
            plan["image"], plan["image_b"] = self.pair_views[int(a)], self.pair_views[int(b)]
        return plan

    def target_index(self, index: int, draw: int | None = None) -> int:
        rng = rng_for(self.seed, "target", self.epoch, self.samples[index].id, *_draw(draw))
        return int(rng.integers(len(self.target_samples)))

    def _read_view(self, sample: Sample, view: str) -> np.ndarray:
        gen = self.generated_by_id.get(sample.id)
        if gen is not None and view in gen.views:
            assert self.generated is not None
            return self.generated.read_image(gen, view)
        if view in sample.views:
            return self.source.read_image(sample, view)
        if view == SOURCE_VIEW:
            return self.source.read_image(sample)
        raise DataError(f"sample {sample.id!r}: no view {view!r} ({self.available_views(sample)})")

    def _read_label(self, sample: Sample) -> np.ndarray:
        # Generated sets carry the source labels at their own image size; prefer them.
        gen = self.generated_by_id.get(sample.id)
        if gen is not None and self.generated is not None:
            return self.generated.read_label(gen)
        return self.source.read_label(sample)

    # -- items -------------------------------------------------------------------------------
    def load(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw (un-augmented) uint8 views and the label of one sample, all at the label size."""
        sample = self.samples[index]
        label = self._read_label(sample)
        size = label.shape[:2]
        images = {
            k: resize_image(self._read_view(sample, v), size)
            for k, v in self.view_plan(index).items()
        }
        return images, label

    def load_target(
        self, index: int, label_size: tuple[int, int], draw: int | None = None
    ) -> np.ndarray:
        """The raw target partner of sample ``index`` at ``train.augment.target_resize``, or
        else at the source label's size (then it takes the source's resize and matches it)."""
        assert self.target is not None
        t = self.target_samples[self.target_index(index, draw)]
        return resize_image(self.target.read_image(t), self.target_size or label_size)

    def file_checks(self) -> list[Callable[[], object]]:
        """One decode per file this dataset reads (every view, label and target image)."""
        views = {v for k, v in self.views.items() if k != TARGET_KEY} | set(self.pair_views or [])
        checks: list[Callable[[], object]] = []
        for sample in self.samples:
            checks.append(partial(self._read_label, sample))
            checks += [partial(self._read_view, sample, v) for v in sorted(views)]
        if self.target is not None:
            checks += [partial(self.target.read_image, t) for t in self.target_samples]
        return checks

    def __getitem__(self, key: ItemKey) -> dict[str, torch.Tensor]:
        index, draw = (key.index, key.draw) if isinstance(key, RcsDraw) else (int(key), None)
        images, label = self.load(index)
        sample_id = self.samples[index].id
        where = f"{self.source.root}:{sample_id}"
        rng = rng_for(self.seed, "augment", self.epoch, sample_id, *_draw(draw))
        # One call for every view: geometry shared, jitter per view.
        item = self.augment(images, label, rng, sample=where)
        if isinstance(key, RcsDraw):
            item = self._recrop_for_class(item, images, label, key.cls, rng, where)
        if self.target is not None:
            target = {TARGET_KEY: self.load_target(index, label.shape[:2], draw)}
            t_rng = rng_for(self.seed, "target_augment", self.epoch, sample_id, *_draw(draw))
            item.update(self.target_augment(target, None, t_rng, sample=where))
        return item

    def _recrop_for_class(
        self,
        item: dict[str, torch.Tensor],
        images: dict[str, np.ndarray],
        label: np.ndarray,
        cls: int,
        rng: np.random.Generator,
        where: str,
    ) -> dict[str, torch.Tensor]:
        """DAFormer's RCS crop check: redraw the augmentation (crop) until it holds more than
        ``min_pixels * min_crop_ratio`` pixels of the drawn class, ``crop_tries`` crops at
        most (the last one is kept)."""
        assert self.rcs is not None
        need = self.rcs.min_pixels * self.rcs.min_crop_ratio
        for _ in range(self.rcs.crop_tries - 1):
            if int((item["label"] == cls).sum()) > need:
                break
            item = self.augment(images, label, rng, sample=where)
        return item

    # -- sampling ----------------------------------------------------------------------------
    def class_stats(self) -> ClassStats:
        """Per-sample class pixel counts of the source labels (cached, see data.class_stats)."""
        return cached_class_stats(self.source, samples=self.samples)

    def sampler(self, seed: int, rank: int = 0, world_size: int = 1) -> EpochSampler:
        """This rank's sampler: rare-class sampling when ``rcs`` is set, else a shuffled
        ``DistributedSampler`` share; both give every rank ceil(N / world_size) items."""
        if self.rcs is None:
            return DistributedSampler(
                self, num_replicas=world_size, rank=rank, shuffle=True, seed=seed % 2**31
            )
        n = math.ceil(len(self) / world_size)
        return RareClassSampler(self.class_stats(), self.rcs, n, seed, rank, world_size)


def check_training_data(cfg: ExperimentConfig, generated: str | Path | None) -> None:
    """Every stage of the method finds the views it reads (a wrong view, appearance or
    generated set fails here, in the driver, not in every worker); with
    ``train.verify_data``, every file training and evaluation will read is decoded once."""
    space = get_label_space(label_space_name(cfg.data.source))
    method = build_method(
        cfg.method, space.num_classes, space.class_names, space.ignore_index, seed=cfg.seed
    )
    if not cfg.stage_plan():
        raise ConfigError(f"method {cfg.method.name!r}: no stage has any epochs")
    checks: list[Callable[[], object]] = []
    for stage, _ in cfg.stage_plan():
        dataset = TrainDataset(cfg, method.views(stage), method.pair_views, generated)
        checks += dataset.file_checks()
    if method.rare_class_sampling is not None:
        # Counted here, once, before the workers start (they find the node's cache filled).
        cached_class_stats(open_dataset(cfg.data.source))
    for spec in [*cfg.data.val, *cfg.data.test]:
        reader = open_dataset(spec)
        for sample in reader.samples():
            checks += [partial(reader.read_image, sample), partial(reader.read_label, sample)]
    if cfg.train.verify_data:
        verify(checks)


def verify(checks: list[Callable[[], object]]) -> None:
    """Run every decode in a thread pool (PIL releases the GIL); the first bad file's
    DataError (naming it) is raised before any worker starts."""
    start = time.perf_counter()
    with ThreadPoolExecutor(
        max(1, min(16, os.cpu_count() or 1)), thread_name_prefix="verify"
    ) as pool:
        for _ in pool.map(lambda check: check(), checks):
            pass
    log.info("decoded %d files before training in %.1f s", len(checks), time.perf_counter() - start)


def _draw(draw: int | None) -> tuple[int, ...]:
    """Extra seed parts of a rare-class draw (none for plain indices: their seeds unchanged)."""
    return () if draw is None else (draw,)
