"""Lattice value noise evaluated at continuous coordinates.

Noise is a function of world/normalised coordinates, never of the pixel grid, so a layout
rendered at any resolution shows the same texture (and the same noisy tree outlines, which
matter for the labels). The lattice values come from an integer hash, not from a stored table,
so there is no state and no dependency on the order of calls.
"""

from __future__ import annotations

import numpy as np


def _mix(h: np.ndarray) -> np.ndarray:
    """32-bit avalanche (uint32 arrays wrap on overflow by definition)."""
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h


def _to_u32(i: np.ndarray) -> np.ndarray:
    # Two's-complement reinterpretation: negative lattice indices hash like any other.
    return np.asarray(i).astype(np.int64).astype(np.int32).view(np.uint32)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A float in [0, 1) for each integer lattice point."""
    h = _to_u32(ix) * np.uint32(0x8DA6B343) ^ _to_u32(iy) * np.uint32(0xD8163841)
    h ^= np.uint32(seed & 0xFFFFFFFF)
    return (_mix(h) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] with features about one unit apart."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    # Smoothstep weights hide the lattice (no visible grid creases).
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    hx0 = _to_u32(x0) * np.uint32(0x8DA6B343)
    hx1 = hx0 + np.uint32(0x8DA6B343)
    hy0 = _to_u32(y0) * np.uint32(0xD8163841) ^ np.uint32(seed & 0xFFFFFFFF)
    hy1 = (_to_u32(y0) + np.uint32(1)) * np.uint32(0xD8163841) ^ np.uint32(seed & 0xFFFFFFFF)
    scale = np.float32(1.0 / 16777216.0)
    v00 = (_mix(hx0 ^ hy0) >> np.uint32(8)).astype(np.float32) * scale
    v10 = (_mix(hx1 ^ hy0) >> np.uint32(8)).astype(np.float32) * scale
    v01 = (_mix(hx0 ^ hy1) >> np.uint32(8)).astype(np.float32) * scale
    v11 = (_mix(hx1 ^ hy1) >> np.uint32(8)).astype(np.float32) * scale
    top = v00 + (v10 - v00) * sx
    bottom = v01 + (v11 - v01) * sx
    return top + (bottom - top) * sy


def fbm(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    octaves: int = 4,
    footprint: np.ndarray | float | None = None,
) -> np.ndarray:
    """Fractal noise in about [0, 1] (mean 0.5).

    ``footprint`` is the size of one pixel in the units of ``x``/``y``: octaves finer than a
    pixel are faded out instead of aliasing into salt-and-pepper noise far down the road.
    """
    total = np.zeros(np.shape(x), dtype=np.float32)
    norm = 0.0
    amp = 1.0
    freq = 1.0
    for octave in range(octaves):
        n = value_noise(np.asarray(x) * freq, np.asarray(y) * freq, seed + 7919 * octave) - 0.5
        if footprint is not None:
            n = n * np.exp(-((np.asarray(footprint) * freq) ** 2)).astype(np.float32)
        total += amp * n
        norm += amp
        amp *= 0.5
        freq *= 2.0
    return 0.5 + total / norm
