"""Every method's loss runs forward + backward on the small DeepLabV3+ at 64x64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter

from shiftlab.config.method import MethodConfig
from shiftlab.config.model import DeepLabV3PlusConfig
from shiftlab.methods import build_method, list_methods
from shiftlab.methods.losses import dice_loss
from shiftlab.models import create_model
from shiftlab.utils.errors import ConfigError

K = 4
NAMES = ["road", "Lush Bushes", "dry_grass", "sky"]


def method_cfg(**kw):
    return TypeAdapter(MethodConfig).validate_python(kw)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(
        DeepLabV3PlusConfig(
            backbone="resnet18", decoder_channels=32, low_level_channels=16, pretrained="none"
        ),
        K,
    )


def batch(seed: int = 0, n: int = 2, **extra: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "image": torch.randn(n, 3, 64, 64, generator=g),
        "label": torch.randint(0, K, (n, 64, 64), generator=g),
    }
    out["label"][:, :4] = 255
    for key in extra:
        out[key] = torch.randn(n, 3, 64, 64, generator=g)
    return out


def grads_everywhere(model) -> None:
    for name, params in model.param_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def run(method, model, b, step=0):
    model.train()
    model.zero_grad(set_to_none=True)
    method.setup(model)
    total, logs = method.loss(model, b, step)
    assert total.dim() == 0 and torch.isfinite(total)
    total.backward()
    grads_everywhere(model)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert math.isclose(logs["loss"], total.item(), rel_tol=1e-6)
    return total, logs


def test_all_methods_registered() -> None:
    assert {"source_only", "sdgpa", "feature_align", "classmix", "offroad"} <= set(list_methods())


def test_unknown_method_is_config_error() -> None:
    class Cfg:
        name = "nope"

    with pytest.raises(ConfigError, match="nope"):
        build_method(Cfg(), K)


def test_source_only(model) -> None:
    m = build_method(method_cfg(name="source_only"), K)
    assert m.stages() == ["train"] and m.views("train") == {"image": "source"}
    assert m.pair_views is None
    b = batch()
    total, logs = run(m, model, b)
    model.eval()
    with torch.no_grad():
        ref = F.cross_entropy(model(b["image"])["logits"], b["label"], ignore_index=255)
        total_eval, _ = m.loss(model, b, 0)
    assert torch.allclose(total_eval, ref, atol=1e-5)


def test_sdgpa_stages_views_and_loss(model) -> None:
    m = build_method(method_cfg(name="sdgpa", stage1_epochs=3, stage2_epochs=2), K)
    assert m.stages() == ["stage1", "stage2"]
    assert m.views("stage1") == {"image": "source", "image_b": "intermediate"}
    assert m.views("stage2") == {"image": "target", "image_b": "intermediate"}
    assert (m.stage_epochs("stage1", 99), m.stage_epochs("stage2", 99)) == (3, 2)
    with pytest.raises(ValueError):
        m.views("stage3")
    run(m, model, batch(image_b=True))
    skip1 = build_method(method_cfg(name="sdgpa", stage1_epochs=0, stage2_epochs=2), K)
    assert skip1.stages() == ["stage2"]


def test_sdgpa_loss_is_sum_of_ces_plus_zodi(model) -> None:
    b = batch(1)
    b["image_b"] = b["image"].clone()  # identical views: CE(a) == CE(b), zodi == -1
    model.eval()
    with torch.no_grad():
        ce = F.cross_entropy(model(b["image"])["logits"], b["label"], ignore_index=255)
        plain, _ = build_method(method_cfg(name="sdgpa"), K).loss(model, b, 0)
        zodi, logs = build_method(method_cfg(name="sdgpa", zodi_weight=0.1), K).loss(model, b, 0)
    assert torch.allclose(plain, 2 * ce, atol=1e-5)
    assert math.isclose(logs["zodi_sim"], -1.0, abs_tol=1e-5)
    assert torch.allclose(zodi, 2 * ce - 0.1, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "l2", "mmd"])
def test_feature_align_runs(model, metric: str) -> None:
    cfg = method_cfg(
        name="feature_align",
        appearances=["noon", "night", "fog"],
        align_weight=0.5,
        align={"metric": metric, "layers": [1, -1], "layer_weights": [1.0, 2.0], "mmd_samples": 32},
    )
    m = build_method(cfg, K)
    assert m.pair_views == ["noon", "night", "fog"]
    assert m.views("train") == {"image": "noon", "image_b": "night"}
    _, logs = run(m, model, batch(image_b=True))
    assert logs["align"] > 0


def test_feature_align_zero_for_identical_views(model) -> None:
    m = build_method(method_cfg(name="feature_align", appearances=["a", "b"]), K)
    b = batch(2)
    b["image_b"] = b["image"].clone()
    model.eval()
    with torch.no_grad():
        _, logs = m.loss(model, b, 0)
    assert logs["align"] < 1e-5
    assert math.isclose(logs["ce_a"], logs["ce_b"], rel_tol=1e-5)


def test_feature_align_bad_layer_is_config_error(model) -> None:
    m = build_method(
        method_cfg(name="feature_align", appearances=["a", "b"], align={"layers": [7]}), K
    )
    with pytest.raises(ConfigError, match="method.align.layers"):
        m.loss(model, batch(image_b=True), 0)


def test_classmix_dacs(model) -> None:
    m = build_method(method_cfg(name="classmix"), K, seed=3)
    assert m.views("train") == {"image": "source", "target_image": "target"}
    b = batch(3, target_image=True)
    _, logs = run(m, model, b)
    assert {"loss_s", "loss_t", "pseudo_confidence"} <= set(logs)
    assert 0.0 <= logs["pseudo_confidence"] <= 1.0
    assert all(p.grad is None for p in m.teacher.parameters())
    assert not m.teacher.training


def test_classmix_ema_teacher_and_state(model) -> None:
    model = copy.deepcopy(model)  # the weights are perturbed below; keep the fixture intact
    m = build_method(method_cfg(name="classmix", ema_alpha=0.9), K)
    m.setup(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    m.after_step(model)  # step 0: alpha warm-up = 0 -> teacher copies the student
    for t, s in zip(m.teacher.parameters(), model.parameters(), strict=True):
        assert torch.allclose(t, s)
    t_before = [p.clone() for p in m.teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    m.after_step(model)  # step 1: alpha = min(1 - 1/2, 0.9) = 0.5
    for t, old, s in zip(m.teacher.parameters(), t_before, model.parameters(), strict=True):
        assert torch.allclose(t, 0.5 * old + 0.5 * s, atol=1e-6)

    state = m.state_dict()
    assert state["step"] == 2
    fresh = build_method(method_cfg(name="classmix", ema_alpha=0.9), K)
    fresh.load_state_dict(state)  # before setup: applied when the teacher is built
    fresh.setup(model)
    for a, b in zip(fresh.teacher.parameters(), m.teacher.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh.state_dict()["step"] == 2


def test_classmix_is_seeded(model) -> None:
    b = batch(4, target_image=True)
    model.eval()
    results = []
    for seed in (5, 5):
        m = build_method(method_cfg(name="classmix"), K, seed=seed)
        m.setup(model)
        with torch.no_grad():
            results.append(m.loss(model, b, 7)[0])
    assert torch.equal(results[0], results[1])


def test_classmix_carla_variant(model) -> None:
    cfg = method_cfg(
        name="classmix",
        appearances=["noon", "night"],
        align_weight=0.1,
        mix_align_weight=0.2,
        align={"layers": [-1]},
    )
    m = build_method(cfg, K)
    assert m.pair_views == ["noon", "night"]
    assert m.views("train") == {"image": "noon", "image_b": "night", "target_image": "target"}
    _, logs = run(m, model, batch(5, image_b=True, target_image=True))
    assert logs["align_source"] > 0 and logs["align_mixed"] > 0


def test_classmix_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        method_cfg(name="classmix", align_weight=0.5)  # alignment needs two appearances
    with pytest.raises(ValidationError):
        method_cfg(name="classmix", ema_alpha=1.5)


def test_offroad_class_weights_by_name(model) -> None:
    cfg = method_cfg(
        name="offroad", class_weights={"sky": 0.4, "lush bushes": 1.0, "Dry Grass": 0.8}
    )
    m = build_method(cfg, K, class_names=NAMES)
    assert m.class_weights.tolist() == pytest.approx([1.0, 1.0, 0.8, 0.4])
    b = batch(6)
    run(m, model, b)
    model.eval()
    with torch.no_grad():
        logits = model(b["image"])["logits"]
        total, logs = m.loss(model, b, 0)
    ce = F.cross_entropy(logits, b["label"], weight=m.class_weights, ignore_index=255)
    dice = dice_loss(logits, b["label"])
    assert torch.allclose(total, 0.5 * ce + 0.5 * dice, atol=1e-5)


def test_offroad_unknown_class_is_config_error() -> None:
    cfg = method_cfg(name="offroad", class_weights={"Rocks": 5.0})
    with pytest.raises(ConfigError, match="Rocks"):
        build_method(cfg, K, class_names=NAMES)
    with pytest.raises(ConfigError, match="class names"):
        build_method(cfg, K)


def test_method_config_ranges() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        method_cfg(name="feature_align", appearances=["a"])
    with pytest.raises(ValidationError):
        method_cfg(name="feature_align", appearances=["a", "b"], align_weight=-1)
    with pytest.raises(ValidationError):
        method_cfg(name="feature_align", appearances=["a", "b"], align={"layer_weights": [1.0]})
    with pytest.raises(ValidationError):
        method_cfg(name="sdgpa", zodi_weight=20)
    with pytest.raises(ValidationError):
        method_cfg(name="offroad", ce_weight=0.5, bogus=1)


def test_strong_augment_is_seeded_photometric_and_optional() -> None:
    from shiftlab.config.method import StrongAugmentConfig
    from shiftlab.methods.strong_augment import blur_kernel_size, strong_augment

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 32, 48, generator=g)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    always = StrongAugmentConfig(color_jitter_p=1.0, blur_p=1.0)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    a = strong_augment(x, always, mean, std, gen())
    assert torch.equal(a, strong_augment(x, always, mean, std, gen()))  # same seed, same pixels
    assert not torch.equal(
        a, strong_augment(x, always, mean, std, torch.Generator().manual_seed(8))
    )
    assert a.shape == x.shape and not torch.allclose(a, x, atol=1e-3)
    back = a * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # still valid pixels after the round trip
    # Blur alone smooths: neighbouring pixels differ less than before.
    blur_only = strong_augment(
        x, StrongAugmentConfig(color_jitter_p=0.0, blur_p=1.0), mean, std, gen()
    )
    assert blur_only.diff(dim=-1).abs().mean() < 0.9 * x.diff(dim=-1).abs().mean()
    # Off (or zero probabilities): the very same tensor.
    assert strong_augment(x, StrongAugmentConfig(enabled=False), mean, std, gen()) is x
    assert strong_augment(x, StrongAugmentConfig(color_jitter_p=0, blur_p=0), mean, std, gen()) is x
    assert blur_kernel_size(32, 48) == 3 and blur_kernel_size(512, 1024) == 51


def test_classmix_strong_augment_changes_the_target_loss_only(model) -> None:
    b = batch(4, target_image=True)
    model.eval()
    logs = {}
    for enabled in (True, False):
        m = build_method(
            method_cfg(
                name="classmix",
                strong_augment={"enabled": enabled, "color_jitter_p": 1.0, "blur_p": 1.0},
            ),
            K,
            seed=1,
        )
        m.setup(model)
        with torch.no_grad():
            logs[enabled] = m.loss(model, b, 3)[1]
    assert logs[True]["loss_s"] == logs[False]["loss_s"]  # source images are not augmented
    assert logs[True]["loss_t"] != logs[False]["loss_t"]  # mixed images are
