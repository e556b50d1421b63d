"""Paired augmentation: shared geometry, independent colour, labels nearest-resized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftlab.config.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from shiftlab.train.augment import PairedAugment, paired_augment
from shiftlab.utils.errors import DataError
from shiftlab.utils.seeding import rng_for

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def scene(h: int = 40, w: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label of random blocks and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 4, (h // 4, w // 4)), np.ones((4, 4), np.int64)).astype(
        np.uint8
    )
    return PALETTE[label], label


def denorm(t: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((t * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


NO_JITTER = {"color_jitter": None}


def test_output_types_and_normalisation() -> None:
    img, label = scene()
    out = paired_augment({"image": img}, label, AugmentConfig(**NO_JITTER, hflip=0.0), rng_for(0))
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 40, 60)
    assert out["label"].dtype == torch.int64 and out["label"].shape == (40, 60)
    assert np.array_equal(denorm(out["image"]), img)  # only normalisation was applied
    assert np.array_equal(out["label"].numpy(), label)


@pytest.mark.parametrize("seed", range(6))
def test_views_and_label_stay_pixel_aligned(seed: int) -> None:
    img, label = scene(seed=seed)
    cfg = AugmentConfig(**NO_JITTER, crop=(24, 32), hflip=0.5)
    out = PairedAugment(cfg)({"image": img, "image_b": img.copy()}, label, rng_for(seed))
    assert torch.equal(out["image"], out["image_b"])  # identical views -> identical outputs
    lab = out["label"].numpy()
    assert lab.shape == (24, 32)
    # the colour of every pixel still encodes its label: the crop/flip is shared exactly
    assert np.array_equal(denorm(out["image"]), PALETTE[lab])


def test_flip_and_crop_happen_and_are_seeded() -> None:
    img, label = scene()
    cfg = AugmentConfig(**NO_JITTER, crop=(24, 32), hflip=0.5)
    aug = PairedAugment(cfg)
    a = aug({"image": img}, label, rng_for(1, "s"))
    b = aug({"image": img}, label, rng_for(1, "s"))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    labels = [aug({"image": img}, label, rng_for(s))["label"] for s in range(10)]
    assert any(not torch.equal(labels[0], x) for x in labels[1:])
    flipped = AugmentConfig(**NO_JITTER, hflip=1.0)
    f = paired_augment({"image": img}, label, flipped, rng_for(0))
    assert np.array_equal(f["label"].numpy(), label[:, ::-1])


def test_crop_larger_than_image_pads_with_ignore() -> None:
    img, label = scene(16, 20)
    out = paired_augment(
        {"image": img}, label, AugmentConfig(**NO_JITTER, crop=(24, 32), hflip=0), rng_for(0)
    )
    lab = out["label"].numpy()
    assert lab.shape == (24, 32)
    assert (lab[16:] == 255).all() and (lab[:, 20:] == 255).all()
    assert np.array_equal(lab[:16, :20], label)
    assert (denorm(out["image"])[16:] == 0).all()  # black padding


def test_resize_uses_nearest_for_labels() -> None:
    img, label = scene(40, 60)
    out = paired_augment(
        {"image": img}, label, AugmentConfig(**NO_JITTER, resize=(20, 30), hflip=0), rng_for(0)
    )
    lab = out["label"].numpy()
    assert lab.shape == (20, 30) and out["image"].shape == (3, 20, 30)
    assert set(np.unique(lab)) <= set(np.unique(label))  # no interpolated class ids
    # blocks of 4 px become blocks of 2 px of the same classes
    assert np.array_equal(lab, label[::2, ::2])


def test_random_resized_crop() -> None:
    img, label = scene(40, 60)
    cfg = AugmentConfig(**NO_JITTER, crop=(16, 16), rrc_scale=(0.3, 1.0), hflip=0)
    seen = set()
    for s in range(5):
        out = paired_augment({"image": img, "b": img.copy()}, label, cfg, rng_for(s))
        assert out["image"].shape == (3, 16, 16) and out["label"].shape == (16, 16)
        assert torch.equal(out["image"], out["b"])
        assert set(out["label"].unique().tolist()) <= set(np.unique(label).tolist())
        seen.add(out["label"].numpy().tobytes())
    assert len(seen) > 1


def test_jitter_is_independent_per_view_but_geometry_shared() -> None:
    img, label = scene()
    # brightness-only jitter keeps zero pixels zero: the geometry stays checkable
    cfg = AugmentConfig(
        crop=(24, 32),
        hflip=0.5,
        normalize=False,
        color_jitter={"brightness": 0.5, "contrast": 0, "saturation": 0, "hue": 0},
    )
    img = img.copy()
    img[label == 0] = 0
    out = paired_augment({"a": img, "b": img.copy()}, label, cfg, rng_for(3))
    a, b = out["a"], out["b"]
    assert not torch.allclose(a, b)  # different brightness factors
    lab = out["label"]
    assert (a[:, lab == 0] == 0).all() and (b[:, lab == 0] == 0).all()
    assert (a[:, lab != 0] > 0).all() and (b[:, lab != 0] > 0).all()
    # a pure brightness change: b / a is one constant where unclipped
    ok = (a < 0.99) & (b < 0.99) & (a > 0.05)
    ratio = b[ok] / a[ok]
    assert ratio.std() < 1e-2


def test_shared_jitter_option() -> None:
    img, label = scene()
    cfg = AugmentConfig(hflip=0, shared_jitter=True)
    out = paired_augment({"a": img, "b": img.copy()}, label, cfg, rng_for(4))
    assert torch.allclose(out["a"], out["b"])
    indep = paired_augment({"a": img, "b": img.copy()}, label, AugmentConfig(hflip=0), rng_for(4))
    assert not torch.allclose(indep["a"], indep["b"])


def test_unlabelled_views() -> None:
    img, _ = scene()
    out = paired_augment({"target_image": img}, None, AugmentConfig(crop=(8, 8)), rng_for(0))
    assert set(out) == {"target_image"} and out["target_image"].shape == (3, 8, 8)


def test_mismatched_views_are_data_errors() -> None:
    img, label = scene()
    with pytest.raises(DataError, match="s1"):
        paired_augment({"a": img, "b": img[:20]}, label, AugmentConfig(), rng_for(0), sample="s1")
    with pytest.raises(DataError, match="label"):
        paired_augment({"a": img}, label[:10], AugmentConfig(), rng_for(0))


def test_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AugmentConfig(rrc_scale=(0.5, 1.0))  # needs crop
    with pytest.raises(ValidationError):
        AugmentConfig(crop=(0, 10))
    with pytest.raises(ValidationError):
        AugmentConfig(color_jitter={"hue": 0.9})


def test_offroad_extras_are_seeded_per_view_and_off_by_default():
    from shiftlab.train.augment import photometric_extras

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    plain = AugmentConfig(color_jitter=None, normalize=False, hflip=0.0)
    assert photometric_extras(img, plain, np.random.default_rng(1)) is img
    extras = AugmentConfig(
        color_jitter=None,
        normalize=False,
        hflip=0.0,
        brightness_contrast={"p": 1.0, "brightness": [-0.3, -0.2], "contrast": 0.0},
        clahe={"p": 1.0},
        blur={"p": 1.0, "kernel": [5, 5]},
    )
    a = photometric_extras(img, extras, np.random.default_rng(1))
    b = photometric_extras(img, extras, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    dark = photometric_extras(
        img, extras.model_copy(update={"clahe": None, "blur": None}), np.random.default_rng(1)
    )
    assert dark.mean() < img.mean() - 40  # shifted by at least 0.2 of the range, darker
    blurred = photometric_extras(
        img,
        extras.model_copy(update={"clahe": None, "brightness_contrast": None}),
        np.random.default_rng(1),
    )
    assert (
        np.abs(np.diff(blurred.astype(int), axis=1)).mean()
        < np.abs(np.diff(img.astype(int), axis=1)).mean() / 2
    )
    out = PairedAugment(extras)(
        {"a": img, "b": img}, np.zeros((32, 48), np.uint8), np.random.default_rng(3)
    )
    assert out["a"].shape == (3, 32, 48)


def test_extra_config_ranges_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="odd"):
        AugmentConfig(blur={"kernel": [4, 6]})
    with pytest.raises(ValidationError, match="brightness"):
        AugmentConfig(brightness_contrast={"brightness": [0.2, -0.2]})
