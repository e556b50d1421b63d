"""Optimizer groups, schedules, encoder freezing and ramp."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftlab.config.model import DeepLabV3PlusConfig
from shiftlab.config.optim import OptimConfig
from shiftlab.models import create_model
from shiftlab.train.optim import (
    amp_dtype,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    schedule_value,
)


class ThreePart(nn.Module):
    """A minimal model with the param_groups() contract (encoder, decoder, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.dec = nn.Conv2d(4, 4, 1)
        self.cls = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return {"logits": self.cls(torch.relu(self.dec(torch.relu(self.enc(x))))), "features": []}

    def param_groups(self):
        return {
            "encoder": list(self.enc.parameters()),
            "decoder": list(self.dec.parameters()),
            "head": list(self.cls.parameters()),
        }


def lrs(opt) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in opt.param_groups}


def test_groups_have_configured_lrs_on_deeplab() -> None:
    model = create_model(
        DeepLabV3PlusConfig(backbone="resnet18", decoder_channels=16, pretrained="none"), 3
    )
    # Off-road recipe: encoder 3e-5 / decoder 1e-4 / head 3e-4.
    cfg = OptimConfig(
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.01,
        lr_mult={"encoder": 0.3, "decoder": 1.0, "head": 3.0},
    )
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    got = lrs(opt)
    assert got["encoder"] == pytest.approx(3e-5)
    assert got["decoder"] == pytest.approx(1e-4)
    assert got["head"] == pytest.approx(3e-4)
    groups = model.param_groups()
    for g in opt.param_groups:
        assert {id(p) for p in g["params"]} == {id(p) for p in groups[g["name"]]}
        assert g["weight_decay"] == 0.01


def test_sgd_reference_defaults() -> None:
    opt = build_optimizer(ThreePart(), OptimConfig())
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (1e-3, 0.9, 1e-4)


def test_no_decay_for_norm_and_bias() -> None:
    opt = build_optimizer(ThreePart(), OptimConfig(no_decay_norm_bias=True, weight_decay=0.05))
    for g in opt.param_groups:
        dims = {p.ndim for p in g["params"]}
        assert g["weight_decay"] == (0.0 if dims == {1} else 0.05)
        assert dims in ({1}, {4})


def test_poly_per_epoch_reference_values() -> None:
    cfg = OptimConfig()  # SDGPA: lr 1e-3, poly 0.9 per epoch, min 1e-6
    opt = build_optimizer(ThreePart(), cfg)
    epochs, ipe = 10, 4
    sched = build_scheduler(opt, cfg, epochs, ipe)
    seen = []
    for _ in range(epochs * ipe):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # constant within an epoch, the poly value of that epoch
    for e in range(epochs):
        values = seen[e * ipe : (e + 1) * ipe]
        assert len(set(values)) == 1
        expected = 1e-6 + (1e-3 - 1e-6) * (1 - e / epochs) ** 0.9
        assert values[0] == pytest.approx(expected, rel=1e-12)
    assert sched.get_last_lr()[0] == pytest.approx(1e-6)  # end == min_lr
    assert all(a > b for a, b in zip(seen[::ipe], seen[ipe::ipe], strict=False))


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_schedule_ends_at_min_lr_per_iter(schedule: str) -> None:
    cfg = OptimConfig(schedule=schedule, step_per="iter", min_lr=1e-7, lr=0.01)
    opt = build_optimizer(ThreePart(), cfg)
    sched = build_scheduler(opt, cfg, epochs=3, iters_per_epoch=5)
    assert sched.get_last_lr()[0] == pytest.approx(0.01)
    for _ in range(15):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(1e-7)
    sched.step()  # past the end stays at the floor
    assert sched.get_last_lr()[0] == pytest.approx(1e-7)


def test_cosine_midpoint() -> None:
    cfg = OptimConfig(schedule="cosine", min_lr=0.0, lr=1.0)
    assert schedule_value(1.0, 5, 10, 0, cfg) == pytest.approx(0.5)


def test_linear_warmup_then_schedule() -> None:
    cfg = OptimConfig(
        lr=0.1, schedule="cosine", step_per="iter", warmup_iters=10, warmup_ratio=0.0, min_lr=0.0
    )
    opt = build_optimizer(ThreePart(), cfg)
    sched = build_scheduler(opt, cfg, epochs=2, iters_per_epoch=15)
    values = []
    for _ in range(31):
        values.append(sched.get_last_lr()[0])
        sched.step()
    for t in range(10):
        assert values[t] == pytest.approx(0.1 * t / 10)  # linear
    assert values[10] == pytest.approx(0.1)  # peak at the end of warm-up
    assert values[20] == pytest.approx(0.05)  # cosine midpoint of the remaining 20
    assert values[30] == pytest.approx(0.0)


def test_warmup_in_epochs_with_per_iter_steps() -> None:
    cfg = OptimConfig(
        lr=1.0, schedule="constant", step_per="iter", warmup_epochs=1, warmup_ratio=0.0
    )
    opt = build_optimizer(ThreePart(), cfg)
    sched = build_scheduler(opt, cfg, epochs=2, iters_per_epoch=4)
    got = []
    for _ in range(6):
        got.append(sched.get_last_lr()[0])
        sched.step()
    assert got == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_frozen_encoder_gets_no_update_then_ramps() -> None:
    torch.manual_seed(0)
    model = ThreePart()
    cfg = OptimConfig(
        optimizer="adamw",
        lr=1e-2,
        weight_decay=0.01,
        schedule="constant",
        step_per="iter",
        freeze_encoder_epochs=2,
        encoder_ramp_epochs=2,
    )
    opt = build_optimizer(model, cfg)
    ipe = 3
    sched = build_scheduler(opt, cfg, epochs=6, iters_per_epoch=ipe)
    enc0 = [p.detach().clone() for p in model.enc.parameters()]
    dec0 = [p.detach().clone() for p in model.dec.parameters()]
    x = torch.randn(2, 3, 8, 8)
    factors = []
    for it in range(6 * ipe):
        factors.append(sched.encoder_factor())
        frozen = it < 2 * ipe
        assert sched.encoder_frozen == frozen
        assert all(p.requires_grad != frozen for p in model.enc.parameters())
        assert (lrs(opt)["encoder"] == 0.0) == frozen
        opt.zero_grad()
        model(x)["logits"].pow(2).mean().backward()
        opt.step()
        sched.step()
        if frozen:
            assert all(torch.equal(a, b) for a, b in zip(model.enc.parameters(), enc0, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(model.dec.parameters(), dec0, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(model.enc.parameters(), enc0, strict=True))
    # ramp over 2 epochs = 6 iterations: (k + 1) / 6, then 1
    ramp = factors[2 * ipe : 4 * ipe]
    assert ramp == pytest.approx([(k + 1) / 6 for k in range(6)])
    assert factors[4 * ipe :] == [1.0] * (2 * ipe)
    assert lrs(opt)["decoder"] == pytest.approx(1e-2)


def test_freeze_without_toggling_requires_grad() -> None:
    model = ThreePart()
    cfg = OptimConfig(freeze_encoder_epochs=1)
    opt = build_optimizer(model, cfg)
    build_scheduler(opt, cfg, 3, 2, toggle_requires_grad=False)
    assert lrs(opt)["encoder"] == 0.0
    assert all(p.requires_grad for p in model.enc.parameters())


def test_scheduler_state_roundtrip() -> None:
    cfg = OptimConfig(step_per="iter")
    opt = build_optimizer(ThreePart(), cfg)
    sched = build_scheduler(opt, cfg, 4, 5)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(ThreePart(), cfg)
    sched2 = build_scheduler(opt2, cfg, 4, 5)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched2.iteration == 7


def test_clip_and_amp() -> None:
    model = ThreePart()
    model(torch.randn(2, 3, 8, 8))["logits"].sum().mul(1000).backward()
    norm = clip_gradients(model.parameters(), OptimConfig(grad_clip=1.0))
    assert norm is not None and norm > 1.0
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert total == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients(model.parameters(), OptimConfig()) is None
    assert amp_dtype(OptimConfig(amp="bf16")) is torch.bfloat16
    assert amp_dtype(OptimConfig()) is None


def test_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        OptimConfig(warmup_epochs=1, warmup_iters=10)
    with pytest.raises(ValidationError):
        OptimConfig(optimizer="adam")
    with pytest.raises(ValidationError):
        OptimConfig(lr=0)
    with pytest.raises(ValidationError):
        OptimConfig(lr_mult={"encoder": -1})
