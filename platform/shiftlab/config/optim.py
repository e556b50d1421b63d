"""Optimiser, learning-rate schedule, gradient clipping and mixed precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shiftlab.config.base import Section


class LrMult(Section):
    """Per-group multipliers of ``lr`` (groups come from ``model.param_groups()``).

    Off-road recipe (encoder 3e-5 / decoder 1e-4 / head 3e-4): lr 1e-4 with
    encoder 0.3, decoder 1, head 3. DAFormer: lr 6e-5, head 10.
    """

    encoder: float = Field(default=1.0, ge=0.0, le=1000.0)
    decoder: float = Field(default=1.0, ge=0.0, le=1000.0)
    head: float = Field(default=1.0, ge=0.0, le=1000.0)


class OptimConfig(Section):
    """Defaults are the SDGPA reference: SGD 0.9, wd 1e-4, lr 1e-3, poly 0.9 per epoch, min 1e-6."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # SGD momentum / AdamW beta1
    beta2: float = Field(default=0.999, gt=0.0, lt=1.0)  # AdamW only
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    # Exclude biases and normalisation weights from weight decay (DAFormer's norm decay_mult 0).
    no_decay_norm_bias: bool = False
    lr_mult: LrMult = Field(default_factory=LrMult)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    power: float = Field(default=0.9, gt=0.0, le=10.0)
    # The lr every group reaches at the end of training (capped at the group's own lr).
    min_lr: float = Field(default=1e-6, ge=0.0)
    # Linear warm-up from warmup_ratio * lr to lr; give it in epochs or in iterations.
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    warmup_iters: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=1e-6, ge=0.0, le=1.0)
    # Where the schedule advances: at epoch boundaries (SDGPA) or every iteration (DAFormer).
    step_per: Literal["epoch", "iter"] = "epoch"
    # Encoder lr is 0 (and its parameters frozen) for this many epochs, then ramps linearly to
    # the schedule over encoder_ramp_epochs (off-road recipe: 5 and 3).
    freeze_encoder_epochs: float = Field(default=0.0, ge=0.0)
    encoder_ramp_epochs: float = Field(default=0.0, ge=0.0)
    grad_clip: float | None = Field(default=None, gt=0.0)  # max global grad norm
    amp: Literal["none", "bf16", "fp16"] = "none"

    @model_validator(mode="after")
    def _one_warmup(self) -> OptimConfig:
        if self.warmup_epochs > 0 and self.warmup_iters > 0:
            raise ValueError("set warmup_epochs or warmup_iters, not both")
        return self
