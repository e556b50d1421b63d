"""QueryDiff as published: Mask2Former's deformable-attention pixel decoder, its importance
sampling of mask points, Rein's layer-shared adapters, and checkpoints without the frozen ViT.

Every check has a closed-form or hand-computed reference; CPU, tiny sizes, seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from shiftlab.config.querydiff import QueryDiffMethodConfig, QueryDiffModelConfig
from shiftlab.models.querydiff import QueryDiff, SetCriterion, build_querydiff
from shiftlab.models.querydiff.backbone import Reins
from shiftlab.models.querydiff.criterion import importance_points
from shiftlab.models.querydiff.pixel_decoder import (
    FPNPixelDecoder,
    MSDeformAttn,
    MSDeformAttnPixelDecoder,
    reference_points,
)

K = 5  # classes
Q = 8  # queries


def tiny_cfg(**overrides: object) -> QueryDiffModelConfig:
    base: dict[str, object] = dict(
        backbone="vit_small_patch14_dinov2",
        pretrained="none",
        backbone_kwargs={"depth": 4, "embed_dim": 64, "num_heads": 2},
        img_size=56,
        feature_blocks=(0, 1, 2, 3),
        adapter_tokens=Q,
        adapter_rank=4,
        num_queries=Q,
        hidden_dim=32,
        num_heads=4,
        ffn_dim=64,
        decoder_layers=2,
        pixel_decoder_layers=2,
        pixel_decoder_points=2,
        pixel_decoder_ffn_dim=32,
        guidance=False,
    )
    base.update(overrides)
    return QueryDiffModelConfig.model_validate(base)


# -- configuration ------------------------------------------------------------------------------


def test_published_defaults_and_ranges() -> None:
    d = QueryDiffModelConfig(guidance=False, pretrained="none")
    assert d.pixel_decoder == "msdeformattn"
    assert (d.pixel_decoder_layers, d.pixel_decoder_points, d.pixel_decoder_ffn_dim) == (6, 4, 1024)
    assert d.num_heads == 8 and d.adapter_zero_init
    m = QueryDiffMethodConfig()
    assert (m.num_points, m.oversample_ratio, m.importance_sample_ratio) == (112 * 112, 3.0, 0.75)
    for bad in ({"oversample_ratio": 0.5}, {"importance_sample_ratio": 1.5}, {"num_points": 0}):
        with pytest.raises(ValidationError):
            QueryDiffMethodConfig(**bad)
    with pytest.raises(ValidationError):
        tiny_cfg(pixel_decoder="deformable")


# -- multi-scale deformable attention -----------------------------------------------------------


def bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Hand bilinear interpolation of ``img (C, H, W)`` at pixel coords (y, x) (pixel centres
    at integers), zero outside the map."""
    _, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    fy, fx = y - y0, x - x0
    total = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[:, yy, xx]
    return total


def _identity_attn(levels: int, points: int, dim: int = 3) -> MSDeformAttn:
    attn = MSDeformAttn(dim, levels=levels, heads=1, points=points)
    with torch.no_grad():
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
        attn.sampling_offsets.weight.zero_()
        attn.attention_weights.weight.zero_()
    return attn


def test_deform_attn_samples_reference_plus_offset_bilinearly() -> None:
    """1 level, 1 head, 1 point, identity projections: output = input at ref + offset."""
    torch.manual_seed(0)
    h, w = 5, 7
    img = torch.randn(3, h, w, dtype=torch.float64)
    attn = _identity_attn(levels=1, points=1).double()
    dx, dy = 0.3, -0.6  # offsets in pixels of the level
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([dx, dy], dtype=torch.float64))
    source = img.flatten(1).T[None]  # (1, H*W, C)
    query = torch.randn(1, h * w, 3, dtype=torch.float64)  # offsets ignore it (weight 0)
    # Reference points: pixel centres ((j + 0.5) / w, (i + 0.5) / h), in [0, 1].
    f64 = torch.float64
    ys, xs = torch.meshgrid(torch.arange(h, dtype=f64), torch.arange(w, dtype=f64), indexing="ij")
    ref = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], -1).view(1, h * w, 1, 2)
    torch.testing.assert_close(reference_points([(h, w)], torch.device("cpu")), ref.float())
    out = attn(query, ref, source, [(h, w)])[0]
    for i in range(h):
        for j in range(w):
            # Reference = pixel (i, j)'s centre; normalised offset dx / w = dx pixels.
            expected = bilinear(img, i + dy, j + dx)
            torch.testing.assert_close(out[i * w + j], expected)


def test_deform_attn_weights_points_and_levels() -> None:
    """2 levels x 2 points: softmax weights over all four samples, offsets per level's pixels."""
    torch.manual_seed(1)
    shapes = [(4, 6), (2, 3)]
    imgs = [torch.randn(3, h, w, dtype=torch.float64) for h, w in shapes]
    attn = _identity_attn(levels=2, points=2).double()
    offsets = torch.tensor([[[0.25, 0.5], [-1.0, 0.75]], [[0.5, -0.25], [0.0, 0.0]]])
    logits = torch.tensor([0.0, 1.0, -0.5, 2.0])
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(offsets.flatten())
        attn.attention_weights.bias.copy_(logits)
    source = torch.cat([im.flatten(1).T for im in imgs])[None]
    ref = torch.tensor([[[0.3, 0.6]]], dtype=torch.float64).expand(1, 1, 2, 2)
    out = attn(torch.zeros(1, 1, 3, dtype=torch.float64), ref, source, shapes)[0, 0]
    weights = logits.double().softmax(dim=0).view(2, 2)
    expected = torch.zeros(3, dtype=torch.float64)
    for lv, ((h, w), img) in enumerate(zip(shapes, imgs, strict=True)):
        for p in range(2):
            ox, oy = offsets[lv, p].tolist()
            # Normalised location (0.3 + ox / w, 0.6 + oy / h) -> pixel coords (* size - 0.5).
            expected += weights[lv, p] * bilinear(img, 0.6 * h + oy - 0.5, 0.3 * w + ox - 0.5)
    torch.testing.assert_close(out, expected)


def test_deform_attn_initialisation_follows_deformable_detr() -> None:
    attn = MSDeformAttn(16, levels=3, heads=4, points=2)
    bias = attn.sampling_offsets.bias.detach().view(4, 3, 2, 2)
    ring = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for k in range(2):  # point k at distance k + 1 on head h's direction, every level
        torch.testing.assert_close(bias[:, :, k], (k + 1) * ring[:, None].expand(-1, 3, -1))
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not attn.attention_weights.bias.any()  # uniform attention at init
    bound = math.sqrt(6.0 / (16 + 16))  # Xavier-uniform
    for proj in (attn.value_proj, attn.output_proj):
        assert proj.weight.abs().max() <= bound and proj.weight.std() > 0.3 * bound
        assert not proj.bias.any()


# -- Mask2Former pixel decoder ------------------------------------------------------------------


def _maps(b: int, dim: int, hw: tuple[int, int]) -> list[torch.Tensor]:
    return [torch.randn(b, dim, -(-hw[0] // s), -(-hw[1] // s)) for s in (4, 8, 16, 32)]


def test_pixel_decoder_strides_mixing_and_gradients() -> None:
    torch.manual_seed(2)
    dec = MSDeformAttnPixelDecoder(32, heads=4, layers=2, points=2, ffn_dim=32)
    maps = _maps(2, 32, (48, 80))  # non-square: strides 4..32 -> 12x20, 6x10, 3x5, 2x3
    mask_features, memories = dec(maps)
    assert mask_features.shape == (2, 32, 12, 20)
    assert [tuple(m.shape) for m in memories] == [(2, 32, 2, 3), (2, 32, 3, 5), (2, 32, 6, 10)]
    # Not the identity: the encoder changes the projected features...
    projected = dec.input_proj[2](maps[1])
    assert (memories[2] - projected).abs().mean() > 0.1
    # ...and mixes levels: the stride-32 input reaches the stride-8 memory and mask features.
    changed = [m.clone() for m in maps]
    changed[3] = changed[3] + torch.randn_like(changed[3])
    with torch.no_grad():
        mf2, mem2 = dec(changed)
    assert (mem2[2] - memories[2]).abs().max() > 1e-3
    assert (mf2 - mask_features).abs().max() > 1e-3
    (mask_features.square().mean() + sum(m.square().mean() for m in memories)).backward()
    for part in (*dec.input_proj, dec.lateral, dec.output, dec.mask_features):
        weight = next(part.parameters())
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    # The query (features + positions + level embedding) reaches the output only through the
    # zero-initialised offset and weight projections: those learn from the first step on.
    for layer in dec.layers:
        assert layer.attn.sampling_offsets.weight.grad.abs().sum() > 0
        assert layer.attn.attention_weights.weight.grad.abs().sum() > 0


def test_pixel_decoder_runs_in_float32_under_autocast() -> None:
    dec = MSDeformAttnPixelDecoder(32, heads=4, layers=1, points=1, ffn_dim=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, memories = dec(_maps(1, 32, (64, 64)))
    assert mask_features.dtype == torch.float32 and memories[0].dtype == torch.float32


# -- importance sampling ------------------------------------------------------------------------


def _ramp_logits() -> torch.Tensor:
    """Two (8, 64) masks: |logit| grows with x in mask 0 and shrinks with x in mask 1."""
    ramp = torch.arange(1, 65, dtype=torch.float32).expand(8, 64)
    return torch.stack([ramp, ramp.flip(-1)])


def test_importance_sampling_keeps_the_most_uncertain_candidates() -> None:
    n, k, beta, seed = 100, 3.0, 0.75, 7
    logits = _ramp_logits()
    points = importance_points(logits, n, k, beta, torch.Generator().manual_seed(seed))
    assert points.shape == (2, n, 2)
    # Replay the draws: first the k*N candidates, then the uniform rest.
    replay = torch.Generator().manual_seed(seed)
    candidates = torch.rand(2, int(k * n), 2, generator=replay)
    uncertain = round(beta * n)
    rest = torch.rand(2, n - uncertain, 2, generator=replay)
    for mask in range(2):
        img = logits[mask : mask + 1].double()
        # Uncertainty -|logit| at each candidate, interpolated by hand (zero padding: border
        # points look uncertain too, as in Mask2Former).
        hand = torch.stack(
            [
                -bilinear(img, y * 8 - 0.5, x * 64 - 0.5)[0].abs()
                for x, y in candidates[mask].tolist()
            ]
        )
        top = hand.argsort(descending=True)[:uncertain]
        assert hand[top[-1]] > hand[hand.argsort(descending=True)[uncertain]]  # no tie at the cut
        expected = candidates[mask, top]
        chosen = points[mask, :uncertain]
        torch.testing.assert_close(
            chosen[chosen[:, 0].argsort()], expected[expected[:, 0].argsort()], rtol=0, atol=0
        )
        torch.testing.assert_close(points[mask, uncertain:], rest[mask], rtol=0, atol=0)
    # The order is the designed one: mask 0 picks small x, mask 1 large x (interior points).
    assert points[0, :uncertain, 0].median() < 0.3 < 0.7 < points[1, :uncertain, 0].median()


def test_importance_sampling_is_seeded() -> None:
    logits = torch.randn(3, 16, 16)

    def draw(seed: int) -> torch.Tensor:
        return importance_points(logits, 64, 3.0, 0.75, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert ((draw(3) >= 0) & (draw(3) < 1)).all()
    # beta = 0: all points uniform; beta = 1: all from the candidates.
    assert importance_points(logits, 64, 2.0, 0.0).shape == (3, 64, 2)
    assert importance_points(logits, 64, 2.0, 1.0).shape == (3, 64, 2)


def _two_class_label() -> torch.Tensor:
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, :, 16:] = 3
    label[1, 20:] = 255
    return label


def test_criterion_points_are_seeded_by_the_generator() -> None:
    torch.manual_seed(3)
    outputs = {
        "class_logits": torch.randn(2, Q, K + 1),
        "mask_logits": torch.randn(2, Q, 8, 8),
        "aux_outputs": [
            {"class_logits": torch.randn(2, Q, K + 1), "mask_logits": torch.randn(2, Q, 8, 8)}
        ],
    }
    crit = SetCriterion(K, num_points=64)

    def loss(seed: int) -> float:
        return crit(outputs, _two_class_label(), torch.Generator().manual_seed(seed))[0].item()

    assert loss(0) == loss(0) and loss(0) != loss(1)


def test_ignored_pixels_are_neither_positive_nor_negative() -> None:
    """Class 2 everywhere labelled, ignore elsewhere; a mask of +20 *everywhere* is right on
    every labelled point, so its point losses vanish (points straddling the ignore border
    included: their target is the class fraction among labelled neighbours)."""
    label = torch.full((1, 32, 32), 255, dtype=torch.long)
    label[0, :, :13] = 2
    cls = torch.full((1, Q, K + 1), -10.0)
    cls[..., K] = 10.0
    cls[0, 0] = -10.0
    cls[0, 0, 2] = 10.0
    masks = torch.full((1, Q, 8, 8), -20.0)
    masks[0, 0] = 20.0
    out = {"class_logits": cls, "mask_logits": masks, "aux_outputs": []}
    _, parts = SetCriterion(K, num_points=256)(out, label, torch.Generator().manual_seed(0))
    # (+20 falls to +10 within half a cell of the border: zero padding, BCE ~ e^-10.)
    assert parts["loss_mask"].item() < 1e-4 and parts["loss_dice"].item() < 1e-3
    # The same pixels *labelled* with a class outside the K (no target: a negative of every
    # mask, as Mask2Former treats ignored pixels) make the +20 mask badly wrong there.
    negative = torch.where(label == 255, K, label)
    _, parts = SetCriterion(K, num_points=256)(out, negative, torch.Generator().manual_seed(0))
    assert parts["loss_mask"].item() > 10.0


# -- Rein's layer-shared adapters ---------------------------------------------------------------


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_rein_parameter_count_for_vit_large() -> None:
    layers, dim, tokens, rank = 24, 1024, 100, 16
    reins = Reins(layers, dim, tokens, rank, patch_size=14)
    count = _count(reins)
    formula = layers * tokens * rank + layers * rank * dim + 2 * (dim * dim + dim)
    assert count == formula == 2_530_816
    assert 2_000_000 < count < 4_000_000  # Rein's "~3M", not ~50M of per-block adapters
    # Only the low-rank tokens grow with the depth; the MLPs are shared.
    deeper = Reins(2 * layers, dim, tokens, rank, patch_size=14)
    assert _count(deeper) - count == layers * (tokens * rank + rank * dim)
    # Rein's released default adds its learnable scale (one number).
    assert _count(Reins(layers, dim, tokens, rank, patch_size=14, zero_init=False)) == count + 1


def test_rein_initialisation_and_token_states() -> None:
    torch.manual_seed(4)
    reins = Reins(3, 32, 6, 4, patch_size=16)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + math.sqrt(32 * 4)))  # Rein's LoRA token bound
    assert reins.tokens_a.abs().max() <= bound and reins.tokens_b.abs().max() <= bound
    assert not reins.delta.weight.any() and reins.scale == 1.0
    feats = torch.randn(2, 10, 32)
    refined, states = reins(feats, 1)
    torch.testing.assert_close(refined, feats, rtol=0, atol=0)  # zero-init: identity
    assert states.shape == (2, 6, 32)
    _, other = reins(torch.randn(2, 10, 32), 1)
    assert not torch.allclose(states, other)  # the states depend on the image
    published = Reins(3, 32, 6, 4, patch_size=16, zero_init=False)
    assert isinstance(published.scale, torch.nn.Parameter)
    assert published.scale.item() == pytest.approx(1e-3)
    assert published.delta.weight.abs().sum() > 0


def _frozen_vit_maps(model: QueryDiff, x: torch.Tensor) -> list[torch.Tensor]:
    """The frozen ViT's own block outputs (no adapter) at the feature blocks."""
    vit = model.backbone.vit
    tokens = vit.patch_embed(x)
    grid = tokens.shape[1:3]
    tokens = vit.norm_pre(vit._pos_embed(tokens))
    maps = []
    for i, block in enumerate(vit.blocks):
        tokens = block(tokens)
        if i in model.backbone.feature_blocks:
            patches = tokens[:, vit.num_prefix_tokens :]
            maps.append(patches.transpose(1, 2).reshape(x.shape[0], -1, *grid))
    return maps


def test_adapted_vit_starts_as_the_frozen_vit() -> None:
    torch.manual_seed(5)
    model = build_querydiff(tiny_cfg(), K).eval()
    x = torch.randn(2, 3, 42, 70)  # non-square
    with torch.no_grad():
        maps, states = model.backbone(x)
        plain = _frozen_vit_maps(model, x)
        for got, want in zip(maps, plain, strict=True):
            torch.testing.assert_close(got, want)
        assert len(states) == 4 and all(s.shape == (2, Q, 64) for s in states)
        model.backbone.adapters.delta.bias.fill_(0.5)  # the adapter is in the path
        moved, _ = model.backbone(x)
    assert (moved[0] - plain[0]).abs().max() > 0.1


# -- the whole model, and checkpoints without the frozen ViT ------------------------------------


@pytest.mark.parametrize("decoder", ["msdeformattn", "fpn"])
def test_tiny_model_forward_backward(decoder: str) -> None:
    torch.manual_seed(6)
    model = build_querydiff(tiny_cfg(pixel_decoder=decoder), K).train()
    expected = FPNPixelDecoder if decoder == "fpn" else MSDeformAttnPixelDecoder
    assert isinstance(model.pixel_decoder, expected)
    out = model(torch.randn(2, 3, 48, 80))
    assert out["logits"].shape == (2, K, 48, 80)
    assert out["mask_logits"].shape == (2, Q, 12, 20)
    label = torch.zeros(2, 48, 80, dtype=torch.long)
    label[:, :, 40:] = 3
    total, _ = SetCriterion(K, num_points=128)(out, label, torch.Generator().manual_seed(0))
    total.backward()
    for part in (model.backbone.adapters, model.pixel_decoder, model.decoder, model.agent):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.backbone.adapters.tokens_a.grad.abs().sum() > 0


def test_trainable_state_dict_leaves_out_exactly_the_frozen_vit() -> None:
    model = build_querydiff(tiny_cfg(), K)
    full = model.state_dict()
    kept = model.trainable_state_dict()
    excluded = set(full) - set(kept)
    assert excluded == {f"backbone.vit.{k}" for k in model.backbone.vit.state_dict()}
    assert all(k.startswith(QueryDiff.frozen_prefixes) for k in excluded)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and frozen <= excluded  # every frozen parameter is left out...
    assert not any(k in frozen for k in kept)  # ...and every kept parameter trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(kept)
    for k, v in kept.items():
        assert torch.equal(v, full[k])
    # A model rebuilt with the same frozen ViT loads it back; only the frozen keys are missing.
    fresh = build_querydiff(tiny_cfg(), K)
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    assert set(missing) == excluded and not unexpected
