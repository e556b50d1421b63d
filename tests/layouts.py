"""Builders of tiny datasets in each real on-disk layout (used by several test modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Cityscapes labelIds of a few classes (road 7 -> 0, sidewalk 8 -> 1, car 26 -> 13, sky 23 -> 10)
CS_IDS = np.array([7, 8, 26, 23, 0], dtype=np.uint8)
FALCON_VALUES = np.array([100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000], dtype=np.uint16)


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:  # a "P" image whose indices are the label ids, as GTA5 ships them
        img = Image.frombytes(
            "P", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes()
        )
        img.putpalette(np.random.default_rng(0).integers(0, 255, 768).tolist())
    else:
        img = Image.fromarray(array)
    img.save(path)
    return path


def rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(rng: np.random.Generator, h: int, w: int, values: np.ndarray) -> np.ndarray:
    return values[rng.integers(0, len(values), (h, w))]


def make_cityscapes(
    root: Path, split: str = "val", h: int = 8, w: int = 16, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for city, ids in {
        "aachen": ["000000_000019", "000001_000019"],
        "bremen": ["000002_000019"],
    }.items():
        for frame in ids:
            sid = f"{city}_{frame}"
            save(root / "leftImg8bit" / split / city / f"{sid}_leftImg8bit.png", rgb(rng, h, w))
            lab = labels(rng, h, w, CS_IDS)
            save(root / "gtFine" / split / city / f"{sid}_gtFine_labelIds.png", lab)
            out[sid] = lab
    return out


def make_acdc(
    root: Path, split: str = "val", h: int = 8, w: int = 16, seed: int = 1
) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for cond, seqs in {"night": {"GOPR0351": 2}, "fog": {"GOPR0475": 1}}.items():
        for seq, n in seqs.items():
            for f in range(n):
                sid = f"{seq}_frame_{41 + f:06d}"
                save(root / "rgb_anon" / cond / split / seq / f"{sid}_rgb_anon.png", rgb(rng, h, w))
                lab = labels(rng, h, w, CS_IDS)
                save(root / "gt" / cond / split / seq / f"{sid}_gt_labelIds.png", lab)
                out.setdefault(cond, {})[sid] = lab
    return out


def make_gta5(
    root: Path, n: int = 4, h: int = 8, w: int = 16, seed: int = 2
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(1, n + 1):
        name = f"{i:05d}"
        save(root / "images" / f"{name}.png", rgb(rng, h, w))
        lab = labels(rng, h, w, CS_IDS)
        save(root / "labels" / f"{name}.png", lab, palette=True)  # GTA5 labels are palette PNGs
        out[name] = lab
    return out


def make_falcon(
    root: Path, split: str = "train", n: int = 3, h: int = 6, w: int = 10, seed: int = 3
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        name = f"ww{i:07d}"
        save(root / split / "Color_Images" / f"{name}.png", rgb(rng, h, w))
        lab = labels(rng, h, w, FALCON_VALUES)
        save(root / split / "Segmentation" / f"{name}.png", lab)  # uint16 PNG
        out[name] = lab
    return out
