"""Checkpoint directories: ``state.pt`` + ``config.yaml``; loadable without pickled code.

``state.pt`` holds only tensors, numbers, strings and containers, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.
Keys: ``model`` (state dict without DDP's ``module.`` prefix), and for training checkpoints
``optimizer``, ``scheduler``, ``method``, ``epoch`` (epochs completed overall), ``stage``,
``stage_epoch``, ``rng``, ``metrics``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.config import load_experiment, save_resolved
from shiftlab.utils.atomic import atomic_path
from shiftlab.utils.errors import DataError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": [int(x) for x in random.getstate()[1]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def save_checkpoint(directory: str | Path, cfg, state: dict[str, Any]) -> Path:
    """Write a checkpoint directory; each file goes through a temporary name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state["model"] = {k: v.detach().cpu() for k, v in state["model"].items()}
    with atomic_path(directory / STATE_FILE) as tmp:
        torch.save(state, tmp)
    save_resolved(cfg, directory / CONFIG_FILE)
    return directory


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise DataError(f"{path}: not a shiftlab checkpoint (no {STATE_FILE})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: cannot be loaded safely as a checkpoint ({exc})") from None


def load_config(directory: str | Path):
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{path}: checkpoint has no {CONFIG_FILE}")
    return load_experiment(path)


def load_for_inference(directory: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | torch.device = "cpu"):
    """(model in eval mode, its experiment config) from a checkpoint directory."""
    from shiftlab.data.label_spaces import get_label_space
    from shiftlab.models import create_model

    cfg = load_experiment(Path(directory) / CONFIG_FILE, list(overrides))
    state = load_state(directory)
    space = get_label_space(label_space_name(cfg))
    model = create_model(cfg.model, space.num_classes)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise DataError(
            f"{directory}: checkpoint does not fit model {cfg.model.name!r}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.to(device).eval(), cfg


def label_space_name(cfg) -> str:
    """The label space of an experiment: its source dataset's (explicit or the format default)."""
    from shiftlab.data.formats import READERS

    src = cfg.data.source
    if src.label_space:
        return src.label_space
    fmt = "aligned" if src.format == "procedural" else src.format
    return READERS[fmt].default_label_space
