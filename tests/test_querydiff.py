"""QueryDiff: tiny random-weight ViT, UNet and VAE (real timm / diffusers classes), CPU, seconds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from shiftlab.config.querydiff import (
    QueryDiffDiffusionConfig,
    QueryDiffMethodConfig,
    QueryDiffModelConfig,
)
from shiftlab.models.querydiff import QueryDiff, SetCriterion, build_querydiff
from shiftlab.models.querydiff.agent import default_groups
from shiftlab.models.querydiff.diffusion import DiffusionFeatureExtractor
from shiftlab.models.querydiff.guidance import (
    GuidanceHead,
    huber_guidance_loss,
    kl_guidance_loss,
)
from shiftlab.models.querydiff.head import semantic_inference
from shiftlab.models.querydiff.matching import hungarian_match
from shiftlab.utils.errors import ConfigError

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
        diffusion={"tiny": True, "up_blocks": (0, 1)},
    )
    base.update(overrides)
    return QueryDiffModelConfig.model_validate(base)


@pytest.fixture(scope="module")
def model() -> QueryDiff:
    torch.manual_seed(0)
    return build_querydiff(tiny_cfg(), K)


def _label(b: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    label = torch.zeros(b, h, w, dtype=torch.long)
    label[:, :, w // 2 :] = 3
    label[:, h // 2 :, : w // 4] = 1
    label[:, :3] = 255
    return label


# -- config -------------------------------------------------------------------------------------


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="guidance needs a diffusion model"):
        QueryDiffModelConfig(pretrained="none")
    with pytest.raises(ValidationError, match="cache_dir"):
        QueryDiffDiffusionConfig(tiny=True, features="cached")
    with pytest.raises(ValidationError, match="feature_blocks"):
        tiny_cfg(feature_blocks=(3, 1, 2, 0))
    with pytest.raises(ValidationError, match="timesteps"):
        QueryDiffDiffusionConfig(tiny=True, timesteps=(0, 1000))
    with pytest.raises(ValidationError):
        QueryDiffMethodConfig(kl_weight=-1.0)
    with pytest.raises(ValidationError):
        tiny_cfg(unknown_key=1)
    assert tiny_cfg(guidance=False, diffusion={}).guidance is False
    # The reference defaults.
    m = QueryDiffMethodConfig()
    assert (m.class_weight, m.mask_weight, m.dice_weight, m.no_object_weight) == (
        2.0,
        5.0,
        5.0,
        0.1,
    )
    d = QueryDiffModelConfig(guidance=False, pretrained="none")
    assert d.feature_blocks == (7, 11, 15, 23) and d.adapter_tokens == 100 and d.adapter_rank == 16
    assert d.num_queries == 100 and d.decoder_layers == 9 and d.diffusion.timesteps == (0, 100)


def test_build_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="feature_blocks"):
        build_querydiff(tiny_cfg(feature_blocks=(1, 2, 3, 9)), K)
    with pytest.raises(ConfigError, match="up_blocks"):
        build_querydiff(tiny_cfg(diffusion={"tiny": True, "up_blocks": (0, 5)}), K)
    with pytest.raises(ConfigError, match="query_groups"):
        build_querydiff(tiny_cfg(query_groups=(8, 4)), K)


def test_default_groups_follow_the_reference() -> None:
    assert default_groups(24) == (24, 12, 6, 3)
    assert default_groups(4) == (4, 2)
    assert default_groups(12) == (12, 6, 3)


# -- model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_forward_shapes(model: QueryDiff, hw: tuple[int, int]) -> None:
    h, w = hw
    model.train()
    out = model(torch.randn(2, 3, h, w))
    assert out["logits"].shape == (2, K, h, w)
    strides = [4, 8, 16, 32]
    assert [tuple(f.shape) for f in out["features"]] == [
        (2, 32, -(-h // s), -(-w // s)) for s in strides
    ]
    assert out["class_logits"].shape == (2, Q, K + 1)
    assert out["mask_logits"].shape == (2, Q, h // 4, w // 4)
    assert len(out["aux_outputs"]) == 2  # before the first decoder layer + after the first
    g = out["guidance_losses"]
    assert set(g) == {"kl", "huber"} and all(torch.isfinite(v) for v in g.values())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert "guidance_losses" not in out
    assert out["logits"].shape == (1, K, h, w)


def test_adapters_start_as_identity(model: QueryDiff) -> None:
    """Zero-initialised adapter outputs: the adapted ViT equals the frozen ViT at init."""
    fresh = build_querydiff(tiny_cfg(guidance=False, diffusion={}), K).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        maps, states = fresh.backbone(x)
        plain = fresh.backbone.vit.forward_features(x)[:, 1:]
    last = maps[-1].flatten(2).transpose(1, 2)
    # forward_features applies the final norm; the block output is compared before it.
    torch.testing.assert_close(fresh.backbone.vit.norm(last), plain)
    assert len(states) == 4 and states[0].shape == (1, Q, 64)


def test_backward_reaches_trainable_parts_only(model: QueryDiff) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 64, 64))
    total, _ = SetCriterion(K)(out, _label())
    total = total + out["guidance_losses"]["kl"] + out["guidance_losses"]["huber"]
    total.backward()

    groups = model.param_groups()
    assert set(groups) == {"encoder", "decoder", "head"}
    grouped = [id(p) for ps in groups.values() for p in ps]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(grouped) == trainable
    adapter_ids = {id(p) for p in model.backbone.adapters.parameters()}
    assert {id(p) for p in groups["encoder"]} == adapter_ids

    vit = list(model.backbone.vit.parameters())
    assert vit and all(not p.requires_grad and p.grad is None for p in vit)
    assert not set(map(id, vit)) & set(grouped)
    diffusion = model.diffusion.parameters()
    assert diffusion and all(p.grad is None and not p.requires_grad for p in diffusion)
    # The diffusion weights are no part of the model (checkpoints, DDP, optimizers).
    assert not {id(p) for p in diffusion} & {id(p) for p in model.parameters()}
    assert not any(k.startswith(("unet", "vae", "_diffusion")) for k in model.state_dict())

    def has_grad(module: torch.nn.Module) -> bool:
        ps = [p for p in module.parameters() if p.requires_grad]
        return all(p.grad is not None for p in ps) and any(p.grad.abs().sum() > 0 for p in ps)

    for part in (
        model.backbone.adapters,
        model.agent,
        model.guidance,
        model.decoder,
        model.refiner,
        model.pixel_decoder,
        model.neck,
    ):
        assert has_grad(part), type(part).__name__
    # The learnable tokens train through the agent queries and the refinement.
    assert model.backbone.adapters.tokens_a.grad[0].abs().sum() > 0


def test_deepcopy_shares_the_frozen_diffusion_model(model: QueryDiff) -> None:
    import copy

    clone = copy.deepcopy(model)
    assert clone.diffusion is model.diffusion
    assert clone.backbone.adapters.tokens_a is not model.backbone.adapters.tokens_a


def test_guidance_losses_alone_do_not_touch_the_unet(model: QueryDiff) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    g = model(torch.randn(1, 3, 64, 64))["guidance_losses"]
    (g["kl"] + g["huber"]).backward()
    assert all(p.grad is None for p in model.diffusion.parameters())
    assert model.agent.mlp[1].weight.grad.abs().sum() > 0
    assert model.guidance.w_w.weight.grad.abs().sum() > 0  # trained through KL


# -- guidance losses ----------------------------------------------------------------------------


def test_kl_properties() -> None:
    torch.manual_seed(1)
    a = torch.randn(2, 10, 7)
    assert kl_guidance_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # Softmax is shift invariant: a constant offset per token changes nothing.
    assert kl_guidance_loss(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-5)
    for _ in range(5):
        b = torch.randn(2, 10, 7)
        assert kl_guidance_loss(a, b).item() > 0.0
    assert kl_guidance_loss(a, torch.randn(2, 10, 7) * 5).item() >= 0.0


def test_huber_zero_when_queries_equal_the_gathered_target() -> None:
    torch.manual_seed(2)
    head = GuidanceHead(dim=16, diffusion_dim=12)
    d_w, d_s = torch.randn(2, 12, 4, 5), torch.randn(2, 12, 4, 5)
    with torch.no_grad():
        # W_f = 0: S is uniform over pixels, so S·(W_w D_w) is the mean projected token.
        head.w_f.weight.zero_()
        head.w_f.bias.zero_()
        tokens = torch.nn.functional.layer_norm(d_w.flatten(2).transpose(1, 2), (12,))
        target = head.w_w(tokens).mean(dim=1, keepdim=True).expand(-1, 6, -1)
    losses = head(target.clone(), d_w, d_s)
    assert losses["huber"].item() == pytest.approx(0.0, abs=1e-7)
    assert head(target + 1.0, d_w, d_s)["huber"].item() == pytest.approx(0.5, abs=1e-5)
    assert huber_guidance_loss(target, target).item() == 0.0


# -- matching, criterion, inference -------------------------------------------------------------


def test_hungarian_equals_brute_force() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        cost = torch.rand(5, 3, generator=gen)
        rows, cols = hungarian_match(cost)
        best = min(
            sum(cost[r, c].item() for r, c in zip(perm, range(3), strict=True))
            for perm in itertools.permutations(range(5), 3)
        )
        assert cols.tolist() == [0, 1, 2]
        assert sum(cost[r, c].item() for r, c in zip(rows, cols, strict=True)) == pytest.approx(
            best
        )


def _perfect_outputs(label: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    small = torch.nn.functional.interpolate(label[:, None].float(), size=grid, mode="nearest")[:, 0]
    b = label.shape[0]
    cls = torch.full((b, Q, K + 1), -10.0)
    cls[..., K] = 10.0  # no-object by default
    masks = torch.full((b, Q, *grid), -20.0)
    for i in range(b):
        for j, c in enumerate(torch.unique(label[i][label[i] != 255]).tolist()):
            cls[i, j] = -10.0
            cls[i, j, c] = 10.0
            masks[i, j] = torch.where(small[i] == c, 20.0, -20.0)
    return {"class_logits": cls, "mask_logits": masks, "aux_outputs": []}


@pytest.mark.parametrize("num_points", [None, 64])
def test_criterion_prefers_the_target(num_points: int | None) -> None:
    label = _label()
    crit = SetCriterion(K, num_points=num_points)
    perfect = _perfect_outputs(label, (16, 16))
    gen = torch.Generator().manual_seed(4)
    random = {
        "class_logits": torch.randn(2, Q, K + 1, generator=gen),
        "mask_logits": torch.randn(2, Q, 16, 16, generator=gen),
        "aux_outputs": [],
    }
    good, parts = crit(perfect, label, torch.Generator().manual_seed(0))
    bad, _ = crit(random, label, torch.Generator().manual_seed(0))
    # Point mode samples 75% of its points on mask boundaries (Mask2Former's importance
    # sampling), where bilinear targets are fractional and saturated logits pay some BCE.
    assert good.item() < (0.05 if num_points is None else 0.2) * bad.item()
    assert set(parts) == {"loss_ce", "loss_mask", "loss_dice", "loss_aux"}
    # A swapped class on a matched query costs more than the perfect prediction.
    swapped = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in perfect.items()}
    swapped["class_logits"][:, 0] = swapped["class_logits"][:, 1]
    worse, _ = crit(swapped, label, torch.Generator().manual_seed(0))
    assert worse.item() > good.item()


@pytest.mark.parametrize("upsample_masks", [True, False])
def test_semantic_inference_picks_the_dominant_mask(upsample_masks: bool) -> None:
    cls = torch.full((1, 3, K + 1), -5.0)
    cls[0, 0, 2] = 5.0  # query 0: class 2
    cls[0, 1, 4] = 5.0  # query 1: class 4
    cls[0, 2, K] = 5.0  # query 2: no object, big mask everywhere
    masks = torch.full((1, 3, 4, 4), -8.0)
    masks[0, 0, :, :2] = 8.0
    masks[0, 1, :, 2:] = 8.0
    masks[0, 2] = 8.0
    scores = semantic_inference(cls, masks, (8, 8), upsample_masks=upsample_masks)
    assert scores.shape == (1, K, 8, 8)
    pred = scores.argmax(dim=1)[0]
    assert (pred[:, :3] == 2).all() and (pred[:, 5:] == 4).all()


def test_method_loss_and_registries(model: QueryDiff) -> None:
    from shiftlab.methods import build_method
    from shiftlab.models import create_model, list_models

    assert "querydiff" in list_models()
    method = build_method(QueryDiffMethodConfig(num_points=128), K, ignore_index=255, seed=3)
    assert method.views(method.stages()[0]) == {"image": "source"}
    method.setup(model)
    model.train()
    model.zero_grad(set_to_none=True)
    batch = {"image": torch.randn(2, 3, 64, 64), "label": _label()}
    total, parts = method.loss(model, batch, step=0)
    assert {"loss", "loss_ce", "loss_mask", "loss_dice", "loss_aux", "kl", "huber"} <= set(parts)
    assert torch.isfinite(total) and parts["loss"] == pytest.approx(total.item())
    total.backward()
    assert model.backbone.adapters.delta.weight.grad is not None
    # Guidance weights scale their terms.
    zero = build_method(QueryDiffMethodConfig(num_points=128, kl_weight=0, huber_weight=0), K)
    torch.manual_seed(0)
    t0, p0 = zero.loss(model, batch, step=0)
    assert p0["loss"] == pytest.approx(
        p0["loss_ce"] + p0["loss_mask"] + p0["loss_dice"] + p0["loss_aux"], rel=1e-5
    )
    assert isinstance(create_model(tiny_cfg(guidance=False, diffusion={}), K), QueryDiff)


def test_method_rejects_other_models() -> None:
    from shiftlab.methods import build_method

    method = build_method(QueryDiffMethodConfig(), K)
    with pytest.raises(ConfigError, match="querydiff"):
        method.setup(torch.nn.Conv2d(3, K, 1))


# -- diffusion features -------------------------------------------------------------------------


def test_diffusion_features_are_deterministic_and_cached(tmp_path: Path) -> None:
    x = torch.randn(3, 3, 32, 48)
    live = DiffusionFeatureExtractor(QueryDiffDiffusionConfig(tiny=True, up_blocks=(0, 1)))
    cached = DiffusionFeatureExtractor(
        QueryDiffDiffusionConfig(
            tiny=True, up_blocks=(0, 1), features="cached", cache_dir=str(tmp_path)
        )
    )
    w0, s0 = live.extract(x)
    assert w0.shape == (3, live.channels, 16, 24) and w0.dtype == torch.float32
    assert not torch.allclose(w0, s0)  # t=0 and t=100 differ
    w1, s1 = live.extract(x)
    assert torch.equal(w0, w1) and torch.equal(s0, s1)  # seeded noise
    # Per-image noise: an image's features do not depend on its batch mates.
    w_single, _ = live.extract(x[1:2])
    torch.testing.assert_close(w_single[0], w0[1], rtol=1e-4, atol=1e-5)

    wc, sc = cached.extract(x)  # all misses: computed and written
    files = sorted(cached.cache_root().rglob("*.safetensors"))
    assert len(files) == 3
    torch.testing.assert_close(wc, w0, rtol=0, atol=0)
    mtimes = [f.stat().st_mtime_ns for f in files]
    wc2, sc2 = cached.extract(x[[2, 0]])  # all hits, in another order
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # nothing recomputed
    torch.testing.assert_close(wc2, w0[[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(sc2, s0[[2, 0]], rtol=0, atol=0)
    # Another input misses and gets its own entry.
    cached.extract(x[:1] + 0.5)
    assert len(list(cached.cache_root().rglob("*.safetensors"))) == 4


def test_pretrained_vit_weights_load_from_a_local_dinov2_file(tmp_path: Path) -> None:
    source = build_querydiff(tiny_cfg(guidance=False, diffusion={}), K)
    state = {k: v.clone() for k, v in source.backbone.vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 64)  # the official DINOv2 layout
    torch.save(state, tmp_path / "dinov2_tiny.pth")
    loaded = build_querydiff(
        tiny_cfg(guidance=False, diffusion={}, pretrained=str(tmp_path / "dinov2_tiny.pth")), K
    )
    for k, v in source.backbone.vit.state_dict().items():
        torch.testing.assert_close(loaded.backbone.vit.state_dict()[k], v)
    bad = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    torch.save(bad, tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="lacks"):
        build_querydiff(
            tiny_cfg(guidance=False, diffusion={}, pretrained=str(tmp_path / "broken.pth")), K
        )


def test_local_stable_diffusion_directory_loads(tmp_path: Path) -> None:
    """The model_dir path: real from_pretrained of unet/vae/text_encoder/tokenizer/scheduler."""
    from shiftlab.models.querydiff.sd_local import write_random_stable_diffusion

    root = write_random_stable_diffusion(tmp_path / "sd", shape="tiny")
    extractor = DiffusionFeatureExtractor(
        QueryDiffDiffusionConfig(model_dir=str(root), up_blocks=(0, 1))
    )
    assert extractor.empty.shape == (1, 77, 32)
    weak, strong = extractor.extract(torch.randn(1, 3, 30, 40))  # rounded up to multiples of 4
    assert weak.shape == (1, extractor.channels, 16, 20) and torch.isfinite(strong).all()
    with pytest.raises(ConfigError, match="text_encoder"):
        (root / "text_encoder" / "config.json").unlink()
        (root / "text_encoder").rename(tmp_path / "elsewhere")
        DiffusionFeatureExtractor(QueryDiffDiffusionConfig(model_dir=str(root)))
