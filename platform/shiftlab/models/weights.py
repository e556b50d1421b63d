"""Loading local backbone weights (nothing is ever downloaded)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab.utils.errors import ConfigError

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# File names looked for, in order, inside a timm / Hugging Face model directory.
_DIR_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
# Wrappers training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# The value of a `pretrained` setting that asks for random initialisation, explicitly.
RANDOM_INIT = "none"


def pretrained_weights(value: str | None) -> str | None:
    """The local weights path a ``pretrained`` setting names, or None for ``none`` (random init)."""
    if value is None or value.strip().lower() == RANDOM_INIT:
        return None
    return value


def check_pretrained(model: Any) -> None:
    """Before any work: the weights a model config names exist (``none`` asks for none)."""
    path = pretrained_weights(getattr(model, "pretrained", None))
    if path is not None and not Path(path).expanduser().exists():
        raise ConfigError(f"model.pretrained: {path} does not exist")


def resolve_weight_file(path: str) -> Path:
    """The state-dict file that ``path`` (a file or a model directory) names."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in _DIR_CANDIDATES:
            if (p / name).is_file():
                return p / name
        files = sorted(f for f in p.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
        if len(files) == 1:
            return files[0]
        raise ConfigError(
            f"model.pretrained: directory {p} holds {len(files)} weight files "
            f"({', '.join(f.name for f in files) or 'none'}); name one file instead"
        )
    raise ConfigError(f"model.pretrained: {p} does not exist")


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a .safetensors or torch pickle file."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file), device="cpu")
    else:
        # weights_only: a weight file must never be able to run code on load.
        state = torch.load(file, map_location="cpu", weights_only=True)
    while isinstance(state, dict):
        inner: Any = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained: {file} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: str) -> Path:
    """Load ``path`` into ``backbone``; every backbone tensor must be covered.

    Classifier weights of the full network (``fc.*`` etc.) are expected extras and ignored.
    Returns the file actually read.
    """
    file = resolve_weight_file(path)
    state = read_state_dict(file)
    own = backbone.state_dict()
    for prefix in _PREFIXES:
        # Strip a wrapper prefix only when that makes the names match the backbone's.
        if not (own.keys() & state.keys()) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(
            f"model.pretrained: {file} lacks {len(missing)} of the backbone's {len(own)} tensors "
            f"(first: {', '.join(missing[:5])}); is it a checkpoint of a different backbone?"
        )
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"model.pretrained: {file}: tensor {k} has shape {tuple(state[k].shape)}, "
            f"the backbone needs {tuple(own[k].shape)}"
        )
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    unused = sorted(set(state) - set(own))
    if unused:
        log.info(
            "pretrained %s: ignored %d tensors not in the backbone (e.g. %s)",
            file,
            len(unused),
            unused[0],
        )
    return file
