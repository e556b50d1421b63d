"""The cityscapes16 label space (SYNTHIA-style 16 classes) and its mIoU-13 subset metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from shiftlab.data.label_spaces import get_label_space
from shiftlab.evaluate.metrics import ConfusionMatrix, metric_keys, subset_mious
from shiftlab.train.experiment import numeric_summary
from shiftlab.utils.errors import ConfigError

C16 = get_label_space("cityscapes16")


def test_cityscapes16_maps_label_ids_without_terrain_truck_train() -> None:
    assert C16.num_classes == 16
    full = get_label_space("cityscapes")
    assert [n for n in full.class_names if n not in C16.class_names] == [
        "terrain",
        "truck",
        "train",
    ]
    # labelIds: road 7, wall 12, terrain 22, sky 23, truck 27, bus 28, train 31, bicycle 33,
    # ego vehicle 1 (ignore in both spaces).
    ids = np.array([[7, 12, 22, 23], [27, 28, 31, 33], [1, 1, 1, 1]], dtype=np.uint8)
    assert C16.decode(ids).tolist() == [
        [0, 3, 255, 9],
        [255, 13, 255, 15],
        [255, 255, 255, 255],
    ]
    assert C16.unknown_values(ids) == {}  # terrain/truck/train are known ignore values
    assert set(C16.subsets["miou13"]) == set(C16.class_names) - {"wall", "fence", "pole"}


def test_miou13_on_a_hand_made_confusion() -> None:
    """Seven pixels of road (0), wall (3), fence (4) and sky (9); pole and the rest absent."""
    cm = ConfusionMatrix(16)
    gt = torch.tensor([0, 0, 3, 3, 4, 9, 9])
    pred = torch.tensor([0, 0, 3, 9, 9, 9, 3])
    cm.update(pred, gt)
    result = cm.compute()
    per_class = result.named(C16.class_names)
    # road: 2/2 = 1; wall: tp 1, fn 1, fp 1 -> 1/3; fence: 0/1 -> 0; sky: tp 1, fn 1, fp 2 -> 1/4
    assert per_class["road"] == 1.0 and per_class["wall"] == pytest.approx(1 / 3)
    assert per_class["fence"] == 0.0 and per_class["sky"] == pytest.approx(1 / 4)
    assert result.miou == pytest.approx((1 + 1 / 3 + 0 + 1 / 4) / 4)  # mIoU-16 (present)
    subsets = subset_mious(per_class, C16.subsets)
    assert subsets == {"miou13": pytest.approx((1 + 1 / 4) / 2)}  # road and sky only
    keys = metric_keys("val/cs", result.miou, result.pixel_accuracy, per_class, subsets)
    assert keys["val/cs/miou13"] == pytest.approx(0.625)
    assert keys["val/cs/miou"] == pytest.approx(result.miou)
    summary = numeric_summary(
        {
            "cs": {
                "role": "test",
                "miou": result.miou,
                "pixel_accuracy": result.pixel_accuracy,
                "per_class": per_class,
                "subset_miou": subsets,
            }
        }
    )
    assert summary["test/cs/miou13"] == pytest.approx(0.625) and "test_miou" in summary


def test_subsets_survive_export_and_bad_subsets_are_refused(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(C16.to_dict()))
    again = get_label_space(str(path))
    assert again.subsets == C16.subsets and again.class_names == C16.class_names
    for bad, fragment in (
        ({"miou13": ["road", "grass"]}, "unknown classes"),
        ({"miou": ["road"]}, "metric name"),
        ({"m13": []}, "non-empty"),
    ):
        data = {**C16.to_dict(), "subsets": bad}
        path.write_text(yaml.safe_dump(data))
        get_label_space.cache_clear()
        with pytest.raises(ConfigError, match=fragment):
            get_label_space(str(path))
