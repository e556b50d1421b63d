"""Optimiser with per-group learning rates, and the learning-rate schedule.

The trainer calls ``scheduler.step()`` after *every* optimizer step. With ``step_per: epoch``
the learning rate only changes at epoch boundaries (the SDGPA reference steps poly per epoch);
with ``step_per: iter`` it changes every iteration (DAFormer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from shiftlab.config.optim import OptimConfig

GROUPS = ("encoder", "decoder", "head")


def _param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel):
        model = model.module
    if not hasattr(model, "param_groups"):
        raise TypeError(f"{type(model).__name__} has no param_groups() (see docs/interfaces.md)")
    groups: dict[str, list[nn.Parameter]] = model.param_groups()  # type: ignore[operator]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"param_groups() returned unknown groups {sorted(unknown)}")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW with one parameter group per model group (lr = cfg.lr * lr_mult[group]).

    Every group records ``name`` and ``base_lr`` for the scheduler. With
    ``no_decay_norm_bias`` each group is split in two, the 1-d tensors (biases, norm weights)
    getting no weight decay.
    """
    groups: list[dict[str, Any]] = []
    for name, params in _param_groups(model).items():
        params = list(params)
        if not params:
            continue
        base_lr = cfg.lr * getattr(cfg.lr_mult, name)
        if cfg.no_decay_norm_bias:
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            parts = [(decay, cfg.weight_decay), (no_decay, 0.0)]
        else:
            parts = [(params, cfg.weight_decay)]
        for ps, wd in parts:
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "lr": base_lr,
                        "base_lr": base_lr,
                        "name": name,
                        "weight_decay": wd,
                    }
                )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.momentum, cfg.beta2), weight_decay=cfg.weight_decay
    )


def schedule_value(
    base_lr: float, t: float, total: float, warmup: float, cfg: OptimConfig
) -> float:
    """The lr at position ``t`` of ``total`` (any unit), after ``warmup`` units of warm-up.

    Warm-up rises linearly from warmup_ratio * base_lr to base_lr; the main schedule then runs
    over the remaining ``total - warmup`` units and ends at min(min_lr, base_lr) at ``total``.
    """
    if warmup > 0 and t < warmup:
        r = cfg.warmup_ratio
        return base_lr * (r + (1.0 - r) * t / warmup)
    if cfg.schedule == "constant":
        return base_lr
    end = min(cfg.min_lr, base_lr)
    span = total - warmup
    u = 1.0 if span <= 0 else min(max((t - warmup) / span, 0.0), 1.0)
    if cfg.schedule == "poly":
        return end + (base_lr - end) * (1.0 - u) ** cfg.power
    return end + (base_lr - end) * 0.5 * (1.0 + math.cos(math.pi * u))  # cosine


class LrScheduler:
    """Sets every group's lr from the iteration count; freezes and ramps the encoder.

    Encoder: lr factor 0 for ``freeze_encoder_epochs`` (and, with ``toggle_requires_grad``,
    ``requires_grad=False`` so no gradients are computed for it), then a linear ramp to the
    schedule over ``encoder_ramp_epochs``.

    DDP note: DDP only synchronises parameters that required grad when it was built, and by
    default errors on parameters without gradients. With a frozen encoder under DDP either
    wrap the model first and use ``find_unused_parameters=True``, or pass
    ``toggle_requires_grad=False`` (the lr factor 0 alone already prevents any update).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: OptimConfig,
        epochs: int,
        iters_per_epoch: int,
        toggle_requires_grad: bool = True,
    ) -> None:
        if epochs < 1 or iters_per_epoch < 1:
            raise ValueError(
                f"epochs ({epochs}) and iters_per_epoch ({iters_per_epoch}) must be >= 1"
            )
        self.optimizer = optimizer
        self.cfg = cfg
        self.epochs = epochs
        self.iters_per_epoch = iters_per_epoch
        self.toggle_requires_grad = toggle_requires_grad
        self.iteration = 0
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group.setdefault("name", "")
        self._apply()

    # -- positions ---------------------------------------------------------------------------
    def _units(self) -> tuple[float, float, float]:
        """(t, total, warmup) in the schedule's unit (epochs or iterations)."""
        ipe, cfg = self.iters_per_epoch, self.cfg
        if cfg.step_per == "epoch":
            t = float(self.iteration // ipe)
            warmup = cfg.warmup_epochs or cfg.warmup_iters / ipe
            return t, float(self.epochs), warmup
        warmup = cfg.warmup_epochs * ipe if cfg.warmup_epochs else float(cfg.warmup_iters)
        return float(self.iteration), float(self.epochs * ipe), warmup

    def encoder_factor(self) -> float:
        """0 while frozen, then (k + 1) / ramp for the k-th unit after unfreezing, capped at 1."""
        cfg, ipe = self.cfg, self.iters_per_epoch
        if cfg.step_per == "epoch":
            epoch, unit = float(self.iteration // ipe), 1.0
        else:
            epoch, unit = self.iteration / ipe, 1.0 / ipe
        if epoch < cfg.freeze_encoder_epochs:
            return 0.0
        if cfg.encoder_ramp_epochs <= 0:
            return 1.0
        return min(1.0, (epoch - cfg.freeze_encoder_epochs + unit) / cfg.encoder_ramp_epochs)

    @property
    def encoder_frozen(self) -> bool:
        return self.encoder_factor() == 0.0

    # -- stepping ----------------------------------------------------------------------------
    def _apply(self) -> None:
        t, total, warmup = self._units()
        enc = self.encoder_factor()
        for group in self.optimizer.param_groups:
            lr = schedule_value(group["base_lr"], t, total, warmup, self.cfg)
            if group["name"] == "encoder":
                lr *= enc
                if self.toggle_requires_grad:
                    for p in group["params"]:
                        p.requires_grad_(enc > 0.0)
            group["lr"] = lr

    def step(self) -> None:
        """Advance one iteration (call after every optimizer step)."""
        self.iteration += 1
        self._apply()

    def lrs(self) -> dict[str, float]:
        """Current lr per group name (for logging)."""
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self._apply()


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    epochs: int,
    iters_per_epoch: int,
    toggle_requires_grad: bool = True,
) -> LrScheduler:
    return LrScheduler(optimizer, cfg, epochs, iters_per_epoch, toggle_requires_grad)


def amp_dtype(cfg: OptimConfig) -> torch.dtype | None:
    """The autocast dtype (None: full precision). fp16 also needs a GradScaler."""
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def clip_gradients(params: Iterable[nn.Parameter], cfg: OptimConfig) -> float | None:
    """Clip the global grad norm to cfg.grad_clip; returns the norm before clipping."""
    if cfg.grad_clip is None:
        return None
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, cfg.grad_clip))
