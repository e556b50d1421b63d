"""`shiftlab data inspect` and `shiftlab score` on tiny datasets in every real layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shiftlab.cli.main import main
from shiftlab.data.label_spaces import get_label_space

from layouts import (
    make_acdc,
    make_cityscapes,
    make_falcon,
    make_gta5,
    rgb,
    save,
)


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def expected_class_pixels(labels: list[np.ndarray], space: str) -> dict[str, int]:
    decoded = np.concatenate([get_label_space(space).decode(lab).ravel() for lab in labels])
    vals, counts = np.unique(decoded, return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, counts, strict=True)}


def test_inspect_cityscapes(tmp_path, capsys):
    labels = make_cityscapes(tmp_path, "val")
    code, out, _ = run(
        capsys, "data", "inspect", "cityscapes", str(tmp_path), "--split", "val", "--json"
    )
    assert code == 0
    assert out["num_samples"] == 3
    assert out["ids"] == ["aachen_000000_000019", "aachen_000001_000019", "bremen_000002_000019"]
    assert out["class_pixels"] == expected_class_pixels(list(labels.values()), "cityscapes")
    assert "255" in out["class_pixels"]  # labelId 0 -> ignore
    assert out["unknown_values"] == {}


def test_inspect_acdc_condition(tmp_path, capsys):
    labels = make_acdc(tmp_path, "val")
    code, out, _ = run(
        capsys,
        "data",
        "inspect",
        "acdc",
        str(tmp_path),
        "--split",
        "val",
        "--condition",
        "night",
        "--json",
    )
    assert code == 0
    assert out["ids"] == ["GOPR0351_frame_000041", "GOPR0351_frame_000042"]
    assert out["class_pixels"] == expected_class_pixels(
        list(labels["night"].values()), "cityscapes"
    )
    code, out, _ = run(capsys, "data", "inspect", "acdc", str(tmp_path), "--split", "val", "--json")
    assert out["num_samples"] == 3  # all conditions
    code, _, err = run(
        capsys,
        "data",
        "inspect",
        "acdc",
        str(tmp_path),
        "--split",
        "val",
        "--condition",
        "snow",
        "--json",
    )
    assert code == 3 and "snow" in err


def test_inspect_gta5_palette_labels_and_split_file(tmp_path, capsys):
    labels = make_gta5(tmp_path, n=4)
    (tmp_path / "val.txt").write_text("00002.png\n00004.png\n")
    code, out, _ = run(capsys, "data", "inspect", "gta5", str(tmp_path), "--split", "val", "--json")
    assert code == 0
    assert out["ids"] == ["00002", "00004"]
    assert out["class_pixels"] == expected_class_pixels(
        [labels["00002"], labels["00004"]], "cityscapes"
    )
    code, out, _ = run(
        capsys, "data", "inspect", "gta5", str(tmp_path), "--split", "train", "--json"
    )
    assert out["num_samples"] == 4  # no train.txt: every image


def test_inspect_falcon_uint16_and_unknown_values(tmp_path, capsys):
    labels = make_falcon(tmp_path, "train")
    first = next(iter(labels))
    lab = labels[first].copy()
    lab[0, :3] = 0  # not a Falcon value
    save(tmp_path / "train" / "Segmentation" / f"{first}.png", lab)
    labels[first] = lab
    code, out, _ = run(
        capsys, "data", "inspect", "falcon", str(tmp_path), "--split", "train", "--json"
    )
    assert code == 0
    assert out["ids"] == sorted(labels)
    assert out["unknown_values"] == {"0": 3}
    assert out["class_pixels"] == expected_class_pixels(list(labels.values()), "falcon")
    assert out["class_pixels"]["9"] == sum(
        int((v == 10000).sum()) for v in labels.values()
    )  # Sky, not 16
    code, out, _ = run(
        capsys,
        "data",
        "inspect",
        "falcon",
        str(tmp_path),
        "--split",
        "train",
        "--label-space",
        "falcon7",
        "--json",
    )
    assert out["class_names"][-1] == "Sky" and len(out["class_names"]) == 7


def test_falcon_8bit_mask_is_refused_as_truncated(tmp_path, capsys):
    labels = make_falcon(tmp_path, "train")
    first = next(iter(labels))
    save(
        tmp_path / "train" / "Segmentation" / f"{first}.png", (labels[first] % 256).astype(np.uint8)
    )
    code, _, err = run(
        capsys, "data", "inspect", "falcon", str(tmp_path), "--split", "train", "--json"
    )
    assert code == 3
    assert f"{first}.png" in err and "truncated" in err


@pytest.mark.parametrize("fault", ["no_label", "no_image", "size", "empty"])
def test_bad_data_names_the_file(tmp_path, capsys, fault):
    make_cityscapes(tmp_path, "val")
    img = tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    lab = tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    split = "val"
    if fault == "no_label":
        lab.unlink()
        name = img.name
    elif fault == "no_image":
        img.unlink()
        name = lab.name
    elif fault == "size":
        save(lab, np.zeros((5, 5), np.uint8) + 7)
        name = lab.name
    else:
        split, name = "train", "train"
    code, _, err = run(
        capsys, "data", "inspect", "cityscapes", str(tmp_path), "--split", split, "--json"
    )
    assert code == 3
    assert name in err


def test_aligned_and_folder_formats(tmp_path, capsys):
    rng = np.random.default_rng(4)
    lab = rng.choice(np.array([7, 26, 23], np.uint8), (8, 8))
    for app in ("noon", "night"):
        save(tmp_path / "al" / "images" / app / "train" / "s1.png", rgb(rng, 8, 8))
    save(tmp_path / "al" / "labels" / "train" / "s1.png", lab)
    code, out, _ = run(
        capsys, "data", "inspect", "aligned", str(tmp_path / "al"), "--split", "train", "--json"
    )
    assert code == 0 and out["ids"] == ["s1"] and out["views"] == ["night", "noon"]
    (tmp_path / "al" / "images" / "night" / "train" / "s1.png").unlink()
    code, _, err = run(
        capsys, "data", "inspect", "aligned", str(tmp_path / "al"), "--split", "train", "--json"
    )
    assert code == 3 and "s1.png" in err

    save(tmp_path / "fo" / "images" / "a.png", rgb(rng, 8, 8))
    save(tmp_path / "fo" / "labels" / "a.png", np.full((8, 8), 3, np.uint8))
    code, out, _ = run(
        capsys,
        "data",
        "inspect",
        "folder",
        str(tmp_path / "fo"),
        "--label-space",
        "cityscapes_trainids",
        "--json",
    )
    assert code == 0 and out["class_pixels"] == {"3": 64}


def write_predictions(folder: Path, preds: dict[str, np.ndarray]) -> None:
    for sid, pred in preds.items():
        save(folder / f"{sid}.png", pred.astype(np.uint8))


def test_score_matches_reference_and_reports_bad_predictions(tmp_path, capsys):
    labels = make_cityscapes(tmp_path / "cs", "val")
    space = get_label_space("cityscapes")
    rng = np.random.default_rng(5)
    gts = {k: space.decode(v) for k, v in labels.items()}
    preds = {k: np.where(rng.random(g.shape) < 0.7, g, 13).clip(0, 18) for k, g in gts.items()}
    write_predictions(tmp_path / "pred", preds)
    code, out, _ = run(
        capsys,
        "score",
        "cityscapes",
        str(tmp_path / "cs"),
        "--split",
        "val",
        "--predictions",
        str(tmp_path / "pred"),
        "--json",
    )
    assert code == 0
    gt = np.concatenate([g.ravel() for g in gts.values()])
    pr = np.concatenate([preds[k].ravel() for k in gts])
    keep = gt != 255
    ious = {}
    for c, name in enumerate(space.class_names):
        union = np.sum(((pr == c) | (gt == c)) & keep)
        ious[name] = None if union == 0 else np.sum((pr == c) & (gt == c) & keep) / union
    assert out["per_class"].keys() == ious.keys()
    for name, value in ious.items():
        assert (out["per_class"][name] is None) == (value is None)
        if value is not None:
            assert out["per_class"][name] == pytest.approx(value)
    assert out["miou"] == pytest.approx(np.mean([v for v in ious.values() if v is not None]))
    assert out["pixel_accuracy"] == pytest.approx(np.mean(pr[keep] == gt[keep]))

    victim = sorted(preds)[1]
    save(tmp_path / "pred" / f"{victim}.png", np.zeros((3, 3), np.uint8))
    code, _, err = run(
        capsys,
        "score",
        "cityscapes",
        str(tmp_path / "cs"),
        "--split",
        "val",
        "--predictions",
        str(tmp_path / "pred"),
        "--json",
    )
    assert code == 3 and f"{victim}.png" in err and "size" in err
    (tmp_path / "pred" / f"{victim}.png").unlink()
    code, _, err = run(
        capsys,
        "score",
        "cityscapes",
        str(tmp_path / "cs"),
        "--split",
        "val",
        "--predictions",
        str(tmp_path / "pred"),
        "--json",
    )
    assert code == 3 and f"{victim}.png" in err and "missing" in err


def test_console_script_runs(tmp_path):
    make_falcon(tmp_path, "val")
    exe = shutil.which("shiftlab", path=str(Path(sys.executable).parent))
    assert exe, "console script not installed"
    proc = subprocess.run(
        [exe, "data", "inspect", "falcon", str(tmp_path), "--split", "val", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["num_samples"] == 3
