"""Properties of every loss used by the adaptation methods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shiftlab.methods import losses as L


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ CE / Dice


def test_ce_class_weights_change_loss_as_expected() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 8, 8))
    plain = L.cross_entropy(logits, label)
    assert torch.allclose(plain, F.cross_entropy(logits, label))
    # Weighted mean over pixels: sum(w_y * ce) / sum(w_y).
    per_pixel = F.cross_entropy(logits, label, reduction="none")
    ce_rest = per_pixel[label != 0].mean()
    w = torch.tensor([10.0, 1.0, 1.0])
    weighted = L.cross_entropy(logits, label, class_weights=w)
    expected = (10 * per_pixel[label == 0].sum() + per_pixel[label != 0].sum()) / (
        10 * (label == 0).sum() + (label != 0).sum()
    )
    assert torch.allclose(weighted, expected)
    assert not torch.isclose(weighted, plain)
    # Zero weight on a class removes it entirely.
    w0 = torch.tensor([0.0, 1.0, 1.0])
    assert torch.allclose(L.cross_entropy(logits, label, class_weights=w0), ce_rest)


def test_ce_ignores_255_and_all_ignore_is_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    label = torch.randint(0, 3, (1, 4, 4))
    ignored = label.clone()
    ignored[0, :2] = 255
    ref = F.cross_entropy(logits, label, reduction="none")[0, 2:].mean()
    assert torch.allclose(L.cross_entropy(logits, ignored), ref)
    zero = L.cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    zero.backward()  # still part of the graph


def test_dice_perfect_prediction_is_near_zero_and_wrong_is_large() -> None:
    label = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]])
    perfect = F.one_hot(label, 3).permute(0, 3, 1, 2).float() * 50
    assert L.dice_loss(perfect, label) < 1e-3
    wrong = F.one_hot((label + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert L.dice_loss(wrong, label) > 0.8


def test_dice_ignores_ignore_pixels() -> None:
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    ignored = label.clone()
    ignored[:, :4] = 255
    base = L.dice_loss(logits, ignored)
    # Whatever the prediction is on ignored pixels, the loss does not change.
    scrambled = logits.clone()
    scrambled[:, :, :4] = torch.randn(2, 3, 4, 8) * 100
    assert torch.allclose(L.dice_loss(scrambled, ignored), base)
    # And it equals the loss of the valid half alone.
    assert torch.allclose(base, L.dice_loss(logits[:, :, 4:], label[:, 4:]))


def test_dice_class_weights() -> None:
    label = torch.tensor([[[0, 0], [1, 1]]])
    # class 0 predicted perfectly, class 1 predicted as class 0
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 50
    unweighted = L.dice_loss(logits, label, smooth=0.0)
    only_good = L.dice_loss(logits, label, class_weights=torch.tensor([1.0, 0.0]), smooth=0.0)
    only_bad = L.dice_loss(logits, label, class_weights=torch.tensor([0.0, 1.0]), smooth=0.0)
    assert only_good < unweighted < only_bad
    assert math.isclose(only_bad.item(), 1.0, abs_tol=1e-6)


# ------------------------------------------------------------------ alignment


def feats(seed: int, shape=(2, 8, 4, 4)) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


@pytest.mark.parametrize("fn", [L.cosine_alignment, L.l2_alignment])
def test_alignment_zero_for_identical_positive_otherwise(fn) -> None:
    a, b = feats(0), feats(1)
    assert fn(a, a.clone()).abs() < 1e-6
    assert fn(a, b) > 0.1


def test_cosine_alignment_is_scale_invariant_and_per_pixel() -> None:
    a = feats(0)
    assert L.cosine_alignment(a, 3.0 * a).abs() < 1e-6
    # Opposite features: 1 - cos = 2 everywhere.
    assert torch.allclose(L.cosine_alignment(a, -a), torch.tensor(2.0))
    # Per pixel, not per image: a spatial permutation of the same vectors is penalised.
    assert L.cosine_alignment(a, a.flip(-1)) > 0.1


def test_l2_alignment_value() -> None:
    a = torch.zeros(1, 2, 2, 2)
    b = torch.ones(1, 2, 2, 2) * 2
    assert torch.allclose(L.l2_alignment(a, b), torch.tensor(4.0))


def test_mmd_zero_for_identical_larger_for_shifted() -> None:
    a = feats(0, (2, 8, 8, 8))
    same = L.mmd_alignment(a, a.clone(), samples=64, generator=gen(1))
    noise = L.mmd_alignment(a, feats(5, (2, 8, 8, 8)), samples=64, generator=gen(1))
    small = L.mmd_alignment(a, a + 0.5, samples=64, generator=gen(1))
    large = L.mmd_alignment(a, a + 3.0, samples=64, generator=gen(1))
    assert same.abs() < 1e-6
    assert 0 < small < large
    assert noise >= 0


def test_mmd_has_gradients() -> None:
    a = feats(0).requires_grad_()
    L.mmd_alignment(a, feats(1), samples=16, generator=gen(0)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_alignment_loss_layer_weights() -> None:
    fa = [feats(0), feats(1, (2, 4, 2, 2))]
    fb = [feats(2), feats(3, (2, 4, 2, 2))]
    l0 = L.cosine_alignment(fa[0], fb[0])
    l1 = L.cosine_alignment(fa[1], fb[1])
    total = L.alignment_loss(fa, fb, "cosine", [0, 1], [0.5, 2.0])
    assert torch.allclose(total, 0.5 * l0 + 2.0 * l1)
    assert torch.allclose(L.alignment_loss(fa, fb, "cosine", [-1], [1.0]), l1)
    with pytest.raises(ValueError):
        L.alignment_loss(fa, fb, "nope", [0], [1.0])


def test_zodi_similarity() -> None:
    a = feats(0)
    assert torch.allclose(L.zodi_similarity(a, a.clone()), torch.tensor(-1.0))
    # GAP first: a spatial shuffle of the same map has identical global features.
    assert torch.allclose(L.zodi_similarity(a, a.flip(-1)), torch.tensor(-1.0), atol=1e-6)
    assert L.zodi_similarity(a, feats(1)) > -0.9


# ------------------------------------------------------------------ ClassMix, EMA, pseudo-labels


def test_classmix_mask_covers_exactly_the_chosen_classes() -> None:
    label = torch.randint(0, 6, (3, 16, 16), generator=gen(0))
    label[0, :4] = 255
    label[2] = torch.where(label[2] > 2, torch.tensor(255), label[2])  # classes {0,1,2} only
    mask, chosen = L.classmix_mask(label, gen(7))
    assert mask.shape == label.shape and mask.dtype == torch.bool
    for i in range(3):
        present = set(torch.unique(label[i]).tolist()) - {255}
        picked = set(chosen[i].tolist())
        assert picked <= present
        assert len(picked) == (len(present) + 1) // 2
        expected = torch.zeros_like(mask[i])
        for c in picked:
            expected |= label[i] == c
        assert torch.equal(mask[i], expected)
        assert not mask[i][label[i] == 255].any()


def test_classmix_mask_is_seeded() -> None:
    label = torch.randint(0, 8, (4, 8, 8), generator=gen(0))
    m1, _ = L.classmix_mask(label, gen(3))
    m2, _ = L.classmix_mask(label, gen(3))
    assert torch.equal(m1, m2)
    others = [L.classmix_mask(label, gen(s))[0] for s in range(4, 10)]
    assert any(not torch.equal(m1, o) for o in others)


def test_mix_uses_mask_per_pixel() -> None:
    mask = torch.tensor([[[True, False]]])
    a = torch.ones(1, 3, 1, 2)
    b = torch.zeros(1, 3, 1, 2)
    out = L.mix(mask, a, b)
    assert out[:, :, 0, 0].eq(1).all() and out[:, :, 0, 1].eq(0).all()


def test_ema_update_math() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
    student[1].running_mean.fill_(4.0)
    student[1].num_batches_tracked.fill_(7)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    L.ema_update(teacher, student, alpha=0.9)
    for t, old, s in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * old + 0.1 * s)
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.4))
    assert teacher[1].num_batches_tracked.item() == 7
    L.ema_update(teacher, student, alpha=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)


def test_ema_alpha_warmup() -> None:
    assert L.ema_alpha(0, 0.999) == 0.0
    assert L.ema_alpha(1, 0.999) == 0.5
    assert L.ema_alpha(100_000, 0.999) == 0.999


def test_pseudo_label_weight_is_confident_fraction() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 10.0  # p ~ 0.99995 > 0.968
    logits[0, 0, 0, 1] = 10.0
    logits[0, 0, 1, 0] = 2.0  # p ~ 0.88 < 0.968
    pseudo, weight = L.pseudo_labels(logits, threshold=0.968)
    assert pseudo.tolist() == [[[1, 0], [0, 0]]]
    assert math.isclose(weight.item(), 0.5)
    _, w0 = L.pseudo_labels(logits, threshold=0.99999)
    assert w0.item() == 0.0


def test_weighted_ce() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    label = torch.randint(0, 3, (1, 4, 4))
    ones = torch.ones(1, 4, 4)
    assert torch.allclose(
        L.weighted_cross_entropy(logits, label, ones), F.cross_entropy(logits, label)
    )
    assert torch.allclose(
        L.weighted_cross_entropy(logits, label, ones * 0.25), 0.25 * F.cross_entropy(logits, label)
    )
    label[0, 0] = 255
    w = ones.clone()
    w[0, 0] = 100.0  # weight on an ignored pixel has no effect
    assert torch.allclose(
        L.weighted_cross_entropy(logits, label, w), F.cross_entropy(logits, label, ignore_index=255)
    )
