"""`shiftlab analyze`: domain-gap statistics against an independent numpy computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.cli.main import main
from shiftlab.evaluate.domain_gap import DatasetRef, SideStats
from shiftlab.utils.errors import ConfigError

from layouts import FALCON_VALUES, labels, make_cityscapes, make_falcon, rgb, save

FALCON7 = {100: 0, 200: 1, 300: 2, 500: 3, 800: 4, 7100: 5, 10000: 6}  # 550/600/700 -> ignore
NAMES7 = ["Trees", "Lush Bushes", "Dry Grass", "Dry Bushes", "Rocks", "Landscape", "Sky"]


def make_falcon_test(
    root: Path, n: int = 2, h: int = 7, w: int = 9
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A darker 'test' split without Trees (100) and Logs (700), like the report's target."""
    rng = np.random.default_rng(11)
    values = np.array([v for v in FALCON_VALUES if v not in (100, 700)], dtype=np.uint16)
    out = {}
    for i in range(n):
        name = f"tt{i:07d}"
        img = (rgb(rng, h, w) * 0.7).astype(np.uint8)
        lab = labels(rng, h, w, values)
        save(root / "test" / "Color_Images" / f"{name}.png", img)
        save(root / "test" / "Segmentation" / f"{name}.png", lab)
        out[name] = (img, lab)
    return out


def numpy_stats(
    images: list[np.ndarray], labs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pix = np.concatenate([im.reshape(-1, 3).astype(np.float64) for im in images])
    flat = np.concatenate([lab.ravel() for lab in labs])
    counts = np.array([np.sum(flat == v) for v in FALCON7], dtype=np.float64)
    return pix.mean(axis=0), pix.std(axis=0), counts / counts.sum()


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_analyze_matches_numpy(tmp_path, capsys):
    root = tmp_path / "falcon"
    train_labels = make_falcon(root, "train", n=3)
    test = make_falcon_test(root)
    train_images = [
        np.asarray(Image.open(root / "train" / "Color_Images" / f"{n}.png")) for n in train_labels
    ]
    out = tmp_path / "gap"
    code, res, err = run(
        capsys,
        "analyze",
        f"falcon:{root}:train",
        f"falcon:{root}:test",
        "--label-space",
        "falcon7",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, err
    mean_a, std_a, share_a = numpy_stats(train_images, list(train_labels.values()))
    mean_b, std_b, share_b = numpy_stats(
        [t[0] for t in test.values()], [t[1] for t in test.values()]
    )
    np.testing.assert_allclose(res["a"]["rgb_mean"], mean_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["a"]["rgb_std"], std_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["b"]["rgb_mean"], mean_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["b"]["rgb_std"], std_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["rgb_mean_shift"], mean_b - mean_a, atol=1e-9)
    assert res["class_names"] == NAMES7
    np.testing.assert_allclose([res["a"]["class_share"][n] for n in NAMES7], share_a, atol=1e-12)
    np.testing.assert_allclose([res["b"]["class_share"][n] for n in NAMES7], share_b, atol=1e-12)
    np.testing.assert_allclose(
        [res["class_share_shift"][n] for n in NAMES7], share_b - share_a, atol=1e-12
    )
    assert res["absent_in_b"] == ["Trees"]  # Logs is ignored in falcon7, so not a class
    assert res["absent_in_a"] == []
    ignored = sum(int(np.isin(lab, [550, 600, 700]).sum()) for lab in train_labels.values())
    assert res["a"]["ignore_pixels"] == ignored
    assert res["a"]["num_images"] == 3 and res["b"]["num_images"] == 2

    saved = json.loads((out / "domain_gap.json").read_text())
    assert saved["rgb_mean_shift"] == res["rgb_mean_shift"]
    assert Image.open(out / "domain_gap.png").format == "PNG"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries


def test_analyze_ten_class_space_and_unlabelled_side(tmp_path, capsys):
    root = tmp_path / "falcon"
    make_falcon(root, "train", n=2)
    make_falcon_test(root)
    code, res, _ = run(
        capsys,
        "analyze",
        f"falcon:{root}:train",
        f"falcon:{root}:test",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 0
    assert res["label_space"] == "falcon" and res["absent_in_b"] == ["Trees", "Logs"]
    # an unlabelled split (no Segmentation folder) still gives colour statistics
    rng = np.random.default_rng(5)
    for i in range(2):
        save(tmp_path / "unl" / "test" / "Color_Images" / f"u{i}.png", rgb(rng, 5, 6))
    code, res, _ = run(
        capsys,
        "analyze",
        f"falcon:{root}:train",
        f"falcon:{tmp_path / 'unl'}:test",
        "--out",
        str(tmp_path / "o2"),
        "--json",
    )
    assert code == 0
    assert "class_share" not in res["b"] and "class_share_shift" not in res
    assert res["b"]["num_images"] == 2 and len(res["b"]["rgb_mean"]) == 3
    assert (tmp_path / "o2" / "domain_gap.png").is_file()


def test_analyze_errors(tmp_path, capsys):
    root = tmp_path / "falcon"
    make_falcon(root, "train", n=1)
    make_cityscapes(tmp_path / "cs", "val")
    code, _, err = run(
        capsys,
        "analyze",
        f"falcon:{root}:train",
        f"cityscapes:{tmp_path / 'cs'}:val",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 3 and "--label-space" in err
    code, _, err = run(capsys, "analyze", "falcon", f"falcon:{root}", "--out", str(tmp_path / "o"))
    assert code == 3 and "FORMAT:ROOT" in err
    with pytest.raises(ConfigError):
        DatasetRef.parse("a:b:c:d:e")
    ref = DatasetRef.parse("acdc:/data/acdc:val:night")
    assert (ref.format, ref.root, ref.split, ref.condition) == (
        "acdc",
        "/data/acdc",
        "val",
        "night",
    )
    assert DatasetRef.parse("falcon:/d").split == "train"


def test_exact_sums_do_not_drift():
    # a float32 running mean of many 255s and 0s drifts; the integer sums are exact
    st = SideStats()
    big = np.full((1000, 1000, 3), 255, dtype=np.uint8)
    for _ in range(3):
        st.add_image(big)
    st.add_image(np.zeros((1000, 1000, 3), dtype=np.uint8))
    assert st.mean() == [255 * 3 / 4] * 3
    assert st.std() == [pytest.approx(255 * np.sqrt(3 / 16), abs=1e-12)] * 3
