"""Procedural street scenes: determinism, alignment, geometry, and appearances that differ the
way real conditions do (each test checks a property a wrong renderer would fail)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from shiftlab.data.procedural import APPEARANCES, render_layout, render_scene, write_procedural
from shiftlab.utils.atomic import encode_png
from shiftlab.utils.errors import ConfigError

SIZE = (96, 192)
SEED = 3
LAYOUTS = (0, 1, 2)
CITYSCAPES_IDS = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 32, 33}


@pytest.fixture(scope="module")
def scenes():
    return {i: render_scene(i, SEED, SIZE, APPEARANCES) for i in LAYOUTS}


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def _linear_lum(img: np.ndarray) -> np.ndarray:
    """Relative luminance: sRGB decoded to linear light first."""
    return ((img.astype(np.float64) / 255.0) ** 2.2) @ np.array([0.2126, 0.7152, 0.0722])


def _local_std(x: np.ndarray, k: int = 5) -> np.ndarray:
    m = ndimage.uniform_filter(x, k)
    m2 = ndimage.uniform_filter(x * x, k)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def test_same_arguments_give_identical_bytes_and_seed_changes_the_scene():
    label_a, imgs_a = render_layout(4, 11, (64, 128), APPEARANCES)
    label_b, imgs_b = render_layout(4, 11, (64, 128), APPEARANCES)
    assert encode_png(label_a) == encode_png(label_b)
    for app in APPEARANCES:
        assert encode_png(imgs_a[app]) == encode_png(imgs_b[app]), app
    label_c, imgs_c = render_layout(4, 12, (64, 128), ["noon"])
    assert (label_c != label_a).mean() > 0.05
    assert not np.array_equal(imgs_c["noon"], imgs_a["noon"])
    # Another layout index is another street.
    label_d, _ = render_layout(5, 11, (64, 128), ["noon"])
    assert (label_d != label_a).mean() > 0.05


def test_outputs_have_the_documented_types_and_shapes(scenes):
    label, imgs = render_layout(0, SEED, (40, 72), ["noon", "night"])
    assert label.dtype == np.uint8 and label.shape == (40, 72)
    assert set(imgs) == {"noon", "night"}
    for img in imgs.values():
        assert img.dtype == np.uint8 and img.shape == (40, 72, 3)
    for sc in scenes.values():
        assert set(np.unique(sc.label)) <= CITYSCAPES_IDS


def test_labels_do_not_depend_on_the_appearances_rendered():
    label_all, imgs_all = render_layout(2, SEED, SIZE, APPEARANCES)
    label_one, imgs_one = render_layout(2, SEED, SIZE, ["snow"])
    label_two, imgs_two = render_layout(2, SEED, SIZE, ["fog", "noon"])
    assert np.array_equal(label_all, label_one) and np.array_equal(label_all, label_two)
    # Each appearance has its own random stream: subsets reproduce the same pixels.
    assert np.array_equal(imgs_all["snow"], imgs_one["snow"])
    assert np.array_equal(imgs_all["fog"], imgs_two["fog"])


@pytest.mark.parametrize("layout", [0, 1, 2, 3])
def test_geometry_is_resolution_independent(layout):
    small, _ = render_layout(layout, SEED, (64, 128), ["noon"])
    large, _ = render_layout(layout, SEED, (128, 256), ["noon"])
    agree = (small == large[::2, ::2]).mean()
    assert agree > 0.9, agree


def test_scenes_contain_the_street_classes(scenes):
    seen: set[int] = set()
    for i in range(6):
        label = scenes[i].label if i in scenes else render_layout(i, SEED, SIZE, ["noon"])[0]
        present = set(np.unique(label).tolist())
        # Every street has sky, road, sidewalk, buildings and cars in view.
        assert {7, 8, 11, 23, 26} <= present, (i, present)
        seen |= present
    required = {7, 8, 11, 17, 20, 21, 23, 24, 26}  # + pole, sign, vegetation, person
    assert required <= seen, required - seen
    assert len(seen) >= 12


def test_night_is_dark_but_has_light_sources(scenes):
    ratios = []
    for sc in scenes.values():
        noon, night = sc.images["noon"], sc.images["night"]
        ratio = _linear_lum(night).mean() / _linear_lum(noon).mean()
        ratios.append(ratio)
        assert ratio < 0.6, ratio
        # Lamps, head/tail lights and lit windows: small, very bright spots below the sky.
        bright = (night.max(axis=-1) >= 235) & (sc.label != 23)
        assert bright.sum() >= 5, bright.sum()
        assert bright.mean() < 0.1
        # Low saturation of the unlit scene: the median pixel is less colourful than at noon.
        sat = lambda im: (im.max(-1).astype(int) - im.min(-1)).astype(float)  # noqa: E731
        assert np.median(sat(night)) < np.median(sat(noon))
    assert np.mean(ratios) < 0.4, ratios


def test_fog_removes_contrast_with_distance(scenes):
    for sc in scenes.values():
        solid = sc.label != 23
        depth = sc.depth
        near = solid & (depth < np.quantile(depth[solid], 0.3))
        far = solid & (depth > np.quantile(depth[solid], 0.8))
        s_noon = _local_std(_lum(sc.images["noon"]))
        s_fog = _local_std(_lum(sc.images["fog"]))
        near_ratio = s_fog[near].mean() / s_noon[near].mean()
        far_ratio = s_fog[far].mean() / s_noon[far].mean()
        assert far_ratio < 0.6 * near_ratio, (near_ratio, far_ratio)
        assert near_ratio > 0.3  # near things stay visible
        # Far pixels converge on the air light: fog is brighter and flatter far away.
        fog_l = _lum(sc.images["fog"])
        assert fog_l[far].std() < fog_l[near].std()


@pytest.mark.parametrize("app", ["rain", "snow"])
def test_precipitation_adds_high_frequency_energy(scenes, app):
    for sc in scenes.values():
        lap_noon = np.abs(ndimage.laplace(_lum(sc.images["noon"])))
        lap_app = np.abs(ndimage.laplace(_lum(sc.images[app])))
        # Where the noon scene is smooth (road, sky, walls), streaks/flakes add fine detail.
        # Both appearances share the same sensor noise level, so noise alone cannot pass.
        smooth = lap_noon < np.quantile(lap_noon, 0.6)
        ratio = lap_app[smooth].mean() / lap_noon[smooth].mean()
        assert ratio > 2.0, (app, ratio)


def test_rain_is_overcast_with_a_grey_sky(scenes):
    for sc in scenes.values():
        sky = sc.label == 23
        noon, rain = sc.images["noon"], sc.images["rain"]
        assert sky.sum() > 20
        sat = lambda im: im.max(-1).astype(float) - im.min(-1)  # noqa: E731
        assert sat(rain)[sky].mean() < 0.6 * sat(noon)[sky].mean()


def test_snow_whitens_horizontal_surfaces(scenes):
    for sc in scenes.values():
        walk = sc.label == 8
        noon, snow = _lum(sc.images["noon"]), _lum(sc.images["snow"])
        assert snow[walk].mean() > noon[walk].mean() + 20
        assert snow[walk].mean() > 170


def test_no_appearance_is_a_global_colour_transform_of_noon(scenes):
    for sc in scenes.values():
        noon = sc.images["noon"].reshape(-1, 3).astype(np.float64)
        x = np.concatenate([noon, np.ones((noon.shape[0], 1))], axis=1)
        for app in APPEARANCES[1:]:
            y = sc.images[app].reshape(-1, 3).astype(np.float64)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            unexplained = (y - x @ coef).var(axis=0).sum() / y.var(axis=0).sum()
            assert unexplained > 0.2, (app, unexplained)


def test_unknown_appearance_and_tiny_size_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'dusk'.*noon, sunset, night, fog, rain, snow"):
        write_procedural(tmp_path / "x", 1, ["noon", "dusk"], (64, 128), 0)
    with pytest.raises(ConfigError, match="32x32"):
        write_procedural(tmp_path / "x", 1, ["noon"], (16, 128), 0)
    with pytest.raises(ConfigError, match="'dusk'"):
        render_layout(0, 0, (64, 128), ["dusk"])
    assert not (tmp_path / "x").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_write_procedural_writes_both_layouts_and_resumes(tmp_path):
    out = tmp_path / "proc"
    apps = ["noon", "fog"]
    summary = write_procedural(out, layouts=2, appearances=apps, size=(32, 64), seed=7)
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1}
    ids = {"train": [0, 1], "val": [2], "test": [3]}
    for split, idxs in ids.items():
        for i in idxs:
            sid = f"proc_{i:06d}_000019"
            label, imgs = render_layout(i, 7, (32, 64), apps)
            lab_path = out / "labels" / split / f"{sid}.png"
            assert np.array_equal(np.asarray(Image.open(lab_path)), label)
            for app in apps:
                img_path = out / "images" / app / split / f"{sid}.png"
                assert np.array_equal(np.asarray(Image.open(img_path).convert("RGB")), imgs[app])
                cs = out / "cityscapes" / app
                cs_img = cs / "leftImg8bit" / split / "proc" / f"{sid}_leftImg8bit.png"
                cs_lab = cs / "gtFine" / split / "proc" / f"{sid}_gtFine_labelIds.png"
                assert cs_img.read_bytes() == img_path.read_bytes()
                assert cs_lab.read_bytes() == lab_path.read_bytes()
    meta = json.loads((out / "aligned.json").read_text())
    assert meta == {
        "label_space": "cityscapes",
        "appearances": apps,
        "splits": {"train": 2, "val": 1, "test": 1},
        "size": [32, 64],
        "seed": 7,
        "generator": "shiftlab.procedural",
    }
    files = _tree(out)
    assert not [f for f in files if f.endswith(".tmp")]
    assert len(files) == 1 + 4 * (1 + 3 * len(apps))  # meta + per sample: label, 3 per appearance

    # Re-run: nothing rewritten, same bytes. Delete a file: only it is rendered again.
    again = write_procedural(out, layouts=2, appearances=apps, size=(32, 64), seed=7)
    assert again["files_written"] == 0 and again["files_skipped"] == len(files) - 1
    assert _tree(out) == files
    victim = out / "images" / "fog" / "val" / "proc_000002_000019.png"
    victim.unlink()
    third = write_procedural(out, layouts=2, appearances=apps, size=(32, 64), seed=7)
    assert third["files_written"] == 1
    assert _tree(out) == files

    # A second, independent run gives the same bytes; other settings are refused in place.
    other = tmp_path / "proc2"
    write_procedural(other, layouts=2, appearances=apps, size=(32, 64), seed=7)
    assert _tree(other) == files
    with pytest.raises(ConfigError, match="seed"):
        write_procedural(out, layouts=2, appearances=apps, size=(32, 64), seed=8)
    # More train layouts would move val/test indices: old val files would leak into train.
    with pytest.raises(ConfigError, match="splits"):
        write_procedural(out, layouts=3, appearances=apps, size=(32, 64), seed=7)


def test_explicit_split_sizes_use_distinct_layouts(tmp_path):
    out = tmp_path / "p"
    summary = write_procedural(out, 1, ["night"], (32, 32), 1, val_layouts=2, test_layouts=0)
    assert summary["splits"] == {"train": 1, "val": 2, "test": 0}
    names = sorted(p.name for p in (out / "labels").rglob("*.png"))
    assert names == ["proc_000000_000019.png", "proc_000001_000019.png", "proc_000002_000019.png"]
    assert sorted(p.name for p in (out / "labels" / "val").iterdir()) == names[1:]
