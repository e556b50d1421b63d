"""Tiny datasets and configs for the training tests (aligned appearances, shiftlab dirs), and
the demo experiment shrunk for sweep tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shiftlab.config.loader import deep_merge, validate_dict


def tiny_demo_sweep(out: Path | str) -> list[str]:
    """Overrides that shrink experiments/demo.yaml to seconds per sweep trial."""
    return [
        f"output_dir={out}",
        "data.source.layouts=4",
        "model.backbone=test_resnet",  # timm's 0.4M-parameter ResNet: checkpoints of MBs
        "data.source.val_layouts=4",  # val and test sets take the source's counts
        "data.source.test_layouts=4",
        "method.stage1_epochs=1",
        "method.stage2_epochs=1",
        "train.batch_size=2",
        "train.cpus_per_worker=0.99",
        "train.torch_threads=1",
        "evaluate.overlays=0",
    ]


# Cityscapes labelIds: road 7, sidewalk 8, sky 23, car 26 (train ids 0, 1, 10, 13).
LABEL_IDS = np.array([7, 8, 23, 26], dtype=np.uint8)
TINTS = {
    "noon": (1.0, 1.0, 1.0),
    "night": (0.35, 0.35, 0.5),
    "fog": (0.8, 0.8, 0.8),
    "source": (1.0, 1.0, 1.0),
    "intermediate": (0.7, 0.7, 0.8),
    "target": (0.4, 0.4, 0.55),
}
COLOURS = np.array([[128, 64, 128], [244, 35, 232], [70, 130, 180], [0, 0, 142]], dtype=np.float32)


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Class index map: sky on top, road below, a sidewalk band and a car box."""
    idx = np.zeros((h, w), dtype=np.int64)
    horizon = int(rng.integers(h // 4, h // 2))
    idx[:horizon] = 2
    walk = int(rng.integers(horizon, h - 4))
    idx[walk : walk + 3] = 1
    x = int(rng.integers(0, w - w // 4))
    idx[horizon : horizon + h // 4, x : x + w // 4] = 3
    return idx


def _render(
    idx: np.ndarray, tint: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    img = COLOURS[idx] * np.array(tint, dtype=np.float32)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_aligned(
    root: Path, splits: dict[str, int], appearances: list[str], h: int = 32, w: int = 64
) -> Path:
    """``images/<appearance>/<split>/<id>.png`` + ``labels/<split>/<id>.png`` (labelIds)."""
    for split, n in splits.items():
        for i in range(n):
            rng = np.random.default_rng([sum(map(ord, split)), i])  # stable across processes
            idx = _scene(rng, h, w)
            sid = f"{split}_{i:03d}"
            _save(root / "labels" / split / f"{sid}.png", LABEL_IDS[idx])
            for app in appearances:
                _save(root / "images" / app / split / f"{sid}.png", _render(idx, TINTS[app], rng))
    return root


def make_shiftlab_dir(root: Path, aligned_root: Path, split: str = "train") -> Path:
    """A generated-style set for the aligned train ids: source/intermediate/target views."""
    for label in sorted((aligned_root / "labels" / split).glob("*.png")):
        ids = np.asarray(Image.open(label))
        idx = np.searchsorted(LABEL_IDS, ids)
        rng = np.random.default_rng(len(label.stem))
        _save(root / "labels" / label.name, ids)
        for view in ("source", "intermediate", "target"):
            _save(root / view / label.name, _render(idx, TINTS[view], rng))
    (root / "dataset.json").write_text(
        json.dumps({"label_space": "cityscapes", "cache_key": "hand-built"})
    )
    return root


# A tiny random SegFormer (MiT "tiny" encoder, DAFormer head) for the DAFormer-family tests.
TINY_SEGFORMER: dict[str, Any] = {
    "name": "segformer",
    "variant": "tiny",
    "head": "daformer",
    "pretrained": "none",
}


def experiment(
    tmp: Path,
    data_root: Path,
    name: str,
    method: dict[str, Any],
    model: dict[str, Any] | None = None,
    **sections: Any,
):
    """A validated tiny experiment: 2 DDP workers, a tiny-ResNet DeepLabV3+ with a small decoder
    (or ``model``, replacing it whole)."""
    base: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "output_dir": str(tmp / "runs"),
        "data": {
            "source": {
                "format": "aligned",
                "root": str(data_root),
                "split": "train",
                "condition": "noon",
            },
            "val": [
                {
                    "format": "aligned",
                    "root": str(data_root),
                    "split": "val",
                    "condition": "night",
                    "name": "night",
                }
            ],
        },
        "model": {
            "name": "deeplabv3plus",
            "backbone": "test_resnet",  # timm's 0.4M-parameter ResNet: checkpoints of MBs, not 100s
            "decoder_channels": 16,
            "pretrained": "none",
            "low_level_channels": 8,
            "aspp_rates": [1, 2],
            "output_stride": 16,
        },
        "method": method,
        "optim": {"lr": 0.01},
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "iters_per_epoch": 2,
            "num_workers": 2,
            "cpus_per_worker": 0.49,
            "max_failures": 2,
            "keep_checkpoints": 2,
        },
    }
    if model is not None:
        base["model"] = model
    return validate_dict(deep_merge(base, sections), f"test experiment {name}")
