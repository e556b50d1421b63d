"""Checkpoint folders: what training saves, and what inference loads on any machine.

Two kinds, both readable without running code from the files:

- a **training checkpoint** (one per epoch, kept by Ray Train): ``state.pt`` with the model,
  optimizer, scheduler, method state (e.g. an EMA teacher), RNG and counters, loadable with
  ``torch.load(weights_only=True)``, plus the resolved ``config.yaml``. Frozen weights that
  the model's ``frozen_prefixes`` name (a QueryDiff ViT) are left out: they come back from
  the model's own pretrained file when the run resumes.
- a **model export** (``best/``, ``last/``), self-contained like a ``save_pretrained``
  folder: ``model.safetensors`` (every weight), ``config.yaml`` (resolved),
  ``label_space.yaml`` (the full label space, user spaces included) and ``meta.json``
  (normalisation, epoch, metrics). `load_model` rebuilds the network from these four files
  only: it never opens the original backbone weights or any dataset.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from shiftlab.config import load_experiment, save_resolved
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.label_spaces import LabelSpace, get_label_space
from shiftlab.data.transforms import Normalization
from shiftlab.models.registry import create_model
from shiftlab.models.weights import RANDOM_INIT
from shiftlab.utils.atomic import atomic_path, make_temp_dir, write_json, write_text
from shiftlab.utils.errors import DataError
from shiftlab.utils.version import __version__

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
LABEL_SPACE_FILE = "label_space.yaml"
META_FILE = "meta.json"
EXPORT_FORMAT = "shiftlab-model/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# -- training checkpoints -------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()  # ("MT19937", keys, pos, has_gauss, gauss)
    python: Any = random.getstate()  # (version, internal state, gauss)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": [int(x) for x in python[1]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, without the frozen weights it declares."""
    bare = unwrap(model)
    frozen = tuple(getattr(bare, "frozen_prefixes", ()))
    return {
        k: v.detach().cpu()
        for k, v in bare.state_dict().items()
        if not (frozen and k.startswith(frozen))
    }


def save_training_state(
    directory: str | Path, cfg: ExperimentConfig, state: dict[str, Any]
) -> Path:
    """Write ``state.pt`` + ``config.yaml`` into ``directory``, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / STATE_FILE) as tmp:
        torch.save(state, tmp)
    save_resolved(cfg, directory / CONFIG_FILE)
    return directory


def load_training_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise DataError(f"{path}: not a shiftlab training checkpoint (no {STATE_FILE})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the checkpoint file is empty (a copy or a write was cut short)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: cannot be loaded safely as a checkpoint ({exc})") from None


def restore_model(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a training checkpoint's weights; only declared frozen weights may be absent."""
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise DataError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


# -- model exports --------------------------------------------------------------------------
def export_model(
    directory: str | Path,
    cfg: ExperimentConfig,
    model: nn.Module,
    label_space: LabelSpace,
    info: dict[str, Any],
) -> Path:
    """Write a self-contained model folder, replacing any previous one as a whole."""
    from safetensors.torch import save_model

    directory = Path(directory)
    tmp = make_temp_dir(directory)
    try:
        save_model(unwrap(model), str(tmp / WEIGHTS_FILE))
        save_resolved(cfg, tmp / CONFIG_FILE)
        write_text(tmp / LABEL_SPACE_FILE, yaml.safe_dump(label_space.to_dict(), sort_keys=False))
        meta = {
            "format": EXPORT_FORMAT,
            "shiftlab_version": __version__,
            "model": cfg.model.name,
            "label_space": label_space.name,
            "num_classes": label_space.num_classes,
            "normalization": Normalization.from_config(cfg).to_dict(),
            **info,
        }
        write_json(tmp / META_FILE, meta)
        _replace_folder(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_folder(new: Path, directory: Path) -> None:
    """Swap ``new`` in for ``directory`` by renames: a reader sees the old or the new folder."""
    old = directory.with_name(f".{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    new.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DataError(
            f"{directory}: not a shiftlab model folder (no {META_FILE}; expected best/ or last/)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


@dataclass
class LoadedModel:
    """A network ready for inference and what it needs to be used correctly."""

    network: nn.Module  # eval mode, on `device`
    config: ExperimentConfig
    label_space: LabelSpace
    normalization: Normalization
    meta: dict[str, Any]
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def load_model(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Rebuild the network of a model folder (``best/``, ``last/``) from its own files.

    ``overrides`` (``key=value``) change the saved config first, e.g. evaluation settings.
    """
    directory = Path(path)
    meta = read_meta(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE, LABEL_SPACE_FILE):
        file = directory / name
        if not file.is_file() or file.stat().st_size == 0:
            raise DataError(f"{file}: missing or empty; the model folder is incomplete")
    cfg = load_experiment(directory / CONFIG_FILE, list(overrides))
    space = get_label_space(str((directory / LABEL_SPACE_FILE).resolve()))
    # The export holds every weight: the backbone's original file is never needed.
    build = cfg.model.model_copy(update={"pretrained": RANDOM_INIT})
    network = create_model(build, space.num_classes)
    _load_weights(network, directory / WEIGHTS_FILE)
    return LoadedModel(
        network=network.to(device).eval(),
        config=cfg,
        label_space=space,
        normalization=Normalization.from_dict(meta["normalization"]),
        meta=meta,
        path=directory,
    )


def _load_weights(network: nn.Module, file: Path) -> None:
    from safetensors.torch import load_model as load_safetensors

    try:
        missing, unexpected = load_safetensors(network, str(file), strict=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise DataError(f"{file}: cannot be read as model weights ({exc})") from None
    if missing or unexpected:
        raise DataError(
            f"{file}: weights do not fit the model of its config.yaml: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def init_weights_from(
    network: nn.Module, path: str | Path, label_space: LabelSpace, model: str
) -> None:
    """Start training from an exported model's weights (fine-tuning; ``train.init_from``)."""
    directory = Path(path)
    meta = read_meta(directory)
    own = get_label_space(str((directory / LABEL_SPACE_FILE).resolve()))
    if own.class_names != label_space.class_names:
        raise DataError(
            f"train.init_from: {directory} predicts the classes of {own.name!r}, "
            f"this experiment those of {label_space.name!r}"
        )
    if meta.get("model") != model:
        raise DataError(
            f"train.init_from: {directory} holds a {meta.get('model')!r} model, not {model!r}"
        )
    _load_weights(network, directory / WEIGHTS_FILE)
