"""Training data: views joined by id, seeded appearance pairs and target partners, resumable
augmentation; plus the trainer's pure helpers (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftlab.train.data import TARGET_KEY, TrainDataset
from shiftlab.train.faults import parse_fault
from shiftlab.train.trainer import training_fingerprint
from shiftlab.utils.errors import ConfigError, DataError

from train_fixtures import TINTS, experiment, make_aligned, make_shiftlab_dir


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_aligned(
        tmp_path_factory.mktemp("aligned"), {"train": 6, "val": 2}, ["noon", "night", "fog"]
    )


def mean_colour(t: torch.Tensor) -> float:
    return float(t.mean())


def no_jitter(tmp, root, method, **kw):
    # Without jitter the image brightness identifies the appearance it came from.
    return experiment(
        tmp, root, "d", method, train={"augment": {"color_jitter": None, "normalize": False}}, **kw
    )


def test_pairs_are_distinct_seeded_and_change_with_epoch(tmp_path, data_root) -> None:
    cfg = no_jitter(
        tmp_path, data_root, {"name": "feature_align", "appearances": ["noon", "night", "fog"]}
    )
    from shiftlab.methods import build_method

    method = build_method(cfg.method, 19)
    ds = TrainDataset(cfg, method.views("train"), method.pair_views)
    plans = {e: [] for e in range(4)}
    for epoch in plans:
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            plan = ds.view_plan(i)
            assert plan["image"] != plan["image_b"]
            assert {plan["image"], plan["image_b"]} <= {"noon", "night", "fog"}
            plans[epoch].append((plan["image"], plan["image_b"]))
    assert len({tuple(p) for p in plans.values()}) > 1  # a new draw each epoch
    again = TrainDataset(cfg, method.views("train"), method.pair_views)
    again.set_epoch(2)
    assert [tuple(again.view_plan(i).values()) for i in range(len(ds))] == plans[2]

    # The loaded images really are those appearances (night is much darker than noon).
    ds.set_epoch(0)
    item_views = ds.view_plan(0)
    item = ds[0]
    brightness = {v: TINTS[v][0] for v in item_views.values()}
    a, b = item_views["image"], item_views["image_b"]
    assert (mean_colour(item["image"]) > mean_colour(item["image_b"])) == (
        brightness[a] > brightness[b]
    )
    assert item["label"].dtype == torch.int64 and item["label"].shape == item["image"].shape[1:]


def test_augmentation_is_reproducible_per_epoch_and_sample(tmp_path, data_root) -> None:
    cfg = experiment(
        tmp_path,
        data_root,
        "d",
        {"name": "source_only"},
        train={"augment": {"crop": [16, 32], "hflip": 0.5}},
    )
    ds = TrainDataset(cfg, {"image": "source"})
    ds.set_epoch(3)
    first = ds[1]
    ds.set_epoch(0)
    ds[1]
    ds.set_epoch(3)
    again = ds[1]  # a resumed epoch sees the same crop, flip and jitter
    assert torch.equal(first["image"], again["image"]) and torch.equal(
        first["label"], again["label"]
    )
    assert first["image"].shape == (3, 16, 32)
    ds.set_epoch(4)
    assert not torch.equal(ds[1]["image"], first["image"])


def test_generated_views_joined_by_id(tmp_path, data_root) -> None:
    gen = make_shiftlab_dir(tmp_path / "gen", data_root)
    cfg = no_jitter(
        tmp_path,
        data_root,
        {"name": "sdgpa", "stage1_epochs": 1, "stage2_epochs": 1},
        generate={"preset": "night", "editor": {"kind": "photometric"}},
    )
    ds = TrainDataset(cfg, {"image": "target", "image_b": "intermediate"}, None, gen)
    item = ds[2]
    # target is the darkest tint, intermediate in between
    assert mean_colour(item["image"]) < mean_colour(item["image_b"])
    # ...and the label is the same scene's
    src = TrainDataset(cfg, {"image": "source"})
    assert torch.equal(item["label"], src[2]["label"])

    # A method that reads no generated view ignores the generated set.
    assert TrainDataset(cfg, {"image": "noon"}, None, gen).generated is None

    (gen / "target" / "train_005.png").unlink()
    (gen / "intermediate" / "train_005.png").unlink()
    (gen / "source" / "train_005.png").unlink()
    (gen / "labels" / "train_005.png").unlink()
    with pytest.raises(DataError, match="train_005"):
        TrainDataset(cfg, {"image": "target"}, None, gen)


def test_unknown_view_is_config_error(tmp_path, data_root) -> None:
    cfg = no_jitter(tmp_path, data_root, {"name": "source_only"})
    with pytest.raises(ConfigError, match="intermediate"):
        TrainDataset(cfg, {"image": "intermediate"})


def test_classmix_target_partner_is_seeded(tmp_path, data_root) -> None:
    target = {"format": "aligned", "root": str(data_root), "split": "train", "condition": "fog"}
    cfg = no_jitter(tmp_path, data_root, {"name": "classmix"}, data={"target_unlabelled": target})
    ds = TrainDataset(cfg, {"image": "source", TARGET_KEY: "target"})
    ds.set_epoch(1)
    first = [ds.target_index(i) for i in range(len(ds))]
    item = ds[0]
    assert item[TARGET_KEY].shape == item["image"].shape
    ds.set_epoch(1)
    assert [ds.target_index(i) for i in range(len(ds))] == first
    partners = set()
    for epoch in range(5):
        ds.set_epoch(epoch)
        partners.add(tuple(ds.target_index(i) for i in range(len(ds))))
    assert len(partners) > 1  # a new partner draw each epoch


def test_stage_plan_fingerprint_and_fault_spec(tmp_path, data_root) -> None:
    cfg = experiment(
        tmp_path,
        data_root,
        "d",
        {"name": "sdgpa", "stage1_epochs": 0, "stage2_epochs": 3},
        generate={"preset": "night", "editor": {"kind": "photometric"}},
    )
    assert cfg.stage_plan() == [("stage2", 3)]
    other = experiment(tmp_path, data_root, "d", {"name": "source_only"})
    assert other.stage_plan() == [("train", 2)]

    base = training_fingerprint(other, None)
    same = experiment(
        tmp_path,
        data_root,
        "d",
        {"name": "source_only"},
        train={"max_failures": 5},
        tracking={"enabled": False},
    )
    assert training_fingerprint(same, None) == base  # how it runs, not what it learns
    changed = experiment(tmp_path, data_root, "d", {"name": "source_only"}, optim={"lr": 0.5})
    assert training_fingerprint(changed, None) != base

    assert parse_fault("epoch=1,rank=1,marker=/tmp/x") == {
        "epoch": 1,
        "rank": 1,
        "marker": "/tmp/x",
    }
    assert parse_fault(None) is None
    with pytest.raises(ConfigError, match="SHIFTLAB_TRAIN_FAULT"):
        parse_fault("epoch=x")


def test_views_available_lists_source(tmp_path, data_root) -> None:
    cfg = no_jitter(tmp_path, data_root, {"name": "source_only"})
    ds = TrainDataset(cfg, {"image": "source"})
    assert ds.available_views(ds.samples[0]) == ["fog", "night", "noon", "source"]
    # "source" is the configured condition (noon) when the reader has no "source" view
    noon = TrainDataset(cfg, {"image": "noon"})
    assert np.allclose(ds[0]["image"].numpy(), noon[0]["image"].numpy())


def test_preflight_fails_before_any_worker(tmp_path, data_root) -> None:
    from shiftlab.train.trainer import preflight

    preflight(experiment(tmp_path, data_root, "d", {"name": "source_only"}), None)
    with pytest.raises(ConfigError, match="train.select"):  # refused when the config loads
        experiment(tmp_path, data_root, "d", {"name": "source_only"}, train={"select": "test_miou"})
    with pytest.raises(ConfigError, match="Rocks"):
        preflight(
            experiment(
                tmp_path, data_root, "d", {"name": "offroad", "class_weights": {"Rocks": 5.0}}
            ),
            None,
        )
    with pytest.raises(ConfigError, match="snow"):
        preflight(
            experiment(
                tmp_path, data_root, "d", {"name": "feature_align", "appearances": ["noon", "snow"]}
            ),
            None,
        )
