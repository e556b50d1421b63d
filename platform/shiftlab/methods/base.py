"""The Method interface every adaptation recipe implements, and shared helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.config.augment import IMAGENET_MEAN, IMAGENET_STD
from shiftlab.config.base import MethodSection
from shiftlab.config.method import RareClassSamplingConfig
from shiftlab.methods.losses import cross_entropy
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import derive_seed

Batch = Mapping[str, torch.Tensor]
Output = dict[str, Any]


class Method:
    """A training recipe: which views a batch holds, and the loss on a batch.

    The trainer calls, per stage in ``stages()``: build data with ``views(stage)``; ``setup``
    once with the (device-placed, possibly DDP-wrapped) model; then per iteration
    ``loss(model, batch, step)`` -> backward -> optimizer step -> ``after_step(model)``.
    ``pair_views``, when not None, asks the trainer to draw two *distinct* views per sample from
    that list and put them in ``image`` / ``image_b`` (instead of the fixed names of ``views``).
    ``rare_class_sampling``, when not None, asks the trainer to draw source samples by
    DAFormer's rare-class sampling (``train.sampling``) instead of a shuffled pass.
    """

    name = "method"
    pair_views: list[str] | None = None
    rare_class_sampling: RareClassSamplingConfig | None = None

    def __init__(
        self,
        cfg: MethodSection,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        seed: int = 0,
        input_stats: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
    ) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.seed = seed
        # (mean, std) the model inputs were normalised with: methods that change pixels (DACS's
        # strong augmentation) undo and redo it. (0, 1) when train.augment.normalize is off.
        self.input_stats = (tuple(input_stats[0]), tuple(input_stats[1]))

    # -- data ------------------------------------------------------------------------------
    def stages(self) -> list[str]:
        """The method's stages in order (its config declares them); a stage the config gives
        no epochs is skipped (SDGPA stage 2 alone resumes from stage-1 weights)."""
        return [stage for stage, n in self.cfg.stage_epochs(1).items() if n > 0]

    def stage_epochs(self, stage: str, default: int) -> int:
        """Epochs of ``stage``; ``default`` (train.epochs) unless the method sets its own."""
        self._check_stage(stage)
        return int(self.cfg.stage_epochs(default)[stage])

    def views(self, stage: str) -> dict[str, str]:
        raise NotImplementedError

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages():
            raise ValueError(f"{self.name}: unknown stage {stage!r} (stages: {self.stages()})")

    # -- training --------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Called once the model is on its device (and wrapped for DDP, if it is)."""

    def loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (EMA teachers update here)."""

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")

    # -- helpers ---------------------------------------------------------------------------
    def generator(self, step: int, purpose: str) -> torch.Generator:
        """A CPU generator for the random choices of one step (mask classes, MMD pixels)."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.name, purpose, step))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


def require(batch: Batch, key: str, method: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"{method}: the batch has no {key!r} (keys: {sorted(batch)})")
    return batch[key]


def forward_pair(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[Output, Output]:
    """One forward pass on ``cat([a, b])`` (one DDP forward, one BatchNorm batch of pairs),
    split back into the outputs of ``a`` and ``b``."""
    n = a.shape[0]
    out = model(torch.cat([a, b], dim=0))
    return split_output(out, n)


def paired_ce(
    model: nn.Module, batch: Batch, method: str, ignore_index: int
) -> tuple[Output, Output, torch.Tensor, dict[str, float]]:
    """CE on both views of a pixel-aligned pair sharing one label (SDGPA, feature alignment).

    Returns the two outputs (for extra terms), CE(a) + CE(b), and the logged parts.
    """
    label = require(batch, "label", method)
    out_a, out_b = forward_pair(
        model, require(batch, "image", method), require(batch, "image_b", method)
    )
    ce_a = cross_entropy(out_a["logits"], label, None, ignore_index)
    ce_b = cross_entropy(out_b["logits"], label, None, ignore_index)
    return out_a, out_b, ce_a + ce_b, {"ce_a": ce_a.item(), "ce_b": ce_b.item()}


def split_output(out: Output, n: int) -> tuple[Output, Output]:
    first: Output = {}
    second: Output = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            first[key], second[key] = value[:n], value[n:]
        elif isinstance(value, (list, tuple)):
            first[key] = [v[:n] for v in value]
            second[key] = [v[n:] for v in value]
        else:
            first[key] = second[key] = value
    return first, second


def check_layers(layers: Sequence[int], features: Sequence[torch.Tensor], key: str) -> None:
    """Feature indices must exist in the model's ``features`` list."""
    n = len(features)
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(
            f"{key}: feature indices {bad} out of range; the model returns {n} feature stages "
            f"(valid: 0..{n - 1} or -{n}..-1)"
        )


def class_weight_vector(
    weights: Mapping[str, float], class_names: Sequence[str] | None, key: str
) -> torch.Tensor | None:
    """A (K,) tensor from ``{class name: weight}``; classes not named get 1.0.

    Names match ignoring case and the difference between spaces, '_' and '-'.
    """
    if not weights:
        return None
    if class_names is None:
        raise ConfigError(f"{key}: class weights by name need the label space's class names")
    index = {class_name_key(n): i for i, n in enumerate(class_names)}
    vec = torch.ones(len(class_names))
    for name, w in weights.items():
        if class_name_key(name) not in index:
            raise ConfigError(f"{key}: unknown class {name!r} (classes: {', '.join(class_names)})")
        vec[index[class_name_key(name)]] = float(w)
    return vec


def class_name_key(name: str) -> str:
    """A class name as configs may write it: case, spaces, '_' and '-' do not matter."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())
