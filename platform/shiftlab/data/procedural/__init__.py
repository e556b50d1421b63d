"""Procedural street scenes: the platform's embedded default data.

A layout (road, sidewalks, buildings, vegetation, vehicles, people, poles, signs, ...) is drawn
from ``rng_for(seed, "layout", index)`` in world coordinates, rasterised once into Cityscapes
labelIds plus per-pixel geometry, and shaded under several appearances that stay pixel-aligned
with that one label map.
"""

from __future__ import annotations

from .appearance import APPEARANCES
from .render import RenderedLayout, render_layout, render_scene
from .writer import sample_id, write_procedural

__all__ = [
    "APPEARANCES",
    "RenderedLayout",
    "render_layout",
    "render_scene",
    "sample_id",
    "write_procedural",
]
