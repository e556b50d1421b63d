from __future__ import annotations

import numpy as np
import pytest

from shiftlab.data.label_spaces import builtin_label_spaces, get_label_space
from shiftlab.utils.errors import ConfigError


def test_cityscapes_label_ids_map_to_train_ids():
    cs = get_label_space("cityscapes")
    assert cs.num_classes == 19
    raw = np.array([[7, 8, 26, 33], [0, 6, 23, 34]], dtype=np.uint8)
    np.testing.assert_array_equal(cs.decode(raw), [[0, 1, 13, 18], [255, 255, 10, 255]])
    # 0 and 6 are known ignore labels; 34 is not a Cityscapes labelId at all
    assert cs.unknown_values(raw) == {34: 1}


def test_falcon_uint16_values_are_exact():
    falcon = get_label_space("falcon")
    raw = np.array([[100, 10000], [7100, 16]], dtype=np.uint16)
    np.testing.assert_array_equal(falcon.decode(raw), [[0, 9], [8, 255]])
    assert falcon.unknown_values(raw) == {16: 1}
    assert falcon.needs_16bit


def test_falcon7_ignores_clutter_flowers_logs():
    f7 = get_label_space("falcon7")
    assert f7.class_names == (
        "Trees",
        "Lush Bushes",
        "Dry Grass",
        "Dry Bushes",
        "Rocks",
        "Landscape",
        "Sky",
    )
    raw = np.array([550, 600, 700, 800, 10000], dtype=np.uint16)
    np.testing.assert_array_equal(f7.decode(raw), [255, 255, 255, 4, 6])
    assert f7.unknown_values(raw) == {}


def test_user_space_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nclasses:\n  - {name: a, values: [1, 2]}\n  - {name: b, values: [300], color: [1, 2, 3]}\nignore_values: [0]\n"
    )
    space = get_label_space(str(path))
    np.testing.assert_array_equal(
        space.decode(np.array([0, 1, 2, 300, 5], dtype=np.uint16)), [255, 0, 0, 1, 255]
    )
    assert space.palette[1].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("name: x\nclasses: []\n", "non-empty list"),
        (
            "name: x\nclasses:\n  - {name: a, values: [1]}\n  - {name: b, values: [1]}\n",
            "listed twice",
        ),
        ("name: x\nclasses:\n  - {name: a, values: [70000]}\n", "0..65535"),
        ("name: x\nclasses:\n  - {name: a, values: [1]}\ncolour: 1\n", "unknown key"),
    ],
)
def test_bad_user_space_names_file_and_key(tmp_path, body, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment) as err:
        get_label_space(str(path))
    assert "bad.yaml" in str(err.value)


def test_builtins_listed_and_unknown_name_is_clear():
    assert {"cityscapes", "cityscapes_trainids", "falcon", "falcon7"} <= set(builtin_label_spaces())
    with pytest.raises(ConfigError, match="unknown label space 'nope'"):
        get_label_space("nope")
