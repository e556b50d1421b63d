"""The `generate` section: which editor turns source images into target-style images, and how.

SDGPA (METHODS.md section 1) edits 512x512 patches of 1024x512 source images with
InstructPix2Pix. A `preset` names one of its target descriptions and fills the prompt, the
two guidance scales (InstructPix2Pix) or the effect (photometric editor) unless the config
gives them explicitly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from shiftlab.config.base import Section
from shiftlab.config.data import DatasetSpec
from shiftlab.config.presets import PRESETS, EffectName, PresetName
from shiftlab.utils.atomic import FAST_PNG_LEVEL

__all__ = [
    "EffectName",
    "GenerateConfig",
    "InstructPix2PixConfig",
    "PhotometricConfig",
    "PresetName",
]
SchedulerName = Literal["euler_ancestral", "ddim", "dpmsolver++", "euler"]
GenerateMode = Literal["intermediate", "target"]
_BOTH_MODES: tuple[GenerateMode, ...] = ("intermediate", "target")

# diffusers' own defaults of StableDiffusionInstructPix2PixPipeline.__call__, used when neither
# a preset nor the config gives a scale.
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_IMAGE_GUIDANCE_SCALE = 1.5


class InstructPix2PixConfig(Section):
    """InstructPix2Pix through diffusers, one pipeline call per batch of patches."""

    kind: Literal["instruct-pix2pix"] = "instruct-pix2pix"
    # A local pipeline directory, or a hub id (only where the machine has internet).
    model: str
    steps: int = Field(50, ge=1, le=1000)
    # None = the preset's value, else diffusers' default (7.5 / 1.5).
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    image_guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    # None keeps the scheduler saved with the pipeline.
    scheduler: SchedulerName | None = None
    # auto = fp16 on CUDA, fp32 on CPU.
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1, le=1024)
    compile: bool = False
    attention: Literal["sdpa", "default"] = "sdpa"

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must name a pipeline directory or a hub id")
        return value


class PhotometricConfig(Section):
    """Cheap seeded CPU weather/lighting effects (the demo editor; no model weights)."""

    kind: Literal["photometric"] = "photometric"
    # None = the preset's effect; required when there is no preset.
    effect: EffectName | None = None
    strength: float = Field(1.0, ge=0.0, le=1.0)


EditorConfig = Annotated[InstructPix2PixConfig | PhotometricConfig, Field(discriminator="kind")]


class GenerateConfig(Section):
    """Synthetic target-style data: editor, prompt, patching and the Ray pipeline's resources."""

    preset: PresetName | None = None
    prompt: str | None = None
    editor: EditorConfig
    modes: list[GenerateMode] = Field(default_factory=lambda: list(_BOTH_MODES))
    # (H, W) every source image is resized to before editing; None keeps each image's size.
    resize: tuple[int, int] | None = (512, 1024)
    tile: int = Field(512, ge=8)
    overlap: int = Field(0, ge=0)
    seed: int = 42
    # None = the experiment's data.source.
    source: DatasetSpec | None = None
    output_root: str | None = None
    # None = one actor per GPU, or a count derived from the CPUs where there is no GPU.
    num_actors: int | None = Field(None, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0.0)
    gpus_per_actor: float = Field(1.0, ge=0.0)
    limit: int | None = Field(None, ge=1)
    # zlib level (0-9) of the PNGs written: lossless at every level, so it changes file sizes
    # and encoding time, never a pixel (not part of the cache key). 1 encodes 2.5-5x faster
    # than 6 for files up to 25 % larger (`shiftlab.utils.atomic.encode_png_fast`).
    png_compress_level: int = Field(FAST_PNG_LEVEL, ge=0, le=9)
    # Each editor actor reads the next work units and writes the last ones in other threads
    # while it edits (so a GPU does not wait on decoding and PNG encoding); the same bytes
    # either way. false: one unit at a time, start to finish.
    overlap_io: bool = True

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill prompt, scales and effect from the preset where the config leaves them unset."""
        if not isinstance(data, dict):
            return data
        name = data.get("preset")
        if name is None or name not in PRESETS:
            return data  # no preset, or an unknown one that the Literal check will report
        preset = PRESETS[name]
        data = dict(data)
        if data.get("prompt") is None:
            data["prompt"] = preset.prompt
        editor = data.get("editor")
        if isinstance(editor, BaseModel):
            editor = editor.model_dump()
        if isinstance(editor, dict):
            editor = dict(editor)
            kind = editor.get("kind", "instruct-pix2pix")
            if kind == "instruct-pix2pix":
                if editor.get("guidance_scale") is None:
                    editor["guidance_scale"] = preset.guidance_scale
                if editor.get("image_guidance_scale") is None:
                    editor["image_guidance_scale"] = preset.image_guidance_scale
            elif kind == "photometric" and editor.get("effect") is None:
                editor["effect"] = preset.effect
            data["editor"] = editor
        return data

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if not self.modes:
            raise ValueError("modes must list at least one of 'intermediate', 'target'")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes lists a mode twice: {self.modes}")
        if self.tile % 8:
            raise ValueError(
                f"tile must be a multiple of 8 (the VAE's downsampling), got {self.tile}"
            )
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile ({self.tile})")
        if self.resize is not None:
            h, w = self.resize
            if h < 8 or w < 8 or h % 8 or w % 8:
                raise ValueError(
                    f"resize (H, W) must be positive multiples of 8, got {self.resize}"
                )
        if isinstance(self.editor, InstructPix2PixConfig) and not self.prompt:
            raise ValueError(
                "prompt is required for the instruct-pix2pix editor when no preset is set"
            )
        if isinstance(self.editor, PhotometricConfig) and self.editor.effect is None:
            raise ValueError(
                "editor.effect is required for the photometric editor when no preset is set"
            )
        return self

    def resolved_editor(self) -> InstructPix2PixConfig | PhotometricConfig:
        """The editor config with every scale filled (diffusers' defaults where still unset)."""
        editor = self.editor
        if isinstance(editor, InstructPix2PixConfig):
            update: dict[str, float] = {}
            if editor.guidance_scale is None:
                update["guidance_scale"] = DEFAULT_GUIDANCE_SCALE
            if editor.image_guidance_scale is None:
                update["image_guidance_scale"] = DEFAULT_IMAGE_GUIDANCE_SCALE
            if update:
                return editor.model_copy(update=update)
        return editor
