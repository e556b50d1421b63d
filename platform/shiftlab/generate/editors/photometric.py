"""A cheap, seeded CPU editor of weather and lighting: the demo's stand-in for InstructPix2Pix.

Rain and snow particles come from albumentations 2 (`RandomRain`, `RandomSnow`) seeded per
image with `set_random_seed`; night, fog, sunset and game are written here because the library
versions either do not exist or are too slow (`RandomFog` takes ~130 ms on 256x512). Each
effect draws its random parameters from ``np.random.default_rng(seed)`` of its own image, so
the result depends on (image, effect, strength, seed) only. `strength` blends the effect with
the input (0 = unchanged, 1 = full effect).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from shiftlab.config.generate import PhotometricConfig
from shiftlab.generate.editors.base import check_inputs
from shiftlab.utils.errors import ConfigError

# Rec. 601 luma weights, RGB order.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ _LUMA


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled smoothly to h x w."""
    grid = rng.random(cells, dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _night(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark, blue, high gamma, with light sources glowing (lamps and windows stay bright)."""
    h, w = x.shape[:2]
    gamma = rng.uniform(1.8, 2.4)
    gain = rng.uniform(0.35, 0.5)
    tint = np.array([0.72, 0.82, 1.12], dtype=np.float32) * rng.uniform(0.95, 1.05, 3).astype(
        np.float32
    )
    out = np.power(x, gamma, dtype=np.float32) * (gain * tint)
    # Bright spots of the day image become lights: a blurred warm halo around them.
    bright = np.clip((_luma(x) - rng.uniform(0.7, 0.8)) * 4.0, 0.0, 1.0)
    sigma = max(1.0, 0.01 * max(h, w))
    glow = cv2.GaussianBlur(bright, (0, 0), sigma)
    warm = np.array([1.0, 0.8, 0.55], dtype=np.float32)
    out += glow[..., None] * warm * rng.uniform(0.25, 0.4)
    return out


def _fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Haze: blend toward a grey airlight, thicker higher up (farther away) and patchy."""
    h, w = x.shape[:2]
    airlight = np.float32(rng.uniform(0.75, 0.9)) * np.array([0.98, 1.0, 1.02], dtype=np.float32)
    depth = np.linspace(1.0, 0.35, h, dtype=np.float32)[:, None]  # top of the frame is far
    patches = _smooth_noise(rng, h, w, (3, 6))
    density = rng.uniform(1.2, 2.0) * depth * (0.75 + 0.5 * patches)
    transmission = np.exp(-density)[..., None]
    return x * transmission + airlight * (1.0 - transmission)


def _albu(transform_factory: Callable[[], object], x: np.ndarray, seed: int) -> np.ndarray:
    transform = transform_factory()
    transform.set_random_seed(seed)  # type: ignore[attr-defined]
    u8 = (x * 255.0 + 0.5).astype(np.uint8)
    return transform(image=u8)["image"].astype(np.float32) / 255.0  # type: ignore[operator]


def _rain(x: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Overcast, desaturated and darker, with slanted streaks (albumentations RandomRain)."""
    import albumentations as A

    grey = _luma(x)[..., None]
    wet = (
        (0.6 * x + 0.4 * grey)
        * rng.uniform(0.7, 0.85)
        * np.array([0.95, 0.98, 1.04], dtype=np.float32)
    )
    kind = ["drizzle", "heavy", "torrential"][int(rng.integers(0, 3))]
    return _albu(
        lambda: A.RandomRain(
            slant_range=(-12, 12),
            drop_width=1,
            blur_value=3,
            brightness_coefficient=0.9,
            rain_type=kind,
            p=1.0,
        ),
        np.clip(wet, 0.0, 1.0),
        seed,
    )


def _snow(x: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Snow cover on bright areas (albumentations RandomSnow), a cold tint and falling flakes."""
    import albumentations as A

    h, w = x.shape[:2]
    covered = _albu(
        lambda: A.RandomSnow(
            snow_point_range=(0.2, 0.4), brightness_coeff=2.0, method="bleach", p=1.0
        ),
        x,
        seed,
    )
    out = 0.85 * covered + 0.15 * np.float32(0.95)
    out *= np.array([0.97, 1.0, 1.05], dtype=np.float32)
    flakes = np.zeros((h, w), dtype=np.float32)
    n = int(h * w * rng.uniform(0.002, 0.004))
    flakes[rng.integers(0, h, n), rng.integers(0, w, n)] = 1.0
    flakes = np.minimum(cv2.GaussianBlur(flakes, (3, 3), 0.8) * 3.0, 1.0)
    return out + (1.0 - out) * flakes[..., None]


def _sunset(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Warm low sun: orange cast, a warm sky gradient from the top and a glow near the horizon."""
    h, w = x.shape[:2]
    warm = x * np.array([1.08, 0.86, 0.62], dtype=np.float32) * rng.uniform(0.8, 0.95)
    sky = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None, None] ** 2
    sky_colour = np.array([1.0, 0.55, 0.25], dtype=np.float32)
    out = warm + sky * sky_colour * rng.uniform(0.25, 0.4)
    # The sun: a broad radial glow centred at a random column on the upper part of the frame.
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.25, 0.45) * h
    yy, xx = np.ogrid[:h, :w]
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (0.35 * max(h, w)) ** 2
    glow = np.exp(-r2.astype(np.float32))
    return out + glow[..., None] * np.array([0.45, 0.3, 0.12], dtype=np.float32)


def _game(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rendered look: flat colours (smoothing + posterisation), saturated, dark outlines."""
    u8 = (x * 255.0 + 0.5).astype(np.uint8)
    smooth = cv2.medianBlur(u8, 5).astype(np.float32) / 255.0
    # Posterise the brightness only: quantising each channel alone would put coloured steps
    # into grey areas (roads, sky), which the saturation boost then amplifies.
    levels = int(rng.integers(5, 9))
    grey = _luma(smooth)[..., None]
    banded = np.floor(grey * levels + 0.5) / levels
    saturated = banded + (smooth - grey) * rng.uniform(1.3, 1.7)
    low = int(rng.integers(60, 100))
    edges = cv2.Canny(cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY), low, 2 * low)
    outline = 1.0 - 0.7 * (edges.astype(np.float32) / 255.0)
    return saturated * outline[..., None]


class PhotometricEditor:
    """Seeded weather/lighting effects; the prompt is ignored (the effect is configured)."""

    def __init__(self, cfg: PhotometricConfig, batch_size: int = 64) -> None:
        if cfg.effect is None:
            raise ConfigError(
                "generate.editor.effect: the photometric editor needs an effect "
                "(night, fog, rain, snow, sunset, game) or a generate.preset"
            )
        self.cfg = cfg
        self.effect = cfg.effect
        self.strength = float(cfg.strength)
        # Images are independent; the batch size only sets how many rows one call carries.
        self.batch_size = batch_size

    def _apply(self, image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = image.astype(np.float32) / 255.0
        effect = self.effect
        if effect == "night":
            y = _night(x, rng)
        elif effect == "fog":
            y = _fog(x, rng)
        elif effect == "rain":
            y = _rain(x, rng, seed)
        elif effect == "snow":
            y = _snow(x, rng, seed)
        elif effect == "sunset":
            y = _sunset(x, rng)
        elif effect == "game":
            y = _game(x, rng)
        else:  # unreachable through the validated config
            raise ConfigError(f"generate.editor.effect: unknown effect {effect!r}")
        if self.strength < 1.0:
            y = x + (y - x) * np.float32(self.strength)
        return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]:
        check_inputs(images, seeds)
        return [self._apply(image, int(seed)) for image, seed in zip(images, seeds, strict=True)]
