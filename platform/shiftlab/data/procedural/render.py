"""Render one layout: rasterise once, shade once per appearance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import rng_for

from .appearance import APPEARANCES, RENDERERS
from .layout import sample_layout
from .raster import rasterize

MIN_SIZE = 32


@dataclass
class RenderedLayout:
    label: np.ndarray  # (H, W) uint8 Cityscapes labelIds
    images: dict[str, np.ndarray]  # appearance -> (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres along the view axis; sky = 1e4


def check_appearances(appearances: Sequence[str]) -> list[str]:
    names = [str(a).strip() for a in appearances]
    unknown = [a for a in names if a not in RENDERERS]
    if unknown:
        raise ConfigError(
            f"unknown procedural appearance(s) {', '.join(map(repr, unknown))}; "
            f"valid appearances: {', '.join(APPEARANCES)}"
        )
    if not names:
        raise ConfigError(
            f"no procedural appearance given; valid appearances: {', '.join(APPEARANCES)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"procedural appearances are repeated: {names}")
    return names


def check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"procedural size must be (height, width), got {size!r}") from exc
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ConfigError(f"procedural size must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    return h, w


def render_scene(
    layout_index: int, seed: int, size: tuple[int, int], appearances: Sequence[str]
) -> RenderedLayout:
    names = check_appearances(appearances)
    h, w = check_size(size)
    scene = rasterize(sample_layout(int(layout_index), int(seed)), (h, w))
    images = {}
    for name in names:
        # Each appearance has its own stream, so subsets of appearances give the same pixels.
        rng = rng_for(seed, "appearance", layout_index, name)
        images[name] = RENDERERS[name](scene, rng)
    return RenderedLayout(scene.label.copy(), images, scene.depth.copy())


def render_layout(
    layout_index: int, seed: int, size: tuple[int, int], appearances: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cityscapes labelIds (H, W) uint8 and {appearance: (H, W, 3) uint8 RGB}, pixel-aligned."""
    out = render_scene(layout_index, seed, size, appearances)
    return out.label, out.images
