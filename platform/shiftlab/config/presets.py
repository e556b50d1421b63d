"""SDGPA target-description presets, as data: the prompt and guidance scales of each setting.

Values are the exact ones of the SDGPA generation scripts (METHODS.md section 1). The
photometric effect is shiftlab's cheap CPU stand-in for the same target condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shiftlab.utils.errors import ConfigError

PresetName = Literal["night", "snow", "rain", "fog", "game"]
EffectName = Literal["night", "fog", "rain", "snow", "sunset", "game"]

__all__ = ["PRESETS", "EffectName", "Preset", "PresetName", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One target setting: instruction prompt, InstructPix2Pix scales, photometric effect."""

    name: str
    prompt: str
    guidance_scale: float
    image_guidance_scale: float
    effect: EffectName


PRESETS: dict[str, Preset] = {
    "night": Preset("night", "Make it evening", 20.0, 1.7, "night"),
    "snow": Preset("snow", "What would it look like if it were snowing?", 15.0, 1.1, "snow"),
    "rain": Preset("rain", "make it rain", 20.0, 2.0, "rain"),
    "fog": Preset("fog", "Make it foggy", 7.0, 2.0, "fog"),
    "game": Preset("game", "have it be a 3d game", 12.0, 2.0, "game"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown generate preset {name!r}; known presets: {sorted(PRESETS)}"
        ) from None
