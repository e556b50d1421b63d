"""The DAFormer recipe and MIC: closed-form checks of each term, on a tiny random SegFormer."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter

from shiftlab.config.method import CITYSCAPES_THINGS, FeatureDistanceConfig, MethodConfig
from shiftlab.config.segformer import SegFormerConfig
from shiftlab.data.label_spaces import get_label_space
from shiftlab.methods import build_method
from shiftlab.methods.daformer import thing_class_ids
from shiftlab.methods.losses import downscale_label, masked_feature_distance
from shiftlab.methods.masking import block_mask, mask_images
from shiftlab.models import create_model
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import derive_seed

CITYSCAPES = get_label_space("cityscapes")
K = CITYSCAPES.num_classes


def method_cfg(**kw):
    return TypeAdapter(MethodConfig).validate_python(kw)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    # The trainer's seeding of the student (Recipe._setup_model), so FD's reference matches.
    torch.manual_seed(derive_seed(seed, "init") % 2**32)
    return create_model(SegFormerConfig(variant="tiny", pretrained="none"), K)


def daformer(seed: int = 0, **kw):
    return build_method(method_cfg(name="daformer", **kw), K, CITYSCAPES.class_names, seed=seed)


def batch(seed: int = 0, n: int = 2, h: int = 32, w: int = 64, **extra: bool):
    g = torch.Generator().manual_seed(seed)
    out = {
        "image": torch.randn(n, 3, h, w, generator=g),
        "target_image": torch.randn(n, 3, h, w, generator=g),
        "label": torch.randint(0, K, (n, h, w), generator=g),
    }
    for key in extra:
        out[key] = torch.randn(n, 3, h, w, generator=g)
    return out


def test_daformer_defaults_are_the_published_recipe() -> None:
    cfg = method_cfg(name="daformer")
    assert (cfg.ema_alpha, cfg.pseudo_threshold) == (0.999, 0.968)
    assert cfg.rcs is not None and cfg.rcs.temperature == 0.01
    assert (cfg.rcs.min_pixels, cfg.rcs.min_crop_ratio) == (3000, 0.5)
    assert cfg.fd is not None and (cfg.fd.weight, cfg.fd.min_ratio) == (0.005, 0.75)
    assert (cfg.pseudo_ignore_top, cfg.pseudo_ignore_bottom) == (0, 0) and cfg.mic is None
    sa = cfg.strong_augment
    assert (sa.color_jitter_strength, sa.color_jitter_p, sa.blur_p) == (0.2, 0.2, 0.5)
    mic = method_cfg(name="daformer", mic={}).mic
    assert (mic.weight, mic.mask_ratio, mic.block_size) == (1.0, 0.7, 64)
    m = daformer()
    assert m.rare_class_sampling == cfg.rcs
    assert build_method(method_cfg(name="classmix"), K).rare_class_sampling is None


def test_thing_classes_default_to_daformers_and_resolve_by_name() -> None:
    fd = FeatureDistanceConfig()
    # Cityscapes train ids 6, 7, 11-18 (DAFormer's imnet_feature_dist_classes).
    assert thing_class_ids(fd, CITYSCAPES.class_names) == [6, 7, *range(11, 19)]
    c16 = get_label_space("cityscapes16").class_names
    ids = thing_class_ids(fd, c16)  # no truck, no train
    assert [c16[i] for i in ids] == [n for n in CITYSCAPES_THINGS if n not in ("truck", "train")]
    assert thing_class_ids(FeatureDistanceConfig(thing_classes=["Car", "traffic_sign"]), c16) == [
        12,
        7,
    ]
    with pytest.raises(ConfigError, match="Rocks"):
        thing_class_ids(FeatureDistanceConfig(thing_classes=["Rocks"]), c16)
    with pytest.raises(ConfigError, match="name its thing classes"):
        thing_class_ids(fd, ("trees", "sky"))


def test_downscaled_label_keeps_classes_covering_the_ratio() -> None:
    # 4x4 -> 2x2 cells: all car; 3/4 road; half sky half ignore; 3/4 ignore.
    car, road, sky, ig = 13, 0, 10, 255
    label = torch.tensor(
        [
            [car, car, road, road],
            [car, car, road, sky],
            [sky, sky, ig, ig],
            [ig, ig, ig, car],
        ]
    ).unsqueeze(0)
    small = downscale_label(label, (2, 2), K, 0.75, 255)
    assert small.tolist() == [[[car, road], [255, 255]]]
    assert downscale_label(label, (2, 2), K, 0.5, 255).tolist() == [[[car, road], [sky, 255]]]


def test_feature_distance_is_zero_for_identical_features_and_masked_to_things() -> None:
    f = torch.randn(1, 2, 2, 3)
    things = torch.tensor([[[True, False, False], [False, False, True]]])
    assert masked_feature_distance(f, f.clone(), things).item() == 0.0
    g = f.clone()
    g[0, :, 0, 1] += 100.0  # a non-thing pixel: not counted
    assert masked_feature_distance(f, g, things).item() == 0.0
    g[0, :, 1, 2] += torch.tensor([3.0, 4.0])  # a thing pixel, distance 5
    assert masked_feature_distance(f, g, things).item() == pytest.approx(5.0 / 2)
    nothing = torch.zeros_like(things)
    assert masked_feature_distance(f.requires_grad_(), g, nothing).item() == 0.0


def test_fd_reference_is_the_initial_model_and_stays_out_of_the_state() -> None:
    student = tiny_model(seed=3).eval()  # eval: no drop-path, features deterministic
    m = daformer(seed=3, fd={"layer": 0, "min_ratio": 0.0})
    m.setup(student)
    ref = m.reference
    assert ref is not None and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    for a, b in zip(ref.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    b = batch(1)
    b["label"][:] = 13  # every pixel a car: every feature cell is a thing
    with torch.no_grad():
        _, logs = m.loss(student, b, 0)
    assert logs["fd"] == 0.0  # identical weights, identical features
    with torch.no_grad():
        for p in student.encoder.parameters():
            p.add_(0.05)
        _, logs = m.loss(student, b, 1)
    assert logs["fd"] > 0.0
    assert set(m.state_dict()) == {"teacher", "step"}  # the frozen reference is not saved
    # A resumed method rebuilds the same reference (not the trained student's weights).
    again = daformer(seed=3, fd={"layer": 0})
    again.load_state_dict(m.state_dict())
    again.setup(student)
    for a, b2 in zip(again.reference.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b2)


def test_mic_mask_ratio_and_patch_size_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    mask = block_mask(3, 128, 192, 64, 0.7, g)  # 2 x 3 patches, round(4.2) = 4 masked
    assert mask.shape == (3, 1, 128, 192)
    for m in mask[:, 0]:
        blocks = m.view(2, 64, 3, 64).permute(0, 2, 1, 3).reshape(6, -1)
        assert all(len(b.unique()) == 1 for b in blocks)  # constant on each 64x64 patch
        assert int((blocks[:, 0] == 0).sum()) == 4
        assert int((m == 0).sum()) == 4 * 64 * 64
    assert not torch.equal(mask[0], mask[1]) or not torch.equal(mask[1], mask[2])
    again = block_mask(3, 128, 192, 64, 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)  # seeded
    # Not a multiple of the patch: 2 x 2 patches (64 + 36), round(2.8) = 3 masked.
    odd = block_mask(1, 100, 100, 64, 0.7, torch.Generator().manual_seed(1))
    corner_sizes = {(0, 0): 64 * 64, (0, 1): 64 * 36, (1, 0): 36 * 64, (1, 1): 36 * 36}
    kept = [k for k in corner_sizes if odd[0, 0, k[0] * 64, k[1] * 64] == 1]  # the one patch left
    assert len(kept) == 1 and int(odd.sum()) == corner_sizes[kept[0]]
    images = torch.randn(3, 3, 128, 192)
    masked = mask_images(images, 64, 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(masked, images * mask)  # masked pixels at 0: the mean colour


def test_pseudo_labels_ignore_border_rows() -> None:
    model = tiny_model()
    m = daformer(pseudo_ignore_top=3, pseudo_ignore_bottom=5, pseudo_threshold=0.0)
    m.setup(model)
    pseudo = m.pseudo_labels(batch(2)["target_image"])
    w = pseudo.weight
    assert w.shape == (2, 32, 64) and pseudo.confidence == 1.0  # threshold 0: all confident
    assert torch.all(w[:, :3] == 0) and torch.all(w[:, -5:] == 0)
    assert torch.all(w[:, 3:27] == 1.0)
    plain = build_method(method_cfg(name="classmix", pseudo_threshold=0.0), K)
    plain.setup(model)
    assert torch.all(plain.pseudo_labels(batch(2)["target_image"]).weight == 1.0)
    # Borders larger than the crop: nothing left, no error.
    wide = daformer(pseudo_ignore_top=20, pseudo_ignore_bottom=20, pseudo_threshold=0.0)
    wide.setup(model)
    assert torch.all(wide.pseudo_labels(batch(2)["target_image"]).weight == 0.0)


def test_teacher_sees_the_clean_target() -> None:
    """With strong augmentation always on (and MIC's augmented, masked copy), the teacher's
    only input is the un-augmented target, and the pseudo-label is its argmax there."""
    model = tiny_model()
    m = daformer(
        strong_augment={"color_jitter_p": 1.0, "blur_p": 1.0},
        mic={"block_size": 8},
        pseudo_threshold=0.0,
    )
    m.setup(model)
    seen: list[torch.Tensor] = []
    m.teacher.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    b = batch(4)
    model.train()
    total, logs = m.loss(model, b, 5)
    total.backward()
    assert len(seen) == 1 and torch.equal(seen[0], b["target_image"])
    with torch.no_grad():
        expected = m.teacher(b["target_image"])["logits"].argmax(dim=1)
    assert torch.equal(m.pseudo_labels(b["target_image"]).label, expected)
    assert {"loss_s", "loss_t", "fd", "mic", "pseudo_confidence"} <= set(logs)
    assert math.isclose(logs["loss"], total.item(), rel_tol=1e-6)


def test_mic_trains_against_the_pseudo_labels_with_their_weights() -> None:
    model = tiny_model().eval()
    b = batch(6)
    losses = {}
    for weight in (0.0, 1.0, 2.5):
        m = daformer(fd=None, mic={"weight": weight, "block_size": 8}, pseudo_threshold=0.0)
        m.setup(model)
        with torch.no_grad():
            losses[weight] = m.loss(model, b, 2)
    base, one, more = (losses[w][0].item() for w in (0.0, 1.0, 2.5))
    mic = losses[1.0][1]["mic"]
    assert mic > 0 and "mic" not in losses[0.0][1]
    assert one == pytest.approx(base + mic, rel=1e-5)
    assert more == pytest.approx(base + 2.5 * mic, rel=1e-5)


def test_carla_variant_composes_with_the_daformer_terms() -> None:
    model = tiny_model()
    m = daformer(
        appearances=["noon", "night"],
        align_weight=0.1,
        mix_align_weight=0.2,
        align={"layers": [-1]},
        fd={"layer": 0, "min_ratio": 0.0},
        mic={"block_size": 8},
    )
    assert m.views("train") == {"image": "noon", "image_b": "night", "target_image": "target"}
    m.setup(model)
    with torch.no_grad():  # the student moved away from its initial (reference) weights
        for p in model.encoder.parameters():
            p.add_(0.05)
    model.train()
    b = batch(7, image_b=True)
    b["label"][:, :16] = 13  # cars on top: thing cells for the FD
    total, logs = m.loss(model, b, 0)
    total.backward()
    assert {"align_source", "align_mixed", "fd", "mic"} <= set(logs)
    assert logs["align_source"] > 0 and logs["align_mixed"] > 0 and logs["fd"] > 0
    for name, params in model.param_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
