"""DAFormer's rare-class sampling: probabilities, draws, cached class statistics, the crop
check, and the clean target image of the training data (no Ray)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from shiftlab.config.method import RareClassSamplingConfig
from shiftlab.data import class_stats
from shiftlab.data.class_stats import ClassStats, cached_class_stats
from shiftlab.data.formats import open_dataset_args
from shiftlab.train.data import TARGET_KEY, TrainDataset
from shiftlab.train.sampling import RareClassSampler, RcsDraw, rare_class_probabilities

from train_fixtures import experiment, make_aligned

CAR = 13  # the train id of the fixture's car (label id 26)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_aligned(
        tmp_path_factory.mktemp("aligned"), {"train": 6, "val": 2}, ["noon", "night", "fog"]
    )


def test_probabilities_are_the_softmax_of_one_minus_frequency_over_t() -> None:
    # f = 0.6, 0.3, 0.1 (class 1 has no pixel: never drawn); T = 0.1 -> logits 4, 7, 9.
    classes, p = rare_class_probabilities(np.array([600, 0, 300, 100]), 0.1)
    z = math.exp(4) + math.exp(7) + math.exp(9)
    assert classes.tolist() == [0, 2, 3]
    assert p == pytest.approx([math.exp(4) / z, math.exp(7) / z, math.exp(9) / z], rel=1e-12)
    # DAFormer's T = 0.01: P(a) / P(b) = exp((f_b - f_a) / T).
    _, p = rare_class_probabilities(np.array([90, 10]), 0.01)
    assert p[1] / p[0] == pytest.approx(math.exp((0.9 - 0.1) / 0.01), rel=1e-9)


def stats() -> ClassStats:
    counts = np.array(
        [
            [5000, 0, 0],  # class 0 only
            [4000, 3500, 0],  # classes 0 and 1
            [4000, 100, 3001],  # class 1 below min_pixels; class 2 just above
            [9000, 0, 2999],  # class 2 below min_pixels
        ]
    )
    return ClassStats(("a", "b", "c", "d"), counts)


def test_draws_pick_only_images_holding_the_class_seeded_per_rank_and_epoch() -> None:
    cfg = RareClassSamplingConfig(temperature=1.0)  # min_pixels 3000; T high: every class
    s = stats()
    draws = list(RareClassSampler(s, cfg, 300, seed=1, rank=0, world_size=2))
    assert len(draws) == 300 and all(isinstance(d, RcsDraw) for d in draws)
    for d in draws:
        assert s.counts[d.index, d.cls] > cfg.min_pixels
    assert {d.cls: {e.index for e in draws if e.cls == d.cls} for d in draws} == {
        0: {0, 1, 2, 3},
        1: {1},
        2: {2},
    }
    assert [d.draw for d in draws[:3]] == [0, 2, 4]  # unique over ranks (rank 0 of 2)
    again = RareClassSampler(s, cfg, 300, seed=1, rank=0, world_size=2)
    assert list(again) == draws  # a resumed epoch redraws the same items
    other = list(RareClassSampler(s, cfg, 300, seed=1, rank=1, world_size=2))
    assert [d.draw for d in other[:2]] == [1, 3] and other != draws
    again.set_epoch(1)
    assert list(again) != draws
    # DAFormer's T = 0.01: the rarest class (1: 3,600 of 31,600 pixels) is nearly always drawn.
    rare = list(RareClassSampler(s, RareClassSamplingConfig(), 300, seed=1))
    assert sum(d.cls == 1 for d in rare) > 290


def test_class_without_an_eligible_image_is_not_drawn() -> None:
    s = ClassStats(("a", "b"), np.array([[100, 5], [200, 0]]))
    sampler = RareClassSampler(s, RareClassSamplingConfig(min_pixels=10), 50, seed=0)
    assert sampler.classes.tolist() == [0] and sampler.probs.tolist() == [1.0]


def test_class_stats_are_counted_once_and_keyed_by_the_label_files(
    tmp_path, data_root, monkeypatch
) -> None:
    reader = open_dataset_args("aligned", data_root, split="train", condition="noon")
    cache = tmp_path / "cache"
    first = cached_class_stats(reader, cache)
    samples = reader.samples()
    for row, sample in zip(first.counts, samples, strict=True):
        ids = reader.read_label(sample)
        assert row.tolist() == np.bincount(ids.ravel(), minlength=19)[:19].tolist()
    assert first.sample_ids == tuple(s.id for s in samples)
    assert len(list((cache / "class_stats").glob("*.json"))) == 1

    def no_counting(*args, **kwargs):
        raise AssertionError("counted again")

    monkeypatch.setattr(class_stats, "count_classes", no_counting)
    assert np.array_equal(cached_class_stats(reader, cache).counts, first.counts)
    label = samples[0].label
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a label changed
    with pytest.raises(AssertionError, match="counted again"):
        cached_class_stats(reader, cache)


def rcs_dataset(tmp_path, data_root, tries: int, **augment):
    cfg = experiment(
        tmp_path,
        data_root,
        "rcs",
        {"name": "daformer"},
        data={
            "target_unlabelled": {"format": "aligned", "root": str(data_root), "condition": "fog"}
        },
        train={"augment": {"color_jitter": None, "crop": [16, 16], **augment}},
    )
    rcs = RareClassSamplingConfig(min_pixels=60, min_crop_ratio=0.5, crop_tries=tries)
    return TrainDataset(cfg, {"image": "source", TARGET_KEY: "target"}, None, None, rcs=rcs)


def test_rcs_crops_hold_the_drawn_class(tmp_path, data_root) -> None:
    """The car box (8x16 of 32x64) is rare; a 16x16 crop must hold > 30 car pixels."""
    counts = {}
    for tries in (1, 10):
        ds = rcs_dataset(tmp_path, data_root, tries)
        draws = [RcsDraw(i, CAR, k) for k in range(4) for i in range(len(ds))]
        counts[tries] = [int((ds[d]["label"] == CAR).sum()) for d in draws]
    assert sum(c > 30 for c in counts[1]) < len(counts[1])  # a random crop often misses it
    assert all(c > 30 for c in counts[10])
    ds = rcs_dataset(tmp_path, data_root, 10)
    a, b = ds[RcsDraw(0, CAR, 0)], ds[RcsDraw(0, CAR, 1)]
    assert not torch.equal(a["image"], b["image"]) or not torch.equal(
        a[TARGET_KEY], b[TARGET_KEY]
    )  # two draws of one image: their own crops and partners
    assert torch.equal(ds[RcsDraw(0, CAR, 1)]["image"], b["image"])  # seeded
    sampler = ds.sampler(seed=0, rank=0, world_size=2)
    assert isinstance(sampler, RareClassSampler) and len(sampler) == 3  # ceil(6 / 2)
    plain = rcs_dataset(tmp_path, data_root, 10)
    plain.rcs = None
    assert len(plain.sampler(seed=0, rank=1, world_size=4)) == 2  # DistributedSampler's share


def test_target_image_is_clean_with_its_own_geometry(tmp_path, data_root) -> None:
    """Strong colour jitter on the source views never reaches the target image (DACS's
    teacher labels the clean target); the target gets its own target_resize and crop."""
    jitter = {"p": 1.0, "brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.4}
    cfg = experiment(
        tmp_path,
        data_root,
        "clean",
        {"name": "classmix"},
        data={
            "target_unlabelled": {"format": "aligned", "root": str(data_root), "condition": "fog"}
        },
        train={"augment": {"color_jitter": jitter, "hflip": 0.0, "normalize": False}},
    )
    ds = TrainDataset(cfg, {"image": "source", TARGET_KEY: "target"})
    item = ds[2]
    raw = ds.load_target(2, (32, 64))
    clean = torch.from_numpy(np.array(raw)).permute(2, 0, 1).float() / 255.0
    assert torch.equal(item[TARGET_KEY], clean)
    source = torch.from_numpy(np.array(ds.load(2)[0]["image"])).permute(2, 0, 1).float() / 255.0
    assert not torch.allclose(item["image"], source, atol=0.05)  # the source is jittered

    resized = experiment(
        tmp_path,
        data_root,
        "resized",
        {"name": "classmix"},
        data={
            "target_unlabelled": {"format": "aligned", "root": str(data_root), "condition": "fog"}
        },
        train={"augment": {"resize": [64, 128], "target_resize": [16, 32], "crop": [16, 32]}},
    )
    ds = TrainDataset(resized, {"image": "source", TARGET_KEY: "target"})
    item = ds[0]
    assert item[TARGET_KEY].shape == item["image"].shape == (3, 16, 32)
    assert ds.load_target(0, (32, 64)).shape == (16, 32, 3)  # target_resize, one resize
